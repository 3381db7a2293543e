"""Explorer: weight versions (newest wins, stale by one, jumps), and real sampling of requests."""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time

import numpy as np
import pytest
import torch

from spotlight.actors.exploration.backends import ExploreSettings, sampler_for_steps
from spotlight.actors.exploration.explorer import ExplorerActor, ExploreResult, WeightSlot
from spotlight.actors.scheduling.scheduler import SchedulerActor, SchedulingConfig
from spotlight.actors.scheduling.work import SampleRequest
from spotlight.actors.weights.publish import WeightPublisher
from spotlight.models.dit import build_policy
from spotlight.models.sampler import SamplerConfig
from spotlight.runtime import ActorRef, Runtime
from tests.runtime.helpers import FAST, arun

pytestmark = pytest.mark.timeout(90)


def test_stale_by_one_is_the_normal_cycle() -> None:
    slot = WeightSlot()
    assert slot.take() is None and slot.newest is None
    for version in range(4):  # trainer publishes θ_k; the explorer moves to it between batches
        assert slot.offer(version, {"v": version})
        taken = slot.take()
        assert taken is not None and taken[0] == version and slot.current == version
    assert (slot.received, slot.applied, slot.superseded, slot.ignored) == (4, 4, 0, 0)


def test_version_jump_keeps_only_the_newest() -> None:
    slot = WeightSlot()
    slot.offer(1, {"v": 1})
    slot.take()
    for version in (2, 3, 6):  # three versions while the explorer was busy sampling
        assert slot.offer(version, {"v": version})
    assert slot.newest == 6
    taken = slot.take()
    assert taken == (6, {"v": 6}) and slot.current == 6
    assert slot.superseded == 2 and slot.take() is None


def test_older_or_repeated_versions_are_ignored() -> None:
    slot = WeightSlot()
    slot.offer(5, {})
    assert not slot.offer(5, {}) and not slot.offer(4, {})  # late delivery of an old version
    slot.take()
    assert not slot.offer(3, {})
    assert slot.ignored == 3 and slot.current == 5
    with pytest.raises(ValueError, match="version"):
        slot.offer(-1, {})


def test_settings_validate() -> None:
    with pytest.raises(ValueError, match="mode"):
        ExploreSettings(mode="euler")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pull_batch"):
        ExploreSettings(pull_batch=0)


def _requests(tag: str, n: int, *, deadline: float | None) -> list[SampleRequest]:
    return [
        SampleRequest(
            request_id=f"x/{tag}/{i}",
            group_id=f"x/{tag}",
            prompt="a red circle" if i % 2 else "two blue squares",
            seed=100 + i,
            num_steps=2,
            deadline=deadline,
            kind="explore",
        )
        for i in range(n)
    ]


async def _collect(sched: ActorRef, group_id: str) -> list[ExploreResult]:
    for _ in range(120):
        groups = await sched.collect.ask(wait_s=1.0, timeout=10.0)
        for g in groups:
            if g.group_id == group_id:
                await sched.collect.ask(ack=[g.group_id], wait_s=0.0, timeout=10.0)
                return list(g.results)
    raise AssertionError(f"group {group_id} never completed")


def test_explorer_samples_with_the_newest_version_and_skips_late_requests() -> None:
    torch.manual_seed(0)
    states = {v: build_policy("tiny", seed=v).state_dict() for v in (1, 2, 3)}

    async def body() -> None:
        async with Runtime(FAST) as rt:
            sched = await rt.spawn(SchedulerActor, name="xs", config=SchedulingConfig())
            settings = ExploreSettings(pull_batch=8, micro_batch=8, idle_pull_s=0.05)
            explorer = await rt.spawn(
                ExplorerActor, name="e0", scheduler=sched, worker_id="e0", settings=settings
            )
            # Sends never wait on sampling: three versions in a burst, the newest wins.
            t0 = time.perf_counter()
            for v in (1, 2, 3):
                await explorer.load_weights.tell(v, states[v])
            assert time.perf_counter() - t0 < 5.0
            await sched.submit.ask(_requests("live", 4, deadline=time.time() + 300))
            results = await _collect(sched, "x/live")
            assert [r.version for r in results] == [3, 3, 3, 3]
            assert all(0.0 <= r.reward <= 1.0 and not r.skipped for r in results)
            assert {(r.prompt, r.seed) for r in results} == {
                (q.prompt, q.seed) for q in _requests("live", 4, deadline=None)
            }
            # A version older than the one in use is ignored; a newer one is used next.
            await explorer.load_weights.tell(2, states[2])
            await explorer.load_weights.tell(4, states[1])
            await sched.submit.ask(_requests("next", 2, deadline=None))
            assert {r.version for r in await _collect(sched, "x/next")} == {4}
            # Past its deadline the planner has answered already: skipped, not sampled.
            await sched.submit.ask(_requests("late", 2, deadline=time.time() - 1))
            late = await _collect(sched, "x/late")
            assert all(r.skipped and math.isnan(r.reward) for r in late)
            stats = await explorer.statistics.ask()
            assert stats.version == 4 and stats.versions_ignored == 1
            assert stats.versions_superseded >= 1  # 1 and 2 were replaced before sampling
            assert stats.seeds_explored == 6 and stats.seeds_skipped == 2
            assert stats.seconds_per_seed is not None and stats.seconds_per_seed > 0

    arun(body())


