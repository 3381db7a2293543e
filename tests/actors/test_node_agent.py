"""The spot node's agent on a notice: tells the coordinator, drains the explorer and the
rollout worker side by side, and reports both in one DrainReport."""

from __future__ import annotations

import asyncio
import time

import pytest

from spotlight.actors.scheduling.work import DrainReport
from spotlight.nodes.spot import NodeAgent, merge_drain_reports
from spotlight.runtime import Actor, ActorRef, Runtime, endpoint
from tests.runtime.helpers import FAST, arun


def _report(worker: str, released: int, abandoned: int, snapshots: dict[str, int]) -> DrainReport:
    return DrainReport(
        worker_id=worker,
        released=released,
        snapshots=snapshots,
        finished_inflight=not abandoned,
        abandoned_steps=abandoned,
        seconds=0.1,
    )


class FakeCoordinator(Actor):
    def __init__(self) -> None:
        self.notices: list[str] = []

    @endpoint
    async def node_notice(self, node_id: str, deadline: float) -> None:
        self.notices.append(node_id)

    @endpoint
    async def seen(self) -> list[str]:
        return self.notices


class FakeWorker(Actor):
    def __init__(self, report: DrainReport | None, delay_s: float = 0.0) -> None:
        self.report = report
        self.delay_s = delay_s

    @endpoint
    async def drain(self, deadline: float) -> DrainReport:
        await asyncio.sleep(self.delay_s)  # stands for finishing a step
        if self.report is None:
            raise ValueError("drain broke")
        return self.report


async def _agent(
    rt: Runtime,
    node_id: str,
    explorer: DrainReport | None,
    rollout: DrainReport | None,
    *,
    delay_s: float = 0.0,
) -> tuple[ActorRef, ActorRef]:
    """A NodeAgent over fake workers that answer ``drain`` with these reports (None: the
    drain raises), and its fake coordinator."""
    coord = await rt.spawn(FakeCoordinator, name="coordinator")
    agent = await rt.spawn(
        NodeAgent,
        name="node",
        node_id=node_id,
        explorer=await rt.spawn(FakeWorker, explorer, delay_s, name="explorer"),
        rollout=await rt.spawn(FakeWorker, rollout, delay_s, name="rollout"),
        coordinator=coord,
        call_timeout_s=5.0,
    )
    return agent, coord


def test_notice_drains_both_workers_concurrently_into_one_report() -> None:
    explorer_report = _report("n1", released=3, abandoned=0, snapshots={})
    rollout_report = _report("n1/rollout", released=2, abandoned=4, snapshots={"r3.1": 2})

    async def body() -> tuple[DrainReport, float, list[str]]:
        async with Runtime(FAST) as rt:
            agent, coord = await _agent(rt, "n1", explorer_report, rollout_report, delay_s=0.5)
            t0 = time.monotonic()
            report = await agent.drain.ask(time.time() + 10.0)
            took = time.monotonic() - t0
            return report, took, await coord.seen.ask()

    report, took, notices = arun(body())
    assert notices == ["n1"]
    assert took < 0.9, f"the two drains ran one after the other ({took:.2f} s)"
    assert report.worker_id == "n1" and report.released == 5
    assert report.snapshots == {"r3.1": 2} and report.abandoned_steps == 4
    assert not report.finished_inflight


def test_merged_report_says_a_failed_release_and_a_lone_report_is_kept() -> None:
    a = _report("n", released=-1, abandoned=0, snapshots={})
    b = _report("n/rollout", released=2, abandoned=0, snapshots={"x": 1})
    assert merge_drain_reports("n", [a, b]).released == -1  # lease expiry takes over
    assert merge_drain_reports("n", [b]) is b


def test_a_failed_drain_is_logged_and_the_other_workers_report_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The node must still leave before its deadline: one worker's broken drain (its leases
    then expire and resume elsewhere) does not cost the other's report."""

    async def body() -> DrainReport:
        async with Runtime(FAST) as rt:
            agent, _coord = await _agent(rt, "n", _report("n", 1, 0, {}), None)
            return await agent.drain.ask(time.time() + 10.0)

    report = arun(body())
    assert report.worker_id == "n" and report.released == 1
    assert "drain of rollout failed" in caplog.text and "drain broke" in caplog.text
