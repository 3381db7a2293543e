"""Explorers in SP groups: the SP sampling backend against the thread one, and spot node
processes hosting an SP group (member SIGKILL -> re-form; notice -> members gone in time).

Every member and node process is checked and cleaned up by PID (tests/procs.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spotlight.actors.cluster.coordinator import Coordinator
from spotlight.actors.exploration.backends import ExploreSettings, ThreadBackend
from spotlight.actors.exploration.explorer import ExplorerStats
from spotlight.actors.exploration.sp_backend import GROUP_ACTOR, NodeSPConfig, SPBackend
from spotlight.actors.scheduling.scheduler import SchedulerActor, SchedulingConfig
from spotlight.actors.scheduling.work import SampleRequest
from spotlight.actors.spot.prices import Prices
from spotlight.actors.weights.policy_spec import PolicySpec
from spotlight.actors.weights.publish import WeightPublisher
from spotlight.actors.weights.share import remove_published_by
from spotlight.models.dit import build_policy
from spotlight.models.sampler import SamplerConfig
from spotlight.runtime import ActorRef, Runtime
from tests.actors.test_spot_node import GRACE_S, _ready, _start
from tests.micro import MICRO, PROMPTS, nudge_adapters, redness
from tests.procs import process_gone, wait_for
from tests.runtime.helpers import FAST, arun

pytestmark = pytest.mark.timeout(240)

REWARD_TOL = 2e-3
"""Rewards at degree 2 vs 1. The latents agree to ~1e-6 (Ulysses computes the same per-head
arithmetic; only reduction order differs, and the thread path batches in micro-batches);
images are then quantised to uint8, so a latent a hair from a rounding edge moves one channel
of one pixel by 1/255. The redness reward averages over 8x8 pixels with weight 0.5, so each
such flip moves it by at most 0.5/255/64 ~ 3e-5; 2e-3 allows ~60 flips out of 192 values
while any real divergence (wrong weights, shards, noise) moves it by > 1e-2."""

SAMPLER = SamplerConfig(num_steps=4, noise_level=0.7, sde_window=(0, 2))


def _lora_version(base: Path) -> tuple[PolicySpec, dict[str, Any]]:
    """A LoRA run's spec and a version whose adapters have moved (B starts at zero)."""
    from spotlight.models.lora import tunable_state
    from spotlight.models.lora_settings import LoraSettings

    spec = PolicySpec(config=MICRO, lora=LoraSettings(rank=2, alpha=4), base=str(base))
    trainer = spec.build(device="cpu")
    nudge_adapters(trainer, 0.3)
    return spec, tunable_state(trainer)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_rewards_at_sp_degree_2_equal_degree_1(
    tmp_path: Path, micro_base: Path, lora: bool
) -> None:
    """Same (prompt, seed, weights): the SP group's rewards equal the thread backend's. With
    LoRA every member loads the base from disk and a version is the adapters only."""
    if lora:
        spec, state = _lora_version(micro_base)
    else:
        spec = PolicySpec(config=MICRO)
        state = build_policy(MICRO, seed=5).state_dict()  # not the members' initial weights

    def policy() -> Any:
        return spec.build(device="cpu") if lora else build_policy(MICRO, seed=9)

    settings = ExploreSettings(trainer_sampler=SAMPLER, micro_batch=3)
    prompts = [p for p in PROMPTS for _ in range(2)]
    seeds = list(range(40, 40 + len(prompts)))

    async def body() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        async with Runtime(FAST) as rt:
            sp = await SPBackend.start(
                rt, NodeSPConfig(node="t", members=2, degree=2), spec, monitor=None
            )
            try:
                sp.factory(policy(), redness)
                await sp.load(1, state)
                got = await sp.rewards(prompts, seeds, num_steps=4, settings=settings)
                stats = await sp.statistics()
                assert stats is not None
            finally:
                await sp.stop()
            pids = sp.member_pids
            assert all(process_gone(p) for p in pids), pids
        thread = ThreadBackend(policy(), redness)
        await thread.load(1, state)
        want = await thread.rewards(prompts, seeds, num_steps=4, settings=settings)
        return got, want, stats

    got, want, stats = arun(body())
    assert stats["degree"] == 2 and stats["weights_version"] == 1
    assert stats["last_load"]["members"] == 2
    np.testing.assert_allclose(got, want, atol=REWARD_TOL, rtol=0)
    assert np.ptp(want) > 10 * REWARD_TOL  # the seeds differ: the check can fail


class _Cluster:
    """A coordinator + explore scheduler in this process, micro weights published."""

    def __init__(self, rt: Runtime, coord: ActorRef, sched: ActorRef, pub: WeightPublisher):
        self.rt, self.coord, self.sched, self.publisher = rt, coord, sched, pub
        self._n = 0

    async def explore(self, n: int, *, num_steps: int, within_s: float) -> list[Any]:
        """``n`` explore requests of one group; its results (AssertionError after
        ``within_s``)."""
        self._n += 1
        group = f"g{self._n}"
        requests = [
            SampleRequest(
                request_id=f"{group}/{i}", group_id=group, prompt=PROMPTS[i % 3],
                seed=1000 * self._n + i, num_steps=num_steps, deadline=None, kind="explore",
            )
            for i in range(n)
        ]  # fmt: skip
        await self.sched.submit.ask(requests)
        give_up = time.monotonic() + within_s
        while time.monotonic() < give_up:
            for g in await self.sched.collect.ask(wait_s=0.5, timeout=20.0):
                if g.group_id == group:
                    await self.sched.collect.ask(ack=[group], timeout=20.0)
                    return list(g.results)
        raise AssertionError(f"no results for {group} within {within_s} s")