def test_explorer_waits_for_weights_before_pulling() -> None:
    async def body() -> None:
        async with Runtime(FAST) as rt:
            sched = await rt.spawn(SchedulerActor, name="xs", config=SchedulingConfig())
            explorer = await rt.spawn(ExplorerActor, name="e0", scheduler=sched, worker_id="e0")
            await sched.submit.ask(_requests("w", 1, deadline=None))
            await asyncio.sleep(0.3)  # give a (wrong) pull the chance to happen
            assert (await sched.statistics.ask()).queue_depth == 1
            assert (await explorer.statistics.ask()).version is None

    arun(body())


# ---------------------------------------------------------------- sampler, chunks, drain


def test_trainer_sampler_is_used_and_its_window_scales_with_the_steps() -> None:
    base = SamplerConfig(num_steps=10, noise_level=0.5, sde_window=(2, 6), shift=3.0)
    settings = ExploreSettings(trainer_sampler=base)
    assert settings.sampler(10) == base  # same steps: exactly the trainer's noise
    cheap = settings.sampler(5)
    assert (cheap.num_steps, cheap.noise_level, cheap.shift) == (5, 0.5, 3.0)
    assert cheap.sde_window == (1, 3)
    assert sampler_for_steps(SamplerConfig(num_steps=10, sde_window=(9, 10)), 2).sde_window == (
        1,
        2,
    )
    assert ExploreSettings().sampler(4) == SamplerConfig(num_steps=4, noise_level=0.7)
    assert ExploreSettings(noise_level=0.3).sampler(4).noise_level == 0.3
    with pytest.raises(ValueError, match="contradicts"):
        ExploreSettings(noise_level=0.3, trainer_sampler=base)


class GatedExplorer(ExplorerActor):
    """An explorer whose reward blocks, so a test knows a batch is in flight.

    ``gate="hold"``: every batch waits for ``release`` (set by the test's cleanup).
    ``gate="until_drain"``: the first batch passes (it measures seconds per seed); later
    ones finish only once ``drain`` has started.
    """

    def __init__(self, *, gate: str, started: threading.Event, release: threading.Event,
                 **kwargs: object) -> None:  # fmt: skip
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.gate, self.started, self.release = gate, started, release

    async def on_start(self) -> None:
        await super().on_start()

        def reward(images: np.ndarray, prompts: list[str]) -> np.ndarray:
            if self.gate == "hold" or self._n["batches"] > 0:
                self.started.set()
                while not (self.release.is_set() or (self.gate != "hold" and self._draining)):
                    self.release.wait(0.01)
            return np.zeros(len(prompts))

        self._reward = reward


def test_drain_abandons_a_batch_that_does_not_fit_and_releases_its_leases() -> None:
    started, release = threading.Event(), threading.Event()
    state = build_policy("tiny", seed=1).state_dict()

    async def body() -> None:
        async with Runtime(FAST) as rt:
            sched = await rt.spawn(SchedulerActor, name="xs", config=SchedulingConfig())
            settings = ExploreSettings(pull_batch=4, micro_batch=4, idle_pull_s=0.05)
            explorer = await rt.spawn(
                GatedExplorer, name="e0", scheduler=sched, worker_id="e0", settings=settings,
                gate="hold", started=started, release=release,
            )  # fmt: skip
            await explorer.load_weights.tell(1, state)
            await sched.submit.ask(_requests("d", 4, deadline=None))
            assert await asyncio.to_thread(started.wait, 60.0)
            report = await explorer.drain.ask(time.time() + 0.2)
            assert report.released == 4 and not report.finished_inflight
            assert report.abandoned_steps == 4 * 2  # 4 seeds x 2 steps thrown away
            stats = await sched.statistics.ask()
            assert stats.queue_depth == 4 and stats.active_leases == 0  # back for others at once
            assert (await explorer.drain.ask(time.time())) == report  # idempotent
            st = await explorer.statistics.ask()
            assert st.draining and st.seeds_explored == 0

    async def guarded() -> None:
        try:
            await body()
        finally:
            release.set()  # before the loop closes: it joins the abandoned sampling thread

    arun(guarded())


