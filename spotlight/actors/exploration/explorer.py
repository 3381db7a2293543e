"""Explorer actors: score candidate seeds for the *next* batch with the previous weights θ_{k−1}.

Why: the reward ranking of seeds barely changes from one policy version to the next, so spot
GPUs can try many seeds per prompt with slightly stale weights while the trainer works on
iteration k; the planner then gives the trainer the seeds whose rewards spread the most.

Map (one actor; two tasks it owns, both cancelled in ``on_stop``)::

    publisher ──weight_chunk(v, manifest, offset, chunk)──► WeightInbox ─┐ (complete version)
    trainer ──load_weights(version, state)──► endpoint: WeightSlot.offer ◄┘ (newest wins)
                                                    │ (applied between batches)
    scheduler ◄──pull(worker_id, n)──── _loop task ─┴─backend.rewards──► generate + reward
    scheduler ◄──complete(rid, token, ExploreResult)─┘    (one batched pass per pull)
    scheduler ◄──renew(worker_id)────── _heartbeat task (every heartbeat_s while holding)
    scheduler ──deliver_group(ExploreResult)──► planner (push, see scheduler.py)

The sampling pass runs behind a :class:`~spotlight.actors.exploration.backends.SamplingBackend`:
a worker thread of this process at SP degree 1 (``ThreadBackend``), the node's elastic SP
group at degree > 1 (``sp_explore.SPBackend``); weights reach it through ``backend.load``
between batches. A batch the backend loses (``SamplingFailed``) hands its leases back.

The weight endpoints, ``drain`` and the lifecycle of the two tasks are those of
:class:`~spotlight.actors.pull.worker.PullWorker` (shared with the rollout worker); this module
supplies the loop, the heartbeat and the drain hooks.

* ``weight_chunk`` (what :class:`~spotlight.actors.weights.publish.WeightPublisher` sends, one
  ``tell`` per chunk) feeds a ``WeightInbox``; a version is offered to the slot once all its
  chunks are in. Chunks of a version not newer than the one held are dropped unassembled.
  ``load_weights`` (a whole state dict in one message) stays for tests and the bench.
* ``load_weights`` only stores the newest version in a :class:`WeightSlot`; it never waits
  on sampling, so the trainer's ``tell`` returns at once. A version not newer than the one
  held or pending is ignored (counted); a jump of several versions simply replaces the
  pending one: the explorer always moves to the newest it has heard of.
* ``_loop`` waits on: weights (the first version), a ``pull`` ask (empty answer: waits
  ``idle_pull_s`` or until new weights arrive), one batched sampling pass in a worker
  thread, one ``complete`` ask per request. Requests whose ``deadline`` (wall clock,
  ``time.time()``) has passed are completed as skipped without sampling: the planner has
  already answered the trainer for that batch.
* Exploration requests carry ``num_steps``; the explorer samples with that many steps in
  its ``mode`` (``sde`` or ``ode``): the bench measures which cheap settings keep the seed
  ranking.

The explorer pulls through the :class:`ExploreSource` protocol: ``pull``/``complete`` of
:class:`~spotlight.actors.scheduling.scheduler.SchedulerActor` satisfy it. The scheduler's ``pull``
has no kind filter yet, so explorers pull from a scheduler that queues only ``explore``
requests (the planner submits there).

Drain (preemption notice, ``drain(deadline)``): stop pulling; if a batch is being sampled and
its estimated remaining time (seconds per seed x seeds) fits before ``deadline`` minus
``drain_margin_s``, let it finish and complete; otherwise abandon it (its thread's result is
discarded) and hand every lease back with ``scheduler.release`` so another explorer takes
the seeds at once instead of after lease expiry. ``abandoned_steps`` in the report counts
sample-steps (seeds x denoising steps) thrown away.

Sampler: pass the trainer's :class:`SamplerConfig` as ``ExploreSettings.trainer_sampler`` so a
seed means the same initial noise and the same SDE window (``sde_window``) as in the
trainer's rollout; the request's ``num_steps`` still decides the step count.

Shutdown: ``on_stop`` cancels both tasks; leases held at that moment expire in the scheduler
and are re-leased (exploration results are idempotent by (prompt, seed, version)).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from spotlight.actors.exploration.backends import (
    BackendFactory,
    ExploreSettings,
    SamplingBackend,
    SamplingFailed,
    ThreadBackend,
)
from spotlight.actors.pull.worker import SCHEDULER_ERRORS, PullKnobs, PullWorker
from spotlight.actors.scheduling.work import DrainReport, Lease
from spotlight.actors.weights.node_base import NodeBase
from spotlight.actors.weights.policy_spec import PolicySpec
from spotlight.actors.weights.publish import WeightInbox
from spotlight.actors.weights.slot import WeightSlot, weights_fit
from spotlight.models.dit import DiTConfig, DiTPolicy
from spotlight.models.rewards import build_reward
from spotlight.runtime import ActorRef, endpoint
from spotlight.runtime.codec import register_wire_type

__all__ = [
    "DrainReport",
    "ExploreResult",
    "ExplorerActor",
    "ExplorerStats",
    "WeightSlot",
    "weights_fit",
]

log = logging.getLogger("spotlight.actors.exploration.explorer")


@register_wire_type(name="spotlight.ExploreResult")
@dataclass(frozen=True, kw_only=True)
class ExploreResult:
    """One explored seed: what the planner's bandit observes."""

    prompt: str
    seed: int
    reward: float
    """NaN when ``skipped``."""
    version: int
    """Weight version that sampled it (θ_{k−1} normally); -1 when skipped."""
    seconds: float
    """This seed's share of the batch's wall time: the planner's cost-per-seed estimate."""
    worker_id: str
    skipped: bool = False
    """True when the request's deadline had passed before sampling (no reward)."""


