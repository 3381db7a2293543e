"""The planner: rounds within budget, the allocation a known case needs, never late, fallbacks.

Pure :class:`BatchPlan` on synthetic reward distributions, then the actor in one runtime with
a synthetic explorer (no torch) pulling from a real scheduler.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from spotlight.actors.exploration.bandit import BanditConfig, ExplorationBudget, best_group_variance
from spotlight.actors.exploration.explorer import ExploreResult
from spotlight.actors.exploration.planner import (
    BatchPlan,
    PlannerActor,
    PlannerConfig,
    SeedPlan,
    flatten,
    random_plan,
    seeds_for_iteration,
)
from spotlight.actors.scheduling.scheduler import SchedulerActor, SchedulingConfig
from spotlight.runtime import Actor, ActorRef, Runtime, endpoint
from tests.runtime.helpers import FAST, arun

pytestmark = pytest.mark.timeout(60)


def _result(prompt: str, seed: int, reward: float, seconds: float = 1.0) -> ExploreResult:
    return ExploreResult(
        prompt=prompt, seed=seed, reward=reward, version=0, seconds=seconds, worker_id="w"
    )


def _plan(prompts: list[str], gpu_s: float, **kw: object) -> BatchPlan:
    cfg = PlannerConfig(
        bandit=BanditConfig(group_size=4, exploration_bonus=0.0, mc_draws=128), **kw
    )  # type: ignore[arg-type]
    return BatchPlan(
        "b", prompts, cfg, budget=ExplorationBudget(gpu_s), seconds_per_seed=1.0, seed=0
    )


def test_first_round_is_uniform_and_every_round_stays_within_budget() -> None:
    plan = _plan(["a", "b", "c"], gpu_s=20.0, initial_seeds=2)
    first = plan.next_round(100.0)  # asks for more than the budget: capped by it
    assert sorted(p for p, _ in first) == ["a", "a", "b", "b", "c", "c"]
    rng = np.random.default_rng(0)
    total = len(first)
    for prompt, seed in first:
        assert plan.observe(_result(prompt, seed, float(rng.random())))
    while pairs := plan.next_round(plan.remaining_gpu_s() / 2 + 1):
        total += len(pairs)
        for prompt, seed in pairs:
            plan.observe(_result(prompt, seed, float(rng.random())))
    assert total * plan.seconds_per_seed <= 20.0
    assert plan.planned_gpu_s <= 20.0
    assert plan.next_round(100.0) == []


def test_rounds_use_the_measured_cost_per_seed_not_the_configured_one() -> None:
    """BatchPlan converts GPU-seconds to seeds with the measured cost; the bandit must not
    convert back with its configured one (that crashed rounds when the measured cost was
    higher, and starved them when it was lower)."""
    cfg = PlannerConfig(bandit=BanditConfig(group_size=8, seconds_per_seed=0.05))
    plan = BatchPlan(
        "b",
        ["a red circle", "two blue squares"],
        cfg,
        budget=ExplorationBudget(10.0),
        seconds_per_seed=0.05,
    )
    for i, (prompt, seed) in enumerate(plan.next_round(10.0)):
        plan.observe(_result(prompt, seed, (i % 5) / 5))
    plan.seconds_per_seed = 0.08  # measured: dearer than configured
    assert 0 < len(plan.next_round(2.0)) <= 25
    plan.seconds_per_seed = 0.01  # measured: cheaper than configured
    # 0.5 s buys 50 seeds at the measured cost; the bandit's own cost would allow only 10.
    assert 10 < len(plan.next_round(0.5)) <= 50


def test_seeds_are_unique_per_prompt() -> None:
    plan = _plan(["a"], gpu_s=50.0, initial_seeds=50)
    seeds = [s for _, s in plan.next_round(50.0)]
    assert len(seeds) == 50 and len(set(seeds)) == 50


def test_known_best_allocation_goes_to_the_prompt_that_can_still_spread() -> None:
    """'coin' already has the maximal best-group variance (0.25): more seeds cannot raise it.
    'open' has two close rewards; all the budget must go there."""
    plan = _plan(["coin", "open"], gpu_s=1000.0, initial_seeds=0)
    plan.rounds = 1  # skip the uniform round: start from a known history
    for s in range(16):
        plan.in_flight.add(("coin", s))
        plan.observe(_result("coin", s, float(s % 2)))
    for s, r in ((0, 0.4), (1, 0.6)):
        plan.in_flight.add(("open", s))
        plan.observe(_result("open", s, r))
    pairs = plan.next_round(6.0)
    assert [p for p, _ in pairs] == ["open"] * 6


def test_rare_success_prompt_gets_more_than_constant_prompt() -> None:
    """Synthetic distributions: constant 0.3, Bernoulli(0.15), and uniform[0,1]."""
    draws = {
        "constant": lambda r: 0.3,
        "rare": lambda r: float(r.random() < 0.15),
        "uniform": lambda r: float(r.random()),
    }
    rng = np.random.default_rng(7)
    plan = _plan(list(draws), gpu_s=60.0, initial_seeds=4)
    spent = dict.fromkeys(draws, 0)
    while pairs := plan.next_round(max(1.0, plan.remaining_gpu_s() / 2)):
        for prompt, seed in pairs:
            spent[prompt] += 1
            plan.observe(_result(prompt, seed, draws[prompt](rng)))
    assert spent["rare"] > spent["constant"]
    answer = plan.answer()
    assert answer.fallback_seeds == 0
    rare = next(g for g in answer.groups if g.prompt == "rare")
    explored = list(plan.bandit.explored("rare").values())
    assert sum(explored) >= 1  # it found successes...
    # ...and the group holds the best spread they allow (extremes, not the first four).
    assert rare.explored_variance == pytest.approx(best_group_variance(explored, 4))
    assert rare.explored_variance > 0.1


def test_answer_pads_unexplored_prompts_with_counted_fallbacks() -> None:
    plan = _plan(["a", "b"], gpu_s=10.0, initial_seeds=3)
    pairs = plan.next_round(10.0)
    for prompt, seed in pairs:
        if prompt == "a":
            plan.observe(_result(prompt, seed, 0.5))
    answer = plan.answer()
    assert [len(g.seeds) for g in answer.groups] == [4, 4]
    assert answer.fallback_seeds == 1 + 4 and answer.fallback_prompts == 2
    assert not plan.observe(_result("b", pairs[-1][1], 0.1))  # late: the batch is closed
    prompts, seeds = flatten(answer)
    assert prompts == ["a"] * 4 + ["b"] * 4 and len(set(seeds[:4])) == 4


def test_random_plan_is_all_fallback() -> None:
    plan = random_plan("b", ["x", "y"], 3, seed=1)
    assert plan.fallback_seeds == 6 and plan.fallback_prompts == 2
    assert flatten(plan)[0] == ["x"] * 3 + ["y"] * 3


class SyntheticExplorer(Actor):
    """Pulls explore requests and answers rewards from a per-prompt distribution (no torch)."""

    def __init__(self, *, scheduler: ActorRef, rewards: dict[str, float]) -> None:
        self.scheduler = scheduler
        self.rewards = rewards
        self.task: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def on_stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    @endpoint
    async def noop(self) -> None:
        return None

    async def _loop(self) -> None:
        while True:
            leases = await self.scheduler.pull.ask("syn", 32, timeout=10.0)
            if not leases:
                await asyncio.sleep(0.01)  # idle poll interval, as a real worker's
                continue
            for lease in leases:
                req = lease.request
                rng = np.random.default_rng(req.seed)
                p = self.rewards[req.prompt]
                res = _result(req.prompt, req.seed, float(rng.random() < p), seconds=0.01)
                await self.scheduler.complete.ask(req.request_id, lease.token, res, timeout=10.0)


class Idle(Actor):
    """An explorer that never pulls (its node is about to be lost)."""

    @endpoint
    async def noop(self) -> None:
        return None


async def _planner(rt: Runtime, **cfg: object) -> tuple[ActorRef, ActorRef]:
    sched = await rt.spawn(SchedulerActor, name="xs", config=SchedulingConfig(lease_ttl_s=30.0))
    config = PlannerConfig(
        bandit=BanditConfig(group_size=4, mc_draws=32, seconds_per_seed=0.01), **cfg
    )  # type: ignore[arg-type]
    planner = await rt.spawn(PlannerActor, name="planner", scheduler=sched, config=config)
    return sched, planner


def test_fallback_when_late_is_immediate_and_counted() -> None:
    """No explorer at all: the batch is due in 60 s but the trainer asks now and gets
    random seeds at once (every seed a fallback), counted in the statistics."""

    async def body() -> None:
        async with Runtime(FAST) as rt:
            _, planner = await _planner(rt, default_iteration_s=60.0)
            await planner.set_spot_gpus.ask(2)
            budget = await planner.plan.ask("b1", ["a", "b", "c"], time.time())
            assert budget > 0
            t0 = time.perf_counter()
            answer: SeedPlan = await seeds_for_iteration(planner, "b1", ["a", "b", "c"], 4)
            assert time.perf_counter() - t0 < 2.0  # one ask round trip, not the 60 s window
            assert answer.fallback_seeds == 12 and answer.fallback_prompts == 3
            # A batch the planner never heard of is all fallback too.
            unknown = await seeds_for_iteration(planner, "zz", ["q"], 4)
            assert unknown.fallback_seeds == 4
            stats = await planner.statistics.ask()
            assert stats.fallback_seeds == 16 and stats.batches_answered == 2

    arun(body())


def test_unreachable_planner_falls_back_locally() -> None:
    async def body() -> None:
        async with Runtime(FAST) as rt:
            ghost = rt.ref(rt.address, "no-such-planner")
            answer = await seeds_for_iteration(ghost, "b", ["a"], 4, timeout=2.0)
            assert answer.fallback_seeds == 4

    arun(body())


def test_rounds_reach_explorers_and_groups_use_explored_extremes() -> None:
    async def body() -> None:
        async with Runtime(FAST) as rt:
            sched, planner = await _planner(rt, default_iteration_s=30.0, initial_seeds=4)
            rewards = {"rare": 0.2, "coin": 0.5, "never": 0.0}
            await rt.spawn(SyntheticExplorer, name="syn", scheduler=sched, rewards=rewards)
            await planner.set_spot_gpus.ask(1)
            await planner.plan.ask("b1", list(rewards), time.time())
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # wait on the planner's own counters
                stats = await planner.statistics.ask()
                if stats.results >= 40 and stats.rounds >= 2:
                    break
                await asyncio.sleep(0.05)
            answer = await seeds_for_iteration(planner, "b1", list(rewards), 4)
            by_prompt = {g.prompt: g for g in answer.groups}
            assert answer.fallback_seeds == 0
            assert by_prompt["coin"].explored_variance == pytest.approx(0.25)
            assert by_prompt["never"].explored_variance == 0.0
            stats = await planner.statistics.ask()
            assert stats.requests_submitted * 0.01 <= answer.budget_gpu_s + 1e-9

    arun(body())


def test_unregistered_explorers_are_forgotten_and_a_round_in_flight_survives() -> None:
    """A spot node leaves mid-round: the planner drops its explorer (idempotently; a newer
    incarnation under the same id stays), counts no GPU for it, and the round in flight
    still ends in an answer (the lost seeds are fallbacks, nothing raises)."""

    async def body() -> None:
        async with Runtime(FAST) as rt:
            _sched, planner = await _planner(rt, default_iteration_s=2.0, initial_seeds=2)
            old = await rt.spawn(Idle, name="old")  # stands for n1's explorer
            await planner.register_explorer.ask(old, "n1")
            other = rt.ref(rt.address, "elsewhere")
            await planner.register_explorer.ask(other, "n2")
            assert (await planner.statistics.ask()).explorers == ["n1", "n2"]
            # No set_spot_gpus: the budget counts the registered explorers (2 GPUs).
            assert await planner.plan.ask("b1", ["a", "b"], time.time()) > 0
            deadline = time.monotonic() + 30
            while (await planner.statistics.ask()).requests_submitted == 0:  # round 0 is out
                assert time.monotonic() < deadline, "no round was submitted"
                await asyncio.sleep(0.02)  # polling the planner's own counter
            # n1's node is lost with the round in flight: nobody explores those seeds.
            await rt.stop_actor("old")
            assert await planner.unregister_explorer.ask("n1", old) is True
            assert await planner.unregister_explorer.ask("n1", old) is False  # idempotent
            assert await planner.unregister_explorer.ask("ghost") is False  # unknown: no-op
            # A stale unregistration (old ref) keeps a newer explorer under the same id.
            assert await planner.unregister_explorer.ask("n2", old) is False
            assert (await planner.statistics.ask()).explorers == ["n2"]
            answer = await seeds_for_iteration(planner, "b1", ["a", "b"], 4)
            assert answer.fallback_seeds == 8  # nothing came back, the trainer still has seeds
            assert await planner.unregister_explorer.ask("n2") is True
            # With no explorer left and no GPU count set, the next batch has no budget.
            assert await planner.plan.ask("b2", ["a"], time.time()) == 0.0
            assert (await seeds_for_iteration(planner, "b2", ["a"], 4)).fallback_seeds == 4
            stats = await planner.statistics.ask()
            assert stats.explorers == [] and stats.batches_answered == 2

    arun(body())


def test_an_unaffordable_first_round_probes_one_seed_only_while_the_cost_is_a_guess() -> None:
    plan = _plan(["a", "b"], gpu_s=0.5)  # 1 s per seed (the guess): not one seed affordable
    assert plan.next_round(0.5) == []
    probe = plan.next_round(0.5, probe=True)
    assert len(probe) == 1 and plan.rounds == 1
    assert plan.next_round(0.5, probe=True) == []  # one probe per batch, round 0 only


def test_a_configured_cost_far_above_the_real_one_does_not_starve_exploration() -> None:
    """Short iterations (budget ~0.1 GPU-s a batch) and a guessed 1 s per seed: before the
    probe, no round could ever be afforded and the cost was never measured. The first batch
    probes one seed; its measured cost (0.01 s, taken even when the result is late) replaces
    the guess, and the next batch's first round is a full one."""

    async def body() -> None:
        async with Runtime(FAST) as rt:
            sched = await rt.spawn(SchedulerActor, name="xs", config=SchedulingConfig())
            config = PlannerConfig(
                bandit=BanditConfig(group_size=4, mc_draws=32, seconds_per_seed=1.0),
                default_iteration_s=0.5,
            )
            planner = await rt.spawn(PlannerActor, name="planner", scheduler=sched, config=config)
            rewards = {"a": 0.5, "b": 0.5}
            await rt.spawn(SyntheticExplorer, name="syn", scheduler=sched, rewards=rewards)
            await planner.set_spot_gpus.ask(1)
            assert await planner.plan.ask("b1", list(rewards), time.time()) < 1.0
            deadline = time.monotonic() + 20
            while (await planner.statistics.ask()).results < 1:
                assert time.monotonic() < deadline, "the probe seed was never explored"
                await asyncio.sleep(0.02)  # polling the planner's own counter
            stats = await planner.statistics.ask()
            assert stats.requests_submitted == 1
            assert stats.seconds_per_seed == pytest.approx(0.01)
            await seeds_for_iteration(planner, "b1", list(rewards), 4)
            await planner.plan.ask("b2", list(rewards), time.time())
            while (await planner.statistics.ask()).rounds < 2:
                assert time.monotonic() < deadline, "no round for the second batch"
                await asyncio.sleep(0.02)
            # b2's round 0: initial_seeds (2) for each prompt, at the measured cost
            assert (await planner.statistics.ask()).requests_submitted == 1 + 2 * len(rewards)

    arun(body())