def test_drain_lets_a_batch_that_fits_finish_and_complete() -> None:
    started, release = threading.Event(), threading.Event()
    state = build_policy("tiny", seed=1).state_dict()

    async def body() -> None:
        async with Runtime(FAST) as rt:
            sched = await rt.spawn(SchedulerActor, name="xs", config=SchedulingConfig())
            settings = ExploreSettings(pull_batch=4, micro_batch=4, idle_pull_s=0.05)
            explorer = await rt.spawn(
                GatedExplorer, name="e0", scheduler=sched, worker_id="e0", settings=settings,
                gate="until_drain", started=started, release=release,
            )  # fmt: skip
            await explorer.load_weights.tell(1, state)
            await sched.submit.ask(_requests("a", 4, deadline=None))
            await _collect(sched, "x/a")  # first batch: seconds per seed measured
            await sched.submit.ask(_requests("b", 4, deadline=None))
            assert await asyncio.to_thread(started.wait, 60.0)
            report = await explorer.drain.ask(time.time() + 120.0)
            assert report.finished_inflight and report.abandoned_steps == 0
            assert report.released == 0  # everything it held was completed
            results = await _collect(sched, "x/b")
            assert len(results) == 4 and all(r.version == 1 for r in results)

    async def guarded() -> None:
        try:
            await body()
        finally:
            release.set()  # before the loop closes: it joins the sampling thread

    arun(guarded())


def test_weight_chunks_from_the_publisher_become_the_explorers_weights() -> None:
    states = {v: build_policy("tiny", seed=10 + v).state_dict() for v in (1, 2)}

    async def body() -> None:
        async with Runtime(FAST) as rt, Runtime(FAST) as node_rt:
            sched = await rt.spawn(SchedulerActor, name="xs", config=SchedulingConfig())
            settings = ExploreSettings(pull_batch=4, micro_batch=4, idle_pull_s=0.05)
            await node_rt.spawn(
                ExplorerActor,
                name="e0",
                scheduler=node_rt.ref(rt.address, "xs"),
                worker_id="e0",
                settings=settings,
            )
            publisher = WeightPublisher(chunk_bytes=256 << 10)
            publisher.subscribe("e0", rt.ref(node_rt.address, "e0"))  # over the wire
            publisher.publish(1, states[1])
            publisher.publish(2, states[2])  # may supersede 1 mid-stream: 2 must win
            await sched.submit.ask(_requests("w", 2, deadline=None))
            results = await _collect(sched, "x/w")
            explorer_ref = rt.ref(node_rt.address, "e0")
            st = await explorer_ref.statistics.ask()
            if results[0].version == 1:  # sampled before version 2 was complete: next batch
                await sched.submit.ask(_requests("w2", 2, deadline=None))
                results = await _collect(sched, "x/w2")
                st = await explorer_ref.statistics.ask()
            assert {r.version for r in results} == {2} and st.version == 2
            assert st.chunks_received > 1
            instance = node_rt.cells["e0"].instance
            assert isinstance(instance, ExplorerActor) and instance.policy is not None
            got = instance.policy.state_dict()
            assert all(torch.equal(got[k], states[2][k]) for k in states[2])
            await publisher.close()

    arun(body())


# ---------------------------------------------------------------- the trainer's model config


def test_model_config_accepts_a_config_a_name_or_wire_data() -> None:
    from spotlight.actors.weights.policy_spec import model_config
    from spotlight.models.dit import get_config
    from tests.micro import MICRO

    assert model_config(MICRO) is MICRO
    assert model_config("tiny") == get_config("tiny")
    wire = {**MICRO.to_dict(), "axes_dims_rope": list(MICRO.axes_dims_rope)}  # as msgpack has it
    assert model_config(wire) == MICRO
    with pytest.raises(ValueError, match="unknown DiT config 'huge'; valid"):
        model_config("huge")
    with pytest.raises(ValueError, match="unknown DiTConfig fields"):
        model_config({**wire, "layers": 2})
    with pytest.raises(ValueError, match="model must be"):
        model_config(3)  # type: ignore[arg-type]