@register_wire_type(name="spotlight.ExplorerStats")
@dataclass(frozen=True, kw_only=True)
class ExplorerStats:
    worker_id: str
    version: int | None
    """Weight version in use (None before the first ``load_weights``)."""
    versions_received: int
    versions_applied: int
    versions_superseded: int
    """Received but replaced by a newer one before they were applied (a version jump)."""
    versions_ignored: int
    """Not newer than the one held or pending (late or duplicate)."""
    seeds_explored: int
    seeds_skipped: int
    batches: int
    seconds_per_seed: float | None
    stale_results: int
    """Completions the scheduler refused (lease lost)."""
    chunks_received: int = 0
    """Weight chunks taken by ``weight_chunk`` (assembled into versions)."""
    chunks_ignored: int = 0
    """Chunks of a version not newer than the one held or pending (dropped unassembled)."""
    draining: bool = False
    """A ``drain`` started: this explorer pulls no more work."""
    versions_rejected: int = 0
    """Weight versions whose tensors did not fit the model config (see :func:`weights_fit`)."""
    failed_batches: int = 0
    """Batches the sampling backend lost (:class:`SamplingFailed`); their leases went back."""
    pauses: int = 0
    """Pulls skipped because the node's rollout worker held the trainer's requests."""
    sampling: dict[str, Any] | None = None
    """The sampling backend's state: ``{"backend": "thread", "degree": 1}`` or the SP group's
    epoch, degree, members and re-forms (see ``sp_explore.SPBackend.statistics``)."""