def test_off_loop_rounds_allocate_in_a_thread_and_match_the_loop_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bandit's allocation (the costly part of a round) runs in a worker thread on a
    snapshot, and gives the same seeds as the synchronous round on the same state, round
    after round (the snapshot's random stream is adopted)."""
    import threading

    from spotlight.actors.exploration.bandit import ExplorationBandit

    threads: list[threading.Thread] = []
    allocate = ExplorationBandit.allocate_seeds

    def recording(self: ExplorationBandit, affordable: int) -> dict[str, int]:
        threads.append(threading.current_thread())
        return allocate(self, affordable)

    def rounds(plan: BatchPlan, off_loop: bool) -> list[list[tuple[str, int]]]:
        out = []
        rng = np.random.default_rng(1)
        for _ in range(4):
            pairs = asyncio.run(plan.next_round_off_loop(4.0)) if off_loop else plan.next_round(4.0)
            for prompt, seed in pairs:
                plan.observe(_result(prompt, seed, float(rng.random())))
            out.append(pairs)
        return out

    synchronous = rounds(_plan(["a", "b", "c"], gpu_s=100.0), off_loop=False)
    monkeypatch.setattr(ExplorationBandit, "allocate_seeds", recording)
    main = threading.current_thread()
    off_loop = rounds(_plan(["a", "b", "c"], gpu_s=100.0), off_loop=True)
    assert off_loop == synchronous and all(len(r) > 0 for r in off_loop)
    assert len(threads) == 3 and all(t is not main for t in threads)  # rounds 1-3 (0: fixed)


def test_a_snapshot_is_independent_of_later_observations() -> None:
    from spotlight.actors.exploration.bandit import ExplorationBandit

    bandit = ExplorationBandit(["a"], BanditConfig(group_size=2))
    bandit.observe("a", 1, 0.5)
    twin = bandit.snapshot()
    bandit.observe("a", 2, 0.9)
    assert dict(twin.explored("a")) == {1: 0.5} and dict(bandit.explored("a")) == {1: 0.5, 2: 0.9}