def test_weights_of_another_config_are_rejected_naming_both_shapes() -> None:
    """An explorer built from a config other than the trainer's (the old named-config bug:
    a ``tiny`` explorer for a ``micro`` base) says so when the weights arrive."""
    from spotlight.actors.exploration.explorer import weights_fit
    from spotlight.runtime.errors import RemoteError
    from tests.micro import MICRO

    tiny = build_policy("tiny", seed=0)
    micro_state = build_policy(MICRO, seed=0).state_dict()
    with pytest.raises(ValueError, match=r"config 'tiny' \(\d+ shape mismatch") as info:
        weights_fit(tiny, micro_state, version=3)
    assert re.search(r"\(\d+, \d+\) in the weights, \(\d+, \d+\) in the model", str(info.value))
    state = build_policy("tiny", seed=1).state_dict()
    weights_fit(tiny, state, version=3)  # the same config fits: no error
    key = "transformer.img_in.weight"
    one_off = {**state, key: torch.zeros(32, 12)}
    del one_off["text_encoder.pos_LE"]
    with pytest.raises(ValueError) as info:
        weights_fit(tiny, one_off, version=4)
    assert f"{key}: (32, 12) in the weights, {tuple(state[key].shape)} in the model" in str(
        info.value
    )
    assert "1 tensor(s) missing from the weights, e.g. text_encoder.pos_LE" in str(info.value)

    async def body() -> None:
        async with Runtime(FAST) as rt:
            sched = await rt.spawn(SchedulerActor, name="xs", config=SchedulingConfig())
            explorer = await rt.spawn(ExplorerActor, name="e0", scheduler=sched, worker_id="e0")
            with pytest.raises((ValueError, RemoteError), match="does not fit"):
                await explorer.load_weights.ask(1, micro_state)
            st = await explorer.statistics.ask()
            assert st.versions_rejected == 1 and st.versions_received == 0

    arun(body())


def test_an_explorer_of_the_micro_config_explores_micro_weights() -> None:
    from tests.micro import MICRO

    state = build_policy(MICRO, seed=4).state_dict()

    async def body() -> None:
        async with Runtime(FAST) as rt:
            sched = await rt.spawn(SchedulerActor, name="xs", config=SchedulingConfig())
            settings = ExploreSettings(pull_batch=4, micro_batch=4, idle_pull_s=0.05)
            explorer = await rt.spawn(
                ExplorerActor,
                name="e0",
                scheduler=sched,
                worker_id="e0",
                model=MICRO.to_dict(),
                settings=settings,
            )
            assert await explorer.load_weights.ask(1, state)
            await sched.submit.ask(_requests("m", 4, deadline=None))
            results = await _collect(sched, "x/m")
            assert len(results) == 4 and {r.version for r in results} == {1}
            assert all(0.0 <= r.reward <= 1.0 and not r.skipped for r in results)

    arun(body())


def test_explorer_steps_aside_while_the_nodes_rollout_worker_is_busy() -> None:
    """``pause_while`` true (the node's rollout worker holds the trainer's requests): no
    explore request is pulled; once false, the queued seeds are explored."""
    from spotlight.actors.rollout.worker import Occupancy
    from tests.micro import MICRO

    held = [3]
    occupancy = Occupancy()
    occupancy.bind(lambda: held[0])

    async def body() -> None:
        async with Runtime(FAST) as rt:
            sched = await rt.spawn(SchedulerActor, name="xs", config=SchedulingConfig())
            explorer = await rt.spawn(
                ExplorerActor,
                name="e0",
                scheduler=sched,
                worker_id="e0",
                model=MICRO.to_dict(),
                settings=ExploreSettings(pull_batch=4, micro_batch=4, idle_pull_s=0.02),
                pause_while=occupancy.busy,
            )
            assert await explorer.load_weights.ask(1, build_policy(MICRO, seed=4).state_dict())
            await sched.submit.ask(_requests("p", 4, deadline=None))
            for _ in range(200):  # wait on the explorer's own count, not on time
                if (await explorer.statistics.ask()).pauses >= 5:
                    break
                await asyncio.sleep(0.01)
            stats = await sched.statistics.ask()
            assert stats.leases.leases_granted == 0 and stats.queue_depth == 4
            held[0] = 0  # the rollouts are done: exploration resumes
            results = await _collect(sched, "x/p")
            assert len(results) == 4 and not any(r.skipped for r in results)

    arun(body())
