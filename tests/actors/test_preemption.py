"""The preemption handler: a file notice drains the worker before the deadline; a step that
fits is finished and committed with the release; one that does not is given up; the
coordinator is told; ``on_exit`` fires once."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import torch

from spotlight.actors.rollout.worker import RolloutSettings, RolloutWorker
from spotlight.actors.scheduling.preemption import PreemptionHandler, PreemptionReport
from spotlight.actors.scheduling.scheduler import SchedulerActor, SchedulingConfig
from spotlight.actors.scheduling.work import SampleRequest
from spotlight.models.dit import build_policy
from spotlight.runtime import Actor, Runtime, endpoint
from spotlight.runtime.notice import FileNotice
from tests.faults.harness import read_step_logs
from tests.runtime.helpers import FAST, arun

TIMING = SchedulingConfig(
    lease_ttl_s=30.0,
    heartbeat_s=0.2,
    expiry_period_s=0.05,
    commit_interval=100,  # no commits: everything the drain keeps comes from the release
    idle_pull_s=0.02,
    preemption_margin_s=0.05,
)


class Coordinator(Actor):
    def __init__(self) -> None:
        self.reports: list[PreemptionReport] = []
        self.told = asyncio.Event()

    @endpoint
    async def worker_preempted(self, report: PreemptionReport) -> None:
        self.reports.append(report)
        self.told.set()


def write_notice(path: Path, lead_s: float) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(lead_s))
    os.replace(tmp, path)


async def wait_for(pred: Callable[[], Awaitable[bool]], what: str, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not await pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)  # polling a condition under a deadline


def run_case(tmp_path: Path, *, lead_s: float, min_step_s: float) -> tuple[PreemptionReport, dict]:
    policy = build_policy("tiny", seed=0)
    notice = tmp_path / "notice"
    log = tmp_path / "steps-w.log"

    async def main() -> tuple[PreemptionReport, dict]:
        async with Runtime(FAST) as rt:
            s = await rt.spawn(SchedulerActor, config=TIMING, name="scheduler")
            coord_ref = await rt.spawn(Coordinator, name="coordinator")
            coord = rt.cells["coordinator"].instance
            assert isinstance(coord, Coordinator)
            exits: list[PreemptionReport] = []
            w = await rt.spawn(
                RolloutWorker,
                scheduler=s,
                worker_id="w",
                model=policy,
                timing=TIMING,
                settings=RolloutSettings(min_step_s=min_step_s, step_log=str(log)),
                name="w",
            )
            await rt.spawn(
                PreemptionHandler,
                worker=w,
                worker_id="w",
                sources=[FileNotice(notice, poll_interval_s=0.01)],
                coordinator=coord_ref,
                on_exit=exits.append,
            )
            await s.submit.ask(
                [
                    SampleRequest(
                        request_id="r",
                        prompt="a blue square",
                        seed=3,
                        num_steps=8,
                        kind="rollout",
                        group_id="g",
                    )
                ]
            )

            async def third_step_running() -> bool:
                lines = read_step_logs(tmp_path)
                return bool(lines) and lines[-1].kind == "S" and lines[-1].step == 2

            await wait_for(third_step_running, "step 2 to start")
            write_notice(notice, lead_s)
            await asyncio.wait_for(coord.told.wait(), 30.0)
            report = coord.reports[0]
            assert exits == [report]
            assert report.finished_at < report.deadline or lead_s == 0
            # the released request is queued again with the committed snapshot
            (lease,) = await s.pull.ask("other", 1)
            resumed = {} if lease.resume_from is None else {"step": lease.resume_from.step}
            return report, resumed

    torch.set_num_threads(1)
    return arun(main())


def test_notice_with_time_finishes_the_running_step(tmp_path: Path) -> None:
    report, resumed = run_case(tmp_path, lead_s=5.0, min_step_s=0.3)
    assert report.drain is not None
    assert report.drain.finished_inflight and report.drain.abandoned_steps == 0
    assert report.drain.released == 1 and report.drain.snapshots == {"r": 3}
    assert resumed == {"step": 3}  # nothing recomputed


def test_notice_too_short_gives_up_the_running_step(tmp_path: Path) -> None:
    report, resumed = run_case(tmp_path, lead_s=0.1, min_step_s=1.0)
    assert report.drain is not None
    assert not report.drain.finished_inflight and report.drain.abandoned_steps == 1
    assert report.drain.snapshots == {"r": 2}  # the last boundary
    assert resumed == {"step": 2}  # only the running step is recomputed
