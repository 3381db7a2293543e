"""Rollout workers against an in-process scheduler: results bit-identical to an
uninterrupted run, commits every ``commit_interval`` steps, a worker lost mid-trajectory is
resumed by another from its last commit, a bad request completes once with an error."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from spotlight.actors.rollout.worker import RolloutSettings, RolloutWorker, WorkerStats
from spotlight.actors.scheduling.scheduler import SchedulerActor, SchedulingConfig
from spotlight.actors.scheduling.work import SampleRequest
from spotlight.runtime import ActorRef, Runtime
from tests.faults.harness import read_step_logs, reference_trajectories, same_trajectory
from tests.runtime.helpers import FAST, arun

TIMING = SchedulingConfig(
    lease_ttl_s=10.0, heartbeat_s=0.2, expiry_period_s=0.05, commit_interval=2, idle_pull_s=0.02
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def reqs(n: int, steps: int, prompt: str = "two red circles") -> list[SampleRequest]:
    return [
        SampleRequest(
            request_id=f"r{i}",
            prompt=prompt,
            seed=50 + i,
            num_steps=steps,
            kind="rollout",
            group_id=f"g{i}",
        )
        for i in range(n)
    ]


async def collect_all(s: ActorRef, n: int) -> dict[str, dict]:
    got: dict[str, dict] = {}
    ack: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60.0
    while len(got) < n:
        assert loop.time() < deadline, f"only {sorted(got)} completed"
        groups = await s.collect.ask(ack, wait_s=1.0)
        ack = [g.group_id for g in groups]
        for g in groups:
            for r, res in zip(g.requests, g.results, strict=True):
                got[r.request_id] = res
    return got


def test_worker_completes_bit_identical_and_commits(tmp_path: Path) -> None:
    from spotlight.models.dit import build_policy

    policy = build_policy("tiny", seed=0)
    requests = reqs(3, steps=5)
    log = tmp_path / "steps-w0.log"

    async def main() -> tuple[dict[str, dict], WorkerStats]:
        async with Runtime(FAST) as rt:
            s = await rt.spawn(SchedulerActor, config=TIMING, name="scheduler")
            settings = RolloutSettings(step_log=str(log))
            w = await rt.spawn(
                RolloutWorker,
                scheduler=s,
                worker_id="w0",
                model=policy,
                timing=TIMING,
                settings=settings,
            )
            await s.submit.ask(requests)
            got = await collect_all(s, len(requests))
            return got, await w.statistics.ask()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got, stats = arun(main())
    finally:
        torch.set_num_threads(threads)
    refs = reference_trajectories(requests)
    for rid, res in got.items():
        assert same_trajectory(res, refs[rid])
    assert stats.completions == 3 and stats.steps_run == 15
    assert stats.commits == 3 * 2  # at steps 2 and 4 of 5; step 5 is the result
    starts = [x for x in read_step_logs(tmp_path) if x.kind == "S"]
    assert len(starts) == 15  # nothing ran twice


def test_lost_worker_is_resumed_from_its_last_commit(tmp_path: Path) -> None:
    from spotlight.models.dit import build_policy

    policy = build_policy("tiny", seed=0)
    requests = reqs(1, steps=6)
    clock = FakeClock()

    async def main() -> dict[str, dict]:
        async with Runtime(FAST) as rt:
            s = await rt.spawn(SchedulerActor, config=TIMING, clock=clock, name="scheduler")
            await s.submit.ask(requests)
            slow = RolloutSettings(min_step_s=0.05, step_log=str(tmp_path / "steps-a.log"))
            await rt.spawn(
                RolloutWorker,
                scheduler=s,
                worker_id="a",
                model=policy,
                timing=TIMING,
                settings=slow,
                name="a",
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30.0
            while (await s.statistics.ask()).leases.commits < 1:  # a's first commit (step 2)
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
            await rt.stop_actor("a", "simulated kill -9: no release")
            clock.now = 1000.0  # a's lease expires
            await rt.spawn(
                RolloutWorker,
                scheduler=s,
                worker_id="b",
                model=policy,
                timing=TIMING,
                settings=RolloutSettings(step_log=str(tmp_path / "steps-b.log")),
                name="b",
            )
            got = await collect_all(s, 1)
            st = await s.statistics.ask()
            assert st.leases.re_leases == 1 and st.leases.per_worker_completions == {"b": 1}
            return got

    torch.set_num_threads(1)
    got = arun(main())
    lines = read_step_logs(tmp_path)
    b_steps = [x.step for x in lines if x.worker == "b" and x.kind == "S"]
    a_steps = [x.step for x in lines if x.worker == "a" and x.kind == "S"]
    assert b_steps and min(b_steps) >= 2 and max(b_steps) == 5
    assert max(a_steps) + 1 - min(b_steps) <= TIMING.commit_interval
    assert same_trajectory(got["r0"], reference_trajectories(requests)["r0"])


def test_bad_prompt_completes_once_with_an_error() -> None:
    from spotlight.models.dit import build_policy

    policy = build_policy("tiny", seed=0)

    async def main() -> dict[str, dict]:
        async with Runtime(FAST) as rt:
            s = await rt.spawn(SchedulerActor, config=TIMING, name="scheduler")
            await rt.spawn(RolloutWorker, scheduler=s, worker_id="w", model=policy, timing=TIMING)
            await s.submit.ask(reqs(1, steps=3, prompt="seven purple dragons"))
            got = await collect_all(s, 1)
            assert (await s.statistics.ask()).leases.completed == 1
            return got

    got = arun(main())
    assert "PromptError" in got["r0"]["error"] or "vocabulary" in got["r0"]["error"]