class ExplorerActor(PullWorker):
    """Pulls explore requests, samples them with the newest weights it holds; see the map."""

    def __init__(
        self,
        *,
        scheduler: ActorRef,
        worker_id: str,
        model: PolicySpec | DiTConfig | str | Mapping[str, Any] = "tiny",
        settings: ExploreSettings | None = None,
        announce_to: ActorRef | None = None,
        inbox: WeightInbox | None = None,
        backend: BackendFactory | None = None,
        pause_while: Callable[[], bool] | None = None,
        base: NodeBase | None = None,
    ) -> None:
        """``model``: what to build (:class:`PolicySpec`: with LoRA, the base from disk and
        the adapters), or just the trainer's policy config, as a :class:`DiTConfig`, a name,
        or the dict of ``register_node``'s answer (``policy_spec.model_config``). ``inbox``:
        the chunk assembler behind ``weight_chunk`` (default: a new
        :class:`~spotlight.actors.weights.publish.WeightInbox`). ``backend``: builds where the
        sampling pass runs from the policy and reward (default: :class:`ThreadBackend`, SP
        degree 1; a spot node with an SP group passes ``sp_explore.SPBackend``'s).
        ``pause_while``: pull nothing while it is true (a spot node's rollout worker holds
        the trainer's requests); a batch already sampling finishes. ``base``: the node's
        frozen base (a spot node's explorer and rollout worker share one; its spec must be
        ``model``); None builds a policy of its own."""
        settings = settings or ExploreSettings()
        super().__init__(
            scheduler=scheduler,
            worker_id=worker_id,
            knobs=PullKnobs.read(settings, drain_margin_s=settings.drain_margin_s),
            label="explorer",
            inbox=inbox,
        )
        self.spec = model if isinstance(model, PolicySpec) else PolicySpec.from_answer(model)
        if base is not None and base.spec != self.spec:
            raise ValueError(
                f"explorer {worker_id}: the node's base is {base.spec}, the explorer was "
                f"asked for {self.spec}; pass the node base's own spec"
            )
        self._base = base
        self.model = self.spec.config
        self.settings = settings
        self.announce_to = announce_to
        self.policy: DiTPolicy | None = None
        self._reward: Any = None
        self._backend_factory: BackendFactory = backend or ThreadBackend
        self._pause_while = pause_while
        self.backend: SamplingBackend | None = None
        self._holding: set[str] = set()
        self._sps: float | None = None
        self._n = {
            "explored": 0,
            "skipped": 0,
            "batches": 0,
            "stale": 0,
            "failed_batches": 0,
            "paused": 0,
        }
        self._inflight: tuple[float, int, int] | None = None
        """(perf_counter at start, seeds, num_steps) of the batch being sampled."""

    async def on_start(self) -> None:
        if self._base is not None:  # weights (or adapters): load_weights
            self.policy = await asyncio.to_thread(self._base.policy_for, "explorer")
        else:
            self.policy = await asyncio.to_thread(self.spec.build)
        self._reward = build_reward(self.settings.reward)
        self._start_tasks()
        if self.announce_to is not None:
            await self.announce_to.register_explorer.tell(self.ref, self.worker_id)

    async def on_stop(self) -> None:
        await self._stop_tasks()
        if self.backend is not None:
            await self.backend.stop()

    # ------------------------------------------------------------------ endpoints

    @endpoint
    async def statistics(self) -> ExplorerStats:
        s = self.slot
        return ExplorerStats(
            worker_id=self.worker_id,
            version=s.current,
            versions_received=s.received,
            versions_applied=s.applied,
            versions_superseded=s.superseded,
            versions_ignored=s.ignored,
            seeds_explored=self._n["explored"],
            seeds_skipped=self._n["skipped"],
            batches=self._n["batches"],
            seconds_per_seed=self._sps,
            stale_results=self._n["stale"],
            chunks_received=self.weights.chunks,
            chunks_ignored=self.weights.chunks_ignored,
            draining=self._draining,
            versions_rejected=self.weights.rejected,
            failed_batches=self._n["failed_batches"],
            pauses=self._n["paused"],
            sampling=None if self.backend is None else await self.backend.statistics(),
        )

    # ------------------------------------------------------------------ internals

    def _weights_policy(self) -> DiTPolicy:
        assert self.policy is not None  # built in on_start, before any endpoint runs
        return self.policy

    def _inflight_remaining_s(self) -> float | None:
        if self._inflight is None:
            return None
        t0, seeds, _steps = self._inflight
        est = self._sps * seeds if self._sps is not None else math.inf
        return est - (time.perf_counter() - t0)

    def _inflight_steps(self) -> int:
        return 0 if self._inflight is None else self._inflight[1] * self._inflight[2]

    def _forget_held(self) -> None:
        self._holding = set()

    async def _after_loop_stopped(self, deadline: float) -> None:
        """SP members stand by before the release; bounded by the deadline."""
        if self.backend is None:
            return
        timeout = max(0.1, deadline - time.time() - self.knobs.drain_margin_s)
        try:
            await asyncio.wait_for(self.backend.stop(), timeout)
        except TimeoutError:
            log.warning("explorer %s: sampling backend did not stop in time", self.worker_id)

    async def _apply_newest(self) -> None:
        pending = self.slot.take()
        if pending is None:
            return
        version, state = pending
        assert self.backend is not None
        await self.backend.load(version, state)
        log.info("explorer %s now at weight version %d", self.worker_id, version)

    async def _loop(self) -> None:
        assert self.policy is not None
        # Built here, not in on_start: a subclass may still swap the reward after on_start.
        self.backend = self._backend_factory(self.policy, self._reward)
        while not self._draining:
            if self.slot.newest is None:
                await self._wait_wake(self.knobs.idle_pull_s * 10)
                continue
            await self._apply_newest()
            if self._pause_while is not None and self._pause_while():
                self._n["paused"] += 1
                await self._wait_wake(self.knobs.idle_pull_s)
                continue
            try:
                leases: list[Lease] = await self.scheduler.pull.ask(
                    self.worker_id, self.knobs.pull_batch, timeout=self.knobs.call_timeout_s
                )
            except SCHEDULER_ERRORS as exc:
                log.info("pull by %s failed (%r); retrying", self.worker_id, exc)
                leases = []
            if self._draining:  # a notice came during the pull: drain releases these leases
                return
            if not leases:
                await self._wait_wake(self.knobs.idle_pull_s)
                continue
            self._holding = {lease.request.request_id for lease in leases}
            try:
                await self._run(leases)
            finally:
                self._holding = set()

    async def _run(self, leases: list[Lease]) -> None:
        now = time.time()
        live = [
            lease
            for lease in leases
            if lease.request.deadline is None or lease.request.deadline > now
        ]
        for lease in leases:
            if lease not in live:
                await self._complete(lease, math.nan, -1, 0.0, skipped=True)
        by_steps: dict[int, list[Lease]] = {}
        for lease in live:
            by_steps.setdefault(lease.request.num_steps, []).append(lease)
        version = self.slot.current
        assert version is not None and self.backend is not None
        for num_steps, group in by_steps.items():
            if self._draining:  # the rest are released by drain
                return
            prompts = [lease.request.prompt for lease in group]
            seeds = [lease.request.seed for lease in group]
            t0 = time.perf_counter()
            self._inflight = (t0, len(group), num_steps)
            try:
                rewards = await self.backend.rewards(
                    prompts, seeds, num_steps=num_steps, settings=self.settings
                )
            except SamplingFailed as exc:
                self._n["failed_batches"] += 1
                log.warning("explorer %s: batch lost (%s); leases handed back", self.worker_id, exc)
                await self._release_all()
                return
            finally:
                self._inflight = None
            per_seed = (time.perf_counter() - t0) / len(group)
            self._sps = per_seed if self._sps is None else 0.7 * self._sps + 0.3 * per_seed
            self._n["batches"] += 1
            for lease, reward in zip(group, rewards, strict=True):
                await self._complete(lease, float(reward), version, per_seed)

    async def _release_all(self) -> None:
        """Hand every held lease back so another worker takes the seeds at once."""
        try:
            await self.scheduler.release.ask(
                self.worker_id, None, timeout=self.knobs.call_timeout_s
            )
        except SCHEDULER_ERRORS as exc:
            log.info("release by %s failed (%r): lease expiry takes over", self.worker_id, exc)

    async def _complete(
        self, lease: Lease, reward: float, version: int, seconds: float, *, skipped: bool = False
    ) -> None:
        request = lease.request
        result = ExploreResult(
            prompt=request.prompt,
            seed=request.seed,
            reward=reward,
            version=version,
            seconds=seconds,
            worker_id=self.worker_id,
            skipped=skipped,
        )
        self._n["skipped" if skipped else "explored"] += 1
        try:
            accepted = await self.scheduler.complete.ask(
                request.request_id, lease.token, result, timeout=self.knobs.call_timeout_s
            )
        except SCHEDULER_ERRORS as exc:
            log.info("complete of %s failed (%r); the lease will expire", request.request_id, exc)
            return
        if not accepted:
            self._n["stale"] += 1

    async def _heartbeat(self) -> None:
        while not self._draining:
            await asyncio.sleep(self.knobs.heartbeat_s)  # a timer, not synchronisation
            if not self._holding:
                continue
            try:
                await self.scheduler.renew.ask(self.worker_id, timeout=self.knobs.call_timeout_s)
            except SCHEDULER_ERRORS as exc:
                log.info("renew by %s failed (%r)", self.worker_id, exc)
