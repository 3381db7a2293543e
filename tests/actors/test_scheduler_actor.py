"""The scheduler actor over a real runtime: pull/commit/complete/release/expiry, delivery by
collect (long poll, ack) and by reply_to, stale tokens, journal replay after a restart.

Time is driven by a fake clock for the lease table (expiry is explicit), so no test waits
for a lease to expire on the wall clock.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from spotlight.actors.scheduling.scheduler import SchedulerActor, SchedulingConfig
from spotlight.actors.scheduling.work import GroupResult, SampleRequest, Snapshot
from spotlight.runtime import Actor, Runtime, endpoint
from tests.runtime.helpers import FAST, arun

TIMING = SchedulingConfig(lease_ttl_s=10.0, heartbeat_s=1.0, expiry_period_s=0.05)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def reqs(n: int, group: str, steps: int = 4) -> list[SampleRequest]:
    return [
        SampleRequest(
            request_id=f"{group}-{i}",
            prompt="two red circles",
            seed=i,
            num_steps=steps,
            kind="rollout",
            group_id=group,
        )
        for i in range(n)
    ]


class Sink(Actor):
    def __init__(self) -> None:
        self.groups: list[GroupResult] = []
        self.arrived = asyncio.Event()

    @endpoint
    async def deliver_group(self, group: GroupResult) -> None:
        self.groups.append(group)
        self.arrived.set()


def test_config_validates_and_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match=r"heartbeat_s=6.*lease_ttl_s/2"):
        SchedulingConfig(lease_ttl_s=10.0, heartbeat_s=6.0)
    with pytest.raises(ValueError, match="commit_interval"):
        SchedulingConfig(commit_interval=0)
    with pytest.raises(ValueError, match="lease_ttl_s"):
        SchedulingConfig(lease_ttl_s=float("nan"))


def test_pull_commit_complete_collect_and_stale_tokens() -> None:
    clock = FakeClock()

    async def main() -> None:
        async with Runtime(FAST) as rt:
            s = await rt.spawn(SchedulerActor, config=TIMING, clock=clock, name="scheduler")
            assert await s.submit.ask(reqs(2, "g")) == 2
            (lease,) = await s.pull.ask("w1", 1)
            assert lease.request.request_id == "g-0" and lease.resume_from is None
            snap = Snapshot(step=2, payload={"x": [1, 2]})
            assert await s.commit.ask("g-0", lease.token, snap) is True
            # the lease expires (silent loss); it is re-leased from the snapshot
            clock.now = 11.0
            (again, other) = await s.pull.ask("w2", 2)
            assert again.request.request_id == "g-0" and again.resume_from == snap
            assert again.token > lease.token
            # the old worker's late result is refused and counted
            assert await s.complete.ask("g-0", lease.token, {"r": 0}) is False
            assert await s.collect.ask([], wait_s=0.0) == []
            assert await s.complete.ask("g-0", again.token, {"r": 0}) is True
            assert await s.complete.ask("g-1", other.token, {"r": 1}) is True
            (group,) = await s.collect.ask([], wait_s=5.0)
            assert group.group_id == "g" and group.results == [{"r": 0}, {"r": 1}]
            # unacknowledged: sent again; acknowledged: gone
            assert [g.group_id for g in await s.collect.ask([], wait_s=0.0)] == ["g"]
            assert await s.collect.ask(["g"], wait_s=0.0) == []
            st = await s.statistics.ask()
            assert st.leases.re_leases == 1 and st.leases.stale_results == 1
            assert st.leases.steps_recomputed == 0 and st.leases.groups_delivered == 1
            assert st.per_worker_steps_per_s["w2"] > 0 and st.queue_depth == 0

    arun(main())


def test_collect_long_poll_wakes_on_completion_and_release_requeues() -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt:
            s = await rt.spawn(SchedulerActor, config=TIMING, name="scheduler")
            await s.submit.ask(reqs(1, "h", steps=4))
            await s.pull.ask("w1", 1)
            waiter = asyncio.ensure_future(s.collect.ask([], wait_s=20.0))
            # a graceful hand-back: the snapshot is committed, the request queued again
            assert await s.release.ask("w1", {"h-0": Snapshot(step=3, payload="s3")}) == 1
            (resumed,) = await s.pull.ask("w2", 1)
            assert resumed.resume_from == Snapshot(step=3, payload="s3")
            assert not waiter.done()
            assert await s.complete.ask("h-0", resumed.token, "done") is True
            groups = await asyncio.wait_for(waiter, 10.0)
            assert [g.results for g in groups] == [["done"]]

    arun(main())


def test_reply_to_push_acknowledges_delivery() -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt:
            s = await rt.spawn(SchedulerActor, config=TIMING, name="scheduler")
            sink_ref = await rt.spawn(Sink, name="sink")
            sink = rt.cells["sink"].instance
            assert isinstance(sink, Sink)
            await s.submit.ask(reqs(1, "p"), reply_to=sink_ref)
            (lease,) = await s.pull.ask("w1", 1)
            await s.complete.ask("p-0", lease.token, 42)
            await asyncio.wait_for(sink.arrived.wait(), 10.0)
            assert [g.results for g in sink.groups] == [[42]]
            st = await s.statistics.ask()
            assert st.leases.groups_delivered == 1 and st.results_unacknowledged == 0

    arun(main())


def test_expiry_timer_requeues_without_a_pull(tmp_path: Path) -> None:
    clock = FakeClock()

    async def main() -> None:
        async with Runtime(FAST) as rt:
            s = await rt.spawn(SchedulerActor, config=TIMING, clock=clock, name="scheduler")
            await s.submit.ask(reqs(1, "e"))
            await s.pull.ask("w1", 1)
            clock.now = 100.0
            deadline = asyncio.get_running_loop().time() + 10.0
            while (await s.statistics.ask()).leases.expired == 0:
                assert asyncio.get_running_loop().time() < deadline, "expiry timer never ran"
                await asyncio.sleep(0.02)  # polling a condition under a deadline
            assert (await s.statistics.ask()).queue_depth == 1

    arun(main())


def test_restart_replays_the_journal_and_fences_old_tokens(tmp_path: Path) -> None:
    journal = str(tmp_path / "sched.journal")

    async def first() -> tuple[int, Any]:
        async with Runtime(FAST) as rt:
            s = await rt.spawn(SchedulerActor, config=TIMING, journal_path=journal, name="s")
            await s.submit.ask(reqs(2, "j", steps=4))
            a, b = await s.pull.ask("w1", 2)
            await s.commit.ask("j-0", a.token, Snapshot(step=2, payload={"k": 2}))
            await s.complete.ask("j-1", b.token, "one")
            return a.token, a

    async def second(old_token: int) -> None:
        async with Runtime(FAST) as rt:
            s = await rt.spawn(SchedulerActor, config=TIMING, journal_path=journal, name="s")
            # the old lease is gone: its token is stale; the request resumes from step 2
            assert await s.commit.ask("j-0", old_token, Snapshot(step=3, payload=3)) is False
            (lease,) = await s.pull.ask("w2", 1)
            assert lease.request.request_id == "j-0"
            assert lease.resume_from == Snapshot(step=2, payload={"k": 2})
            assert await s.complete.ask("j-0", lease.token, "zero") is True
            (group,) = await s.collect.ask([], wait_s=5.0)
            assert group.results == ["zero", "one"]

    token, _ = arun(first())
    arun(second(token))
