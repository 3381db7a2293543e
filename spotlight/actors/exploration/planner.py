"""The exploration planner: spends spot GPU-seconds on seeds for the next batch, never delays.

The bandit itself (arms, value estimate, bonus, cost model) is documented and implemented,
pure, in :mod:`spotlight.actors.exploration.bandit`; :class:`BatchPlan` is the pure per-batch state
(rounds, in-flight seeds, fallbacks) and :class:`PlannerActor` the thin shell around it.

Map (one actor; one round task per planned batch, cancelled by ``take_groups``/``on_stop``)::

    trainer ──record_iteration(s)──────► iteration-time history (budget prediction)
    trainer ──plan(batch_id, prompts)──► BatchPlan + round task:
                                           budget = ExplorationBudget.predict(...)
                                           round r: allocate(share of what is left) ──►
    scheduler ◄──submit(explore requests, reply_to=planner)──┘
    scheduler ──deliver_group(ExploreResult)──► BatchPlan.observe (wakes the round task)
    trainer ──take_groups(batch_id, prompts)──► answered at once from what is explored:
                                                 prompts short of G seeds are padded with
                                                 random seeds (fallbacks, counted, published)
    explorer ──register_explorer(ref, id)──► list the trainer reads to push weights
    coordinator ──unregister_explorer(id, ref)──► drops it (node on notice, left or lost)

What each piece waits on: the round task waits for its round's results (an event) or half
the time left, whichever is first (in-flight seeds stay charged to the budget); ``take_groups`` waits on nothing (it
cancels the batch's round task), which is why the trainer is never delayed by exploration.
A result arriving after ``take_groups`` is dropped and counted (``late_results``).

Budget: GPU-seconds = (median recent iteration time − time elapsed in this iteration) ×
spot GPUs × safety, from :meth:`ExplorationBudget.predict`. The cost of a seed is measured
from the explorers' results (EMA), so the budget converts to seeds with real numbers.

Explorers: the planner never sends work to an explorer (explorers pull from the scheduler),
so the list is only read: by whoever pushes weights (``explorers``), and as the spot GPU
count when the coordinator has set none (``set_spot_gpus``). An explorer that leaves with
requests of a round in flight cannot stall the round: its leases expire in the scheduler
and are re-leased to the others, and the round waits at most half the time left anyway.

Trainer hook: :func:`seeds_for_iteration` asks ``take_groups`` under a short timeout and
falls back to random seeds locally if the planner is unreachable; :func:`flatten` turns the
answer into the per-sample ``prompts, seeds`` lists that ``flow_grpo_iteration`` takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from spotlight.actors.exploration.bandit import (
    BanditConfig,
    ExplorationBandit,
    ExplorationBudget,
    GroupChoice,
)
from spotlight.actors.exploration.explorer import ExploreResult
from spotlight.actors.monitor.metrics import MetricsPublisher
from spotlight.actors.monitor.records import PlannerRecord
from spotlight.actors.scheduling.work import GroupResult, SampleRequest
from spotlight.runtime import Actor, ActorRef, endpoint
from spotlight.runtime.codec import register_wire_type
from spotlight.runtime.errors import SpotlightError

__all__ = [
    "BatchPlan",
    "PlannerActor",
    "PlannerConfig",
    "PlannerStats",
    "SeedPlan",
    "flatten",
    "random_plan",
    "seeds_for_iteration",
]

log = logging.getLogger("spotlight.actors.exploration.planner")

register_wire_type(GroupChoice, name="spotlight.GroupChoice")
SEED_SPACE = 2**31 - 1
"""Seeds are drawn from [0, SEED_SPACE)."""


@register_wire_type(name="spotlight.PlannerConfig")
@dataclass(frozen=True, kw_only=True)
class PlannerConfig:
    """The planner's knobs; the bandit's own are in ``bandit``."""

    bandit: BanditConfig = field(default_factory=BanditConfig)
    """Group size G, prior, bonus, Monte Carlo draws, initial cost per seed."""
    explore_steps: int = 10
    """Denoising steps of an explore request. Keep the rollout's: on the tiny model, fewer
    steps (4 of 6: Spearman 0.28), 3 (0.08) or the ODE (0.01) lose the seed ranking that the
    rollout's own sampler keeps across a weight update (0.89, real base); see
    benchmarks/results/exploration.json."""
    initial_seeds: int = 2
    """Seeds every prompt gets in the first round (the bandit needs data to rank arms)."""
    round_fraction: float = 0.5
    """Each round spends this fraction of the budget still unspent: later rounds use what
    earlier ones taught the bandit."""
    safety: float = 0.8
    """Fraction of the predicted window exploration may plan to use."""
    default_iteration_s: float = 30.0
    """Assumed iteration time until the trainer has reported one."""
    cost_ema: float = 0.3
    """Weight of a new measurement in the seconds-per-seed estimate."""
    min_round_s: float = 0.05
    """A round shorter than this is not started (nothing would come back in time)."""

    def __post_init__(self) -> None:
        if not isinstance(self.explore_steps, int) or self.explore_steps < 1:
            raise ValueError(f"explore_steps={self.explore_steps!r} must be an int >= 1")
        if not isinstance(self.initial_seeds, int) or self.initial_seeds < 0:
            raise ValueError(f"initial_seeds={self.initial_seeds!r} must be an int >= 0")
        for name in ("round_fraction", "safety", "cost_ema"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name}={value} must be in (0, 1]")
        for name in ("default_iteration_s", "min_round_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value} must be a finite number of seconds > 0")


@register_wire_type(name="spotlight.SeedPlan")
@dataclass(frozen=True, kw_only=True)
class SeedPlan:
    """The trainer's answer for one batch: G seeds per prompt, in the prompts' order."""

    batch_id: str
    groups: list[GroupChoice]
    fallback_seeds: int
    """Seeds that are random because exploration had too few for their prompt."""
    fallback_prompts: int
    """Prompts with at least one fallback seed."""
    explored_seeds: int
    budget_gpu_s: float
    """Predicted budget when the batch was planned (0 for an unplanned batch)."""
    used_gpu_s: float
    """Measured GPU-seconds of the explored seeds that arrived in time."""
    answer_s: float = 0.0
    """Time the planner spent building this answer."""


@register_wire_type(name="spotlight.PlannerStats")
@dataclass(frozen=True, kw_only=True)
class PlannerStats:
    batches_planned: int
    batches_answered: int
    rounds: int
    requests_submitted: int
    results: int
    late_results: int
    skipped_results: int
    fallback_seeds: int
    fallback_prompts: int
    seconds_per_seed: float
    explorers: list[str]
    answer_s_max: float


class BatchPlan:
    """Pure state of one batch's exploration: rounds, in-flight seeds, results, the answer."""

    def __init__(
        self,
        batch_id: str,
        prompts: Sequence[str],
        config: PlannerConfig,
        *,
        budget: ExplorationBudget,
        seconds_per_seed: float,
        seed: int = 0,
    ) -> None:
        self.batch_id = batch_id
        self.prompts = list(prompts)
        self.config = config
        self.budget = budget
        self.seconds_per_seed = seconds_per_seed
        self.bandit = ExplorationBandit(self.prompts, config.bandit, seed=seed)
        self._rng = np.random.default_rng(seed)
        self._used_seeds: dict[str, set[int]] = {p: set() for p in self.prompts}
        self.in_flight: set[tuple[str, int]] = set()
        self.planned_gpu_s = 0.0
        self.used_gpu_s = 0.0
        self.rounds = 0
        self.closed = False

    def remaining_gpu_s(self) -> float:
        return max(0.0, self.budget.gpu_seconds - self.planned_gpu_s)

    def _fresh_seed(self, prompt: str) -> int:
        taken = self._used_seeds[prompt]
        while True:
            s = int(self._rng.integers(0, SEED_SPACE))
            if s not in taken:
                taken.add(s)
                return s

    def next_round(self, gpu_seconds: float, *, probe: bool = False) -> list[tuple[str, int]]:
        """(prompt, seed) pairs to explore now, costing at most ``gpu_seconds`` (and never
        more than the batch's remaining budget).

        ``probe``: the cost per seed is still the configured guess, never measured; a first
        round the guess makes unaffordable explores one seed anyway. Without it a guess
        above the real cost starves exploration for good (no seed is ever explored, so the
        cost is never measured), e.g. short iterations of a small model."""
        affordable = self._affordable(gpu_seconds, probe)
        if affordable <= 0:
            return []
        if self.rounds == 0 and self.config.initial_seeds > 0:
            return self._take(self._initial(affordable), affordable)
        return self._take(self.bandit.allocate_seeds(affordable), affordable)

    async def next_round_off_loop(
        self, gpu_seconds: float, *, probe: bool = False
    ) -> list[tuple[str, int]]:
        """:meth:`next_round` with the bandit's allocation (Monte Carlo over every prompt,
        ~60 ms for 8 prompts on one CPU core) in a worker thread, so the event loop that
        serves the trainer, the scheduler and heartbeats is not held by it.

        The thread works on a snapshot of the explored rewards: results that arrive
        meanwhile are observed by the plan as usual and count from the next round on. The
        snapshot's random stream is adopted afterwards, so rounds stay reproducible."""
        affordable = self._affordable(gpu_seconds, probe)
        if affordable <= 0:
            return []
        if self.rounds == 0 and self.config.initial_seeds > 0:
            return self._take(self._initial(affordable), affordable)
        twin = self.bandit.snapshot()
        counts = await asyncio.to_thread(twin.allocate_seeds, affordable)
        self.bandit.adopt_rng(twin)
        if self.closed:  # answered while the thread ran
            return []
        return self._take(counts, affordable)

    def _affordable(self, gpu_seconds: float, probe: bool) -> int:
        if self.closed:
            return 0
        spend = min(gpu_seconds, self.remaining_gpu_s())
        affordable = int(spend // self.seconds_per_seed)
        if affordable <= 0 and probe and self.rounds == 0:
            affordable = 1
        return affordable

    def _take(self, counts: dict[str, int], affordable: int) -> list[tuple[str, int]]:
        """Draw fresh seeds for ``counts`` (seeds per prompt) and book them as in flight.

        Counts are in seeds, not GPU-seconds: the bandit's configured cost per seed is not
        the measured one this plan converts with."""
        pairs = [(p, self._fresh_seed(p)) for p, n in counts.items() for _ in range(n)]
        assert len(pairs) <= affordable, (len(pairs), affordable)
        self.in_flight.update(pairs)
        self.planned_gpu_s += len(pairs) * self.seconds_per_seed
        self.rounds += 1
        return pairs

    def _initial(self, affordable: int) -> dict[str, int]:
        """Round 0: the same few seeds for every prompt (as many as the budget allows)."""
        per = min(self.config.initial_seeds, affordable // max(1, len(self.prompts)))
        plan = {p: per for p in self.prompts}
        if per == 0:  # budget below one seed per prompt: the first prompts get one each
            for p in self.prompts[:affordable]:
                plan[p] = 1
        return plan

    def observe(self, result: ExploreResult) -> bool:
        """Record a result; False if the batch is closed or the seed was not asked for."""
        key = (result.prompt, result.seed)
        if self.closed or key not in self.in_flight:
            return False
        self.in_flight.discard(key)
        if result.skipped or not math.isfinite(result.reward):
            return True
        self.bandit.observe(result.prompt, result.seed, result.reward)
        self.used_gpu_s += max(0.0, result.seconds)
        return True

    def answer(self, prompts: Sequence[str] | None = None) -> SeedPlan:
        """Close the batch and choose G seeds per prompt now (padding with random seeds)."""
        t0 = time.perf_counter()
        self.closed = True
        groups = []
        for prompt in prompts if prompts is not None else self.prompts:
            if prompt not in self._used_seeds:
                raise ValueError(f"prompt {prompt!r} was not planned in batch {self.batch_id!r}")
            start = int(self._rng.integers(0, SEED_SPACE - 4 * self.config.bandit.group_size))
            groups.append(self.bandit.select_group(prompt, fresh_seed_start=start))
        explored = sum(len(self.bandit.explored(p)) for p in self.prompts)
        return SeedPlan(
            batch_id=self.batch_id,
            groups=groups,
            fallback_seeds=sum(g.fallback_seeds for g in groups),
            fallback_prompts=sum(1 for g in groups if g.fallback_seeds),
            explored_seeds=explored,
            budget_gpu_s=self.budget.gpu_seconds,
            used_gpu_s=self.used_gpu_s,
            answer_s=time.perf_counter() - t0,
        )


def random_plan(batch_id: str, prompts: Sequence[str], group_size: int, *, seed: int) -> SeedPlan:
    """Every prompt on random seeds: what the trainer uses without a planner (all fallback)."""
    rng = np.random.default_rng(seed)
    groups = [
        GroupChoice(
            p, tuple(int(s) for s in rng.integers(0, SEED_SPACE, group_size)), 0.0, group_size
        )
        for p in prompts
    ]
    return SeedPlan(
        batch_id=batch_id,
        groups=groups,
        fallback_seeds=group_size * len(groups),
        fallback_prompts=len(groups),
        explored_seeds=0,
        budget_gpu_s=0.0,
        used_gpu_s=0.0,
    )


def flatten(plan: SeedPlan) -> tuple[list[str], list[int]]:
    """Per-sample ``(prompts, seeds)`` for ``flow_grpo_iteration``: each prompt's G seeds."""
    prompts = [g.prompt for g in plan.groups for _ in g.seeds]
    seeds = [int(s) for g in plan.groups for s in g.seeds]
    return prompts, seeds


async def seeds_for_iteration(
    planner: ActorRef | None,
    batch_id: str,
    prompts: Sequence[str],
    group_size: int,
    *,
    timeout: float = 2.0,  # noqa: ASYNC109 - the ask's deadline, not a sleep
    seed: int = 0,
) -> SeedPlan:
    """The trainer's side: the planner's groups, or random seeds if it cannot answer in time.

    The planner answers from memory, so ``timeout`` only matters when it is unreachable;
    then every seed is a fallback (counted in the returned plan).
    """
    if planner is not None:
        try:
            plan: SeedPlan = await planner.take_groups.ask(batch_id, list(prompts), timeout=timeout)
            return plan
        except (SpotlightError, TimeoutError) as exc:
            log.warning("planner did not answer batch %s (%r): random seeds", batch_id, exc)
    return random_plan(batch_id, prompts, group_size, seed=seed)


class PlannerActor(Actor):
    """Runs exploration rounds per batch and answers the trainer at once; see the map."""

    def __init__(
        self,
        *,
        scheduler: ActorRef,
        config: PlannerConfig | None = None,
        monitor: ActorRef | None = None,
        spot_gpus: int | None = None,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
    ) -> None:
        self.scheduler = scheduler
        self.config = config or PlannerConfig()
        self.monitor = monitor
        self._spot_gpus = spot_gpus
        self._clock = clock
        self._seed = seed
        self._iteration_s: list[float] = []
        self._busy_s: list[float] = []
        self._sps = self.config.bandit.seconds_per_seed
        self._sps_measured = False
        """False until an explorer reported a seed's cost (``_sps`` is the configured guess)."""
        self._plans: dict[str, BatchPlan] = {}
        self._started: dict[str, float] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._explorers: dict[str, ActorRef] = {}
        self._metrics: MetricsPublisher | None = None
        self._answer_s_max = 0.0
        self._n = {
            "planned": 0,
            "answered": 0,
            "rounds": 0,
            "submitted": 0,
            "results": 0,
            "late": 0,
            "skipped": 0,
            "fallback_seeds": 0,
            "fallback_prompts": 0,
        }

    async def on_start(self) -> None:
        self._metrics = MetricsPublisher(self.monitor, source=self.name, runtime=self.runtime)

    async def on_stop(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel("planner stopping")
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._metrics is not None:
            await self._metrics.close()

    # ------------------------------------------------------------------ endpoints

    @endpoint
    async def register_explorer(self, ref: ActorRef, worker_id: str) -> None:
        self._explorers[worker_id] = ref

    @endpoint
    async def unregister_explorer(self, worker_id: str, ref: ActorRef | None = None) -> bool:
        """Forget explorer ``worker_id`` (its node left or was lost); True if it was known.

        Idempotent: an unknown id is a no-op. With ``ref``, only that incarnation is
        forgotten: a node that re-joined under the same id with a new explorer stays.
        """
        known = self._explorers.get(worker_id)
        if known is None:
            log.debug("unregister_explorer(%s): not registered; nothing to do", worker_id)
            return False
        if ref is not None and known.any_generation() != ref.any_generation():
            log.debug("unregister_explorer(%s): %r is not the one registered", worker_id, ref)
            return False
        del self._explorers[worker_id]
        log.info("explorer %s unregistered", worker_id)
        return True

    @endpoint
    async def explorers(self) -> dict[str, ActorRef]:
        """Known explorers, for the trainer to push weights to."""
        return dict(self._explorers)

    @endpoint
    async def record_iteration(self, seconds: float, spot_busy_s: float = 0.0) -> None:
        """A measured trainer iteration time (the budget predictor uses the recent median),
        and how much of its start the spot GPUs spent on its rollouts (not exploring)."""
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"iteration time {seconds} must be a finite number > 0")
        if not (math.isfinite(spot_busy_s) and spot_busy_s >= 0):
            raise ValueError(f"spot_busy_s {spot_busy_s} must be a finite number >= 0")
        self._iteration_s = [*self._iteration_s[-9:], float(seconds)]
        self._busy_s = [*self._busy_s[-9:], float(spot_busy_s)]

    @endpoint
    async def set_spot_gpus(self, n: int) -> None:
        """Spot GPUs exploring now (until set: the number of registered explorers)."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"spot GPU count must be an int >= 0, got {n!r}")
        self._spot_gpus = n

    def _batch_seed(self, batch_id: str) -> int:
        """The random draws of a batch (fresh seeds, padding) are a pure function of the
        planner seed and the batch id, never of how many batches this process has planned:
        a restarted planner pads a batch exactly as the first one would have (resume)."""
        digest = hashlib.blake2b(f"{self._seed}:{batch_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1

    @endpoint
    async def plan(
        self, batch_id: str, prompts: list[str], started_at: float | None = None
    ) -> float:
        """Start exploring ``prompts`` for batch ``batch_id``; returns the budget (GPU-s).

        ``started_at`` (clock time) is when the trainer's current iteration began; the
        batch is due one predicted iteration time after it.
        """
        if not batch_id or "/" in batch_id:
            raise ValueError(f"batch_id={batch_id!r} must be non-empty and contain no '/'")
        if batch_id in self._plans:
            raise ValueError(f"batch {batch_id!r} is already planned")
        now = self._clock()
        started = now if started_at is None else started_at
        recent = self._iteration_s or [self.config.default_iteration_s]
        gpus = self._spot_gpus if self._spot_gpus is not None else len(self._explorers)
        budget = ExplorationBudget.predict(
            recent_iteration_s=recent,
            elapsed_in_iteration_s=now - started,
            spot_gpus=gpus,
            safety=self.config.safety,
            recent_busy_s=self._busy_s,
        )
        plan = BatchPlan(
            batch_id,
            prompts,
            self.config,
            budget=budget,
            seconds_per_seed=self._sps,
            seed=self._batch_seed(batch_id),
        )
        self._plans[batch_id] = plan
        self._started[batch_id] = started
        self._n["planned"] += 1
        self._wake[batch_id] = asyncio.Event()
        deadline = started + float(np.median(recent))
        task = asyncio.get_running_loop().create_task(
            self._rounds(plan, deadline), name=f"planner rounds {batch_id}"
        )
        self._tasks[batch_id] = task
        task.add_done_callback(self._task_done)
        return budget.gpu_seconds

    @endpoint
    async def deliver_group(self, group: GroupResult) -> None:
        """Explore results pushed by the scheduler (one request per group)."""
        for result in group.results:
            if not isinstance(result, ExploreResult):
                log.warning("planner got a non-explore result %r; dropped", result)
                continue
            self._n["results"] += 1
            if not result.skipped and result.seconds > 0:  # a late seed's cost is still news
                if self._sps_measured:
                    a = self.config.cost_ema
                    self._sps = (1 - a) * self._sps + a * result.seconds
                else:  # the configured guess may be off by 100x: replace it, do not blend
                    self._sps = result.seconds
                    self._sps_measured = True
            batch_id = group.group_id.split("/")[1]
            plan = self._plans.get(batch_id)
            if plan is None or plan.closed:
                self._n["late"] += 1
                continue
            if result.skipped:
                self._n["skipped"] += 1
            plan.observe(result)
            if not plan.in_flight:
                self._wake[batch_id].set()

    @endpoint
    async def take_groups(self, batch_id: str, prompts: list[str]) -> SeedPlan:
        """G seeds per prompt, now: never waits for exploration (fallbacks are counted)."""
        task = self._tasks.pop(batch_id, None)
        if task is not None:
            task.cancel("the trainer took the batch")
        plan = self._plans.pop(batch_id, None)
        self._wake.pop(batch_id, None)
        self._started.pop(batch_id, None)
        if plan is None:
            answer = random_plan(
                batch_id, prompts, self.config.bandit.group_size, seed=self._batch_seed(batch_id)
            )
        else:
            answer = plan.answer(prompts)
        self._n["answered"] += 1
        self._n["fallback_seeds"] += answer.fallback_seeds
        self._n["fallback_prompts"] += answer.fallback_prompts
        self._answer_s_max = max(self._answer_s_max, answer.answer_s)
        if self._metrics is not None:
            variances = [g.explored_variance for g in answer.groups]
            self._metrics.publish_record(
                PlannerRecord(
                    batch_id=batch_id,
                    budget_gpu_s=answer.budget_gpu_s,
                    used_gpu_s=answer.used_gpu_s,
                    explored_seeds=answer.explored_seeds,
                    fallbacks=answer.fallback_seeds,
                    fallback_prompts=answer.fallback_prompts,
                    fallbacks_total=self._n["fallback_seeds"],
                    explorers=len(self._explorers),
                    seconds_per_seed=self._sps,
                    mean_group_variance=float(np.mean(variances)) if variances else None,
                )
            )
        return answer

    @endpoint
    async def statistics(self) -> PlannerStats:
        n = self._n
        return PlannerStats(
            batches_planned=n["planned"],
            batches_answered=n["answered"],
            rounds=n["rounds"],
            requests_submitted=n["submitted"],
            results=n["results"],
            late_results=n["late"],
            skipped_results=n["skipped"],
            fallback_seeds=n["fallback_seeds"],
            fallback_prompts=n["fallback_prompts"],
            seconds_per_seed=self._sps,
            explorers=sorted(self._explorers),
            answer_s_max=self._answer_s_max,
        )

    # ------------------------------------------------------------------ internals

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("planner task %s failed", task.get_name(), exc_info=task.exception())

    async def _rounds(self, plan: BatchPlan, deadline: float) -> None:
        """Allocation rounds until the batch's budget or time runs out (or it is taken)."""
        wake = self._wake[plan.batch_id]
        while not plan.closed:
            left_s = deadline - self._clock()
            if left_s < self.config.min_round_s:
                return
            plan.seconds_per_seed = self._sps
            share = plan.remaining_gpu_s() * self.config.round_fraction
            if plan.rounds == 0:
                share = plan.remaining_gpu_s()  # round 0 is capped by initial_seeds
            pairs = await plan.next_round_off_loop(
                max(share, self._sps), probe=not self._sps_measured
            )
            if not pairs:
                return
            self._n["rounds"] += 1
            requests = [
                SampleRequest(
                    request_id=f"x/{plan.batch_id}/{plan.rounds}/{i}",
                    group_id=f"x/{plan.batch_id}/{plan.rounds}/{i}",
                    prompt=prompt,
                    seed=seed,
                    num_steps=self.config.explore_steps,
                    deadline=deadline,
                    kind="explore",
                )
                for i, (prompt, seed) in enumerate(pairs)
            ]
            wake.clear()
            try:
                await self.scheduler.submit.ask(requests, self.ref, timeout=10.0)
            except (SpotlightError, TimeoutError) as exc:
                log.warning("explore submit for %s failed (%r)", plan.batch_id, exc)
                return
            self._n["submitted"] += len(requests)
            # Wait for the round, but not past half the time left: a straggling explorer
            # must not stop later rounds from using what the others already reported.
            left_s = max(0.0, deadline - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(self.config.min_round_s, left_s / 2))