async def _cluster(rt: Runtime) -> _Cluster:
    sched = await rt.spawn(SchedulerActor, name="explore_scheduler", config=SchedulingConfig())
    publisher = WeightPublisher(chunk_bytes=64 << 10)
    coord = await rt.spawn(
        Coordinator, name="coordinator", prices=Prices(), run_id="t", publisher=publisher,
        scheduler=sched, model=MICRO, sampler=SAMPLER,
    )  # fmt: skip
    publisher.publish(1, build_policy(MICRO, seed=5).state_dict())
    return _Cluster(rt, coord, sched, publisher)


@pytest.fixture
def procs() -> Iterator[list[int]]:
    """PIDs to SIGKILL at teardown if still running (nodes and their members)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)


async def _sp_node(
    c: _Cluster, tmp: Path, node_id: str, procs: list[int]
) -> tuple[subprocess.Popen[bytes], ActorRef, ActorRef, list[int]]:
    node, ready = _start(node_id, c.rt.address, tmp, "--gpus", "2", "--sp-degree", "2")
    procs.append(node.pid)
    await _ready(ready)
    address = ready.read_text()
    explorer, group = c.rt.ref(address, "explorer"), c.rt.ref(address, GROUP_ACTOR)
    st = await explorer.statistics.ask()  # decoding it needs ExplorerStats registered here
    assert isinstance(st, ExplorerStats)
    pids = list(st.sampling["member_pids"])
    procs.extend(pids)
    assert len(pids) == 2 and st.sampling["backend"] == "sp"
    return node, explorer, group, pids


async def _stepping(group: ActorRef) -> None:
    """Until the group is past the first step of a request (polling its record)."""
    give_up = time.monotonic() + 60
    while True:
        st = await group.statistics.ask()
        if st["request"] is not None and st["request"][1] >= 1:
            return
        assert time.monotonic() < give_up, f"the group never started a request: {st}"
        await asyncio.sleep(0.02)


def test_member_sigkill_reforms_at_degree_1_and_the_node_keeps_exploring(
    tmp_path: Path, procs: list[int]
) -> None:
    async def body() -> None:
        async with Runtime(FAST) as rt:
            c = await _cluster(rt)
            node, _explorer, group, pids = await _sp_node(c, tmp_path, "sp1", procs)
            first = await c.explore(8, num_steps=4, within_s=150)
            assert {r.worker_id for r in first} == {"sp1"} and {r.version for r in first} == {1}
            st = await group.statistics.ask()
            assert st["degree"] == 2, st

            # Keep the group busy with long requests, kill one member during a step.
            busy = asyncio.ensure_future(c.explore(16, num_steps=12, within_s=150))
            await _stepping(group)
            t_kill = time.time()
            os.kill(pids[1], signal.SIGKILL)
            results = await busy
            assert len(results) == 16 and all(0 <= r.reward <= 1 for r in results)

            st = await group.statistics.ask()
            assert st["degree"] == 1 and st["lost"] >= 1 and st["reforms"] >= 2, st
            events = await group.events.ask(0.0)
            reform = [e for e in events if e[1] == "reform_done" and e[0] > t_kill]
            assert reform and reform[0][2]["degree"] == 1, events[-10:]
            # Every request's steps were done exactly once each (an interrupted one resumed
            # from its last boundary, nothing redone from the start).
            steps: dict[str, list[int]] = {}
            for _t, kind, d in events:
                if kind == "step_done":
                    steps.setdefault(d["request"], []).append(d["step"])
            for rid, done in steps.items():
                assert done == list(range(1, len(done) + 1)), (rid, done)
            # After the re-form the node still explores.
            again = await c.explore(4, num_steps=4, within_s=120)
            assert {r.worker_id for r in again} == {"sp1"}

            # The node SIGKILLed (a silent loss): its last member dies with it.
            node.kill()
            await asyncio.to_thread(node.wait, 30)
            remove_published_by(node.pid)  # a SIGKILLed node cannot remove its snapshot
            await wait_for(lambda: all(process_gone(p) for p in pids), "members gone", 10.0)
            await c.publisher.close()

    arun(body())


def test_notice_drains_the_sp_node_and_every_member_exits_before_the_deadline(
    tmp_path: Path, procs: list[int]
) -> None:
    async def body() -> None:
        async with Runtime(FAST) as rt:
            c = await _cluster(rt)
            node, _explorer, group, pids = await _sp_node(c, tmp_path, "sp2", procs)
            await c.explore(4, num_steps=4, within_s=150)
            busy = asyncio.ensure_future(c.explore(16, num_steps=12, within_s=60))
            await _stepping(group)  # the notice lands on a request in flight
            t0 = time.monotonic()
            node.send_signal(signal.SIGTERM)  # a notice with GRACE_S of lead
            rc = await asyncio.to_thread(node.wait, GRACE_S + 30)
            took = time.monotonic() - t0
            log = (tmp_path / "sp2.log").read_text()
            assert rc == 0, log[-3000:]
            assert took < GRACE_S, f"exit took {took:.2f}s, grace {GRACE_S}s"
            assert all(process_gone(p) for p in pids), (pids, log[-3000:])
            assert "drained" in log and "released=" in log
            st = await c.coord.statistics.ask()
            assert st.nodes["sp2"].status == "left" and st.preemptions_notice == 1
            # The in-flight batch's leases were handed back: another node would take them.
            sched = await c.sched.statistics.ask()
            assert sched.active_leases == 0, sched
            busy.cancel()
            await c.publisher.close()

    arun(body())
