"""Explorer processes + scheduler + planner: the trainer gets its groups by its deadline.

Two explorer processes (``python -m spotlight.nodes.explorer``, tiny model, random weights)
pull explore requests from a scheduler in this process; the planner plans the next batch;
the test plays the trainer: pushes weights, waits out its (simulated) iteration, then asks
for the groups at the deadline. Children are killed by PID in the fixture's teardown.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spotlight.actors.exploration.bandit import BanditConfig
from spotlight.actors.exploration.planner import PlannerActor, PlannerConfig, seeds_for_iteration
from spotlight.actors.scheduling.scheduler import SchedulerActor, SchedulingConfig
from spotlight.models.dit import build_policy
from spotlight.runtime import Runtime, RuntimeConfig
from tests.runtime.helpers import arun

REPO = Path(__file__).resolve().parents[2]
CONFIG = RuntimeConfig(heartbeat_s=1.0, missed_heartbeats=10, ask_timeout_s=30.0)
PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a red circle"]
G = 4

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _spawn_explorer(address: str, worker_id: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "spotlight.nodes.explorer", "--worker-id", worker_id]
    argv += ["--scheduler", f"{address}/xs", "--planner", f"{address}/planner"]
    return subprocess.Popen([*argv, "--pull-batch", "8"], cwd=REPO)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_groups_arrive_by_the_deadline_with_explorer_processes(
    children: list[subprocess.Popen[bytes]],
) -> None:
    state = build_policy("tiny", seed=3).state_dict()

    async def body() -> None:
        async with Runtime(CONFIG) as rt:
            sched = await rt.spawn(
                SchedulerActor, name="xs", config=SchedulingConfig(lease_ttl_s=60.0)
            )
            config = PlannerConfig(
                bandit=BanditConfig(group_size=G, mc_draws=32, seconds_per_seed=0.2),
                explore_steps=2,
            )
            planner = await rt.spawn(PlannerActor, name="planner", scheduler=sched, config=config)
            for i in range(2):
                children.append(_spawn_explorer(rt.address, f"e{i}"))
            deadline = time.monotonic() + 180
            explorers: dict[str, object] = {}
            while len(explorers) < 2:  # the children announce themselves when started
                assert time.monotonic() < deadline, "explorer processes never registered"
                assert all(p.poll() is None for p in children), "an explorer process died"
                explorers = await planner.explorers.ask()
                await asyncio.sleep(0.2)
            for ref in explorers.values():
                await ref.load_weights.tell(1, state)  # type: ignore[attr-defined]
            # The trainer's iteration takes 10 s; exploration for the next batch runs in it.
            iteration_s = 10.0
            await planner.record_iteration.ask(iteration_s)
            started = time.time()
            budget = await planner.plan.ask("b1", PROMPTS, started)
            assert budget > 0
            await asyncio.sleep(iteration_s)  # the trainer busy with iteration k
            t0 = time.perf_counter()
            answer = await seeds_for_iteration(planner, "b1", PROMPTS, G, timeout=5.0)
            answered_s = time.perf_counter() - t0
            assert answered_s < 2.0, answered_s  # an ask round trip, never a wait for work
            assert [g.prompt for g in answer.groups] == PROMPTS
            assert all(len(set(g.seeds)) == G for g in answer.groups)
            assert answer.explored_seeds > 0, "the explorer processes explored nothing in 10 s"
            assert answer.fallback_seeds == sum(g.fallback_seeds for g in answer.groups)
            stats = await planner.statistics.ask()
            assert stats.batches_answered == 1 and stats.fallback_seeds == answer.fallback_seeds

    arun(body())
