"""Rollout worker: pulls sampling requests, denoises them step by step, commits progress.

Map (one actor; two tasks it owns, both cancelled in ``on_stop``)::

    scheduler ◄──pull/commit/complete── _loop task ──asyncio.to_thread──► advance() (torch)
    scheduler ◄──renew(progress)─────── _heartbeat task (every heartbeat_s)
    preemption handler ──drain(deadline)──► endpoint: stop pulling, park or abandon, release
    publisher ──weight_chunk / load_weights──► WeightSlot (applied while holding nothing)

The endpoints ``drain``, ``load_weights`` and ``weight_chunk`` and the lifecycle of the two
tasks are those of :class:`~spotlight.actors.pull.worker.PullWorker` (shared with the
explorer); this module supplies the loop, the heartbeat and the drain hooks.

* ``_loop`` waits on: a ``pull`` ask when it holds nothing (empty answer: waits
  ``idle_pull_s`` or until woken by ``drain`` or new weights); one denoising step in a
  worker thread (never on the event loop); a ``commit`` every ``commit_interval`` steps and
  a ``complete`` at the end. Requests held together advance round-robin, one step each, or
  with ``batch_held`` those at the same step in one forward pass.
* Weight versions: a request may name the version that must sample it (a trainer rollout:
  θ_k). The worker's version is its owner's (``version``, the trainer's own worker) or the
  last published one it applied (a spot node's); it pulls with it, so the scheduler passes
  over requests for another version. Should it still hold one (a scheduler without the
  filter), it releases everything it holds (with progress) and waits for weights: a
  rollout is never sampled with the wrong policy. New weights apply only between requests.
* ``_heartbeat`` renews every lease it holds and reports the step each has reached (so the
  scheduler can count recomputed steps); an answer of 0 while it holds leases means the
  scheduler no longer knows them (expired, or the scheduler restarted): they are dropped.
* An unreachable scheduler (``PeerLost``/``Timeout``) is retried every ``idle_pull_s``;
  the worker does not run past an unacknowledged commit, so a scheduler outage costs at
  most ``commit_interval`` steps per request.

Each request is one trajectory whose noise is a pure function of ``(seed, step)``: resumed
from any snapshot on any worker it is bit-identical to an uninterrupted run when sampled as
a batch of 1 (the default), equal within float rounding (≈1e-7) with ``batch_held``.

Back-pressure: a worker holds at most ``pull_batch`` requests and pulls only when empty.

Shutdown: ``drain`` (preemption) or ``on_stop``; ``drain`` keeps renewing until its
``release`` is answered, then stops both tasks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from spotlight.actors.pull.worker import PEER_ERRORS, SCHEDULER_ERRORS, PullKnobs, PullWorker
from spotlight.actors.scheduling.scheduler import SchedulingConfig
from spotlight.actors.scheduling.work import Lease, Snapshot
from spotlight.models.dit import DiTPolicy, TextEmbedding
from spotlight.models.lora import load_tunable_state
from spotlight.models.sampler import (
    SamplerConfig,
    TrajectoryState,
    advance,
    concat_states,
    split_state,
)
from spotlight.runtime import ActorRef, endpoint
from spotlight.runtime.codec import register_wire_type
from spotlight.runtime.errors import RemoteError

_T = TypeVar("_T")

__all__ = ["Occupancy", "RolloutSettings", "RolloutWorker", "WorkerStats"]

log = logging.getLogger("spotlight.actors.rollout.worker")


@register_wire_type(name="spotlight.RolloutSettings")
@dataclass(frozen=True, kw_only=True)
class RolloutSettings:
    """How a worker samples (the request says how many steps)."""

    noise_level: float = 0.7
    """Flow-GRPO noise level of the SDE steps (see ``SamplerConfig``)."""
    sde_window: tuple[int, int] | None = None
    """Steps ``[start, stop)`` that are SDE steps (see ``SamplerConfig``); None = all."""
    shift: float = 1.0
    min_step_s: float = 0.0
    """Benchmarks only: pad each step to at least this long, to emulate a slower GPU."""
    step_log: str | None = None
    """Tests/benchmarks only: append ``S|E <worker> <request> <token> <step> <time>`` to this
    file as each step starts (S) and ends (E); one unbuffered write each, so it survives
    kill -9. Counting S lines gives the steps actually run, hence the steps recomputed."""

    checkpoint: bool = True
    """False = the restart-from-step-0 baseline of the benchmarks: never commit, release
    without snapshots, so a preempted request starts over (what TorchElastic-style restart
    costs)."""
    batch_held: bool = False
    """Advance the held requests that are at the same step in ONE forward pass (a batch of
    up to ``pull_batch``) instead of one by one. ~3× the samples per second of the tiny model
    on a CPU, and how a GPU is kept busy; the price: a sample's float rounding then depends on
    which requests shared its batch (≈1e-7), so a resumed trajectory equals an uninterrupted
    one within that, not bit for bit. Off: every request is a batch of 1 (bit-exact)."""

    def __post_init__(self) -> None:
        if not self.min_step_s >= 0:
            raise ValueError(f"min_step_s must be >= 0, got {self.min_step_s}")

    @classmethod
    def like(cls, sampler: SamplerConfig, **kwargs: Any) -> RolloutSettings:
        """Settings that sample exactly as ``sampler`` does (a trainer's rollouts)."""
        return cls(
            noise_level=sampler.noise_level,
            sde_window=sampler.sde_window,
            shift=sampler.shift,
            **kwargs,
        )

    def sampler(self, num_steps: int) -> SamplerConfig:
        window = self.sde_window
        if window is not None:  # a wire round trip may turn the tuple into a list
            window = (int(window[0]), int(window[1]))
        return SamplerConfig(
            num_steps=num_steps, noise_level=self.noise_level, sde_window=window, shift=self.shift
        )


@register_wire_type(name="spotlight.WorkerStats")
@dataclass(frozen=True, kw_only=True)
class WorkerStats:
    worker_id: str
    held: int
    steps_run: int
    commits: int
    completions: int
    stale_drops: int
    """Leases dropped because the scheduler refused a commit/result (old token)."""
    step_time_s: float | None
    """Moving average of a denoising step's wall time."""
    draining: bool
    per_request_steps: dict[str, int] = field(default_factory=dict)
    weight_version: int | None = None
    """The policy version this worker samples with (None: none yet)."""
    version_releases: int = 0
    """Leases handed back because they asked for another weight version than the one held."""
    batches: int = 0
    """Forward passes run (each advances one or, with ``batch_held``, several requests)."""


class Occupancy:
    """Whether a node's rollout worker holds requests; the node's explorer steps aside
    meanwhile (rollouts are the trainer's critical path, exploration is not)."""

    def __init__(self) -> None:
        self._count: Callable[[], int] = lambda: 0

    def bind(self, count: Callable[[], int]) -> None:
        self._count = count

    def busy(self) -> bool:
        return self._count() > 0


@dataclass
class _Held:
    lease: Lease
    state: TrajectoryState | None = None
    committed_step: int = 0
    text: TextEmbedding | None = None


@dataclass
class _Inflight:
    request_id: str
    step: int
    started: float
    samples: int = 1
    """Requests advancing in this step (a batch with ``batch_held``)."""


class RolloutWorker(PullWorker):
    """Pulls requests from ``scheduler`` and samples them with ``policy``; see the map."""

    def __init__(
        self,
        *,
        scheduler: ActorRef,
        worker_id: str,
        model: DiTPolicy,
        timing: SchedulingConfig,
        settings: RolloutSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        version: Callable[[], int | None] | None = None,
        wait_for_weights: bool = False,
        occupancy: Occupancy | None = None,
        executor: Executor | None = None,
    ) -> None:
        """``version``: the weight version of ``model`` as its owner updates it (the trainer's
        own worker: the trainer's iteration, read between requests). Without it the worker's
        version is the last one it applied from ``load_weights``/``weight_chunk`` (a spot
        node's worker, subscribed to the weight publisher), None until the first.
        ``wait_for_weights``: pull nothing before the first version has arrived (a model
        built with random weights must not sample anything, not even version-free work).
        ``occupancy``: told how many requests this worker holds (its node's explorer reads
        it). ``executor``: where the torch work runs (the trainer's own worker passes the
        trainer loop's torch thread, so every step of the process runs on one thread with one
        hot OpenMP team); None: ``asyncio.to_thread``'s pool."""
        super().__init__(
            scheduler=scheduler,
            worker_id=worker_id,
            knobs=PullKnobs.read(timing, drain_margin_s=timing.preemption_margin_s),
            label="rollout worker",
        )
        self.policy = model
        self.timing = timing
        self.settings = settings or RolloutSettings()
        self._clock = clock
        self._version_fn = version
        self._wait_for_weights = wait_for_weights
        if occupancy is not None:
            occupancy.bind(lambda: len(self._held))
        self._held: dict[str, _Held] = {}
        self._inflight: _Inflight | None = None
        self._step_ema: float | None = None
        self._n = {
            "steps_run": 0,
            "commits": 0,
            "completions": 0,
            "stale_drops": 0,
            "version_releases": 0,
            "batches": 0,
        }
        self._log_fd: int | None = None
        self._executor = executor

    async def on_start(self) -> None:
        if self.settings.step_log is not None:
            self._log_fd = os.open(self.settings.step_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        self._start_tasks()

    async def on_stop(self) -> None:
        await self._stop_tasks()
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None

    # ------------------------------------------------------------------ endpoints

    @endpoint
    async def statistics(self) -> WorkerStats:
        return WorkerStats(
            worker_id=self.worker_id,
            held=len(self._held),
            steps_run=self._n["steps_run"],
            commits=self._n["commits"],
            completions=self._n["completions"],
            stale_drops=self._n["stale_drops"],
            step_time_s=self._step_ema,
            draining=self._draining,
            per_request_steps={
                rid: h.state.step for rid, h in self._held.items() if h.state is not None
            },
            weight_version=self.weight_version,
            version_releases=self._n["version_releases"],
            batches=self._n["batches"],
        )

    @property
    def weight_version(self) -> int | None:
        return self._version_fn() if self._version_fn is not None else self.slot.current

    # ------------------------------------------------------------------ PullWorker hooks

    def _weights_policy(self) -> DiTPolicy:
        return self.policy

    def _inflight_remaining_s(self) -> float | None:
        if self._inflight is None:
            return None
        est = self._step_ema if self._step_ema is not None else float("inf")
        return est - (self._clock() - self._inflight.started)

    def _inflight_steps(self) -> int:
        return 0 if self._inflight is None else self._inflight.samples

    def _release_snapshots(self) -> dict[str, Snapshot]:
        return self._snapshots()

    def _forget_held(self) -> None:
        self._held.clear()

    # ------------------------------------------------------------------ loops

    def _snapshots(self) -> dict[str, Snapshot]:
        """The progress of every held request past its last commit (what a release keeps)."""
        return {
            rid: Snapshot(step=h.state.step, payload=h.state.to_dict())
            for rid, h in self._held.items()
            if h.state is not None and h.state.step > h.committed_step and self.settings.checkpoint
        }

    async def _loop(self) -> None:
        while not self._draining:
            if not self._held:
                await self._apply_newest()
                if self._wait_for_weights and self.weight_version is None:
                    await self._wait_wake(self.knobs.idle_pull_s * 10)
                    continue
                await self._pull()
                continue
            if not await self._versions_match():
                continue
            if self.settings.batch_held:
                for group in self._step_groups():
                    if self._draining:
                        break
                    await self._advance_batch(group)
                continue
            for rid in list(self._held):
                if self._draining:
                    break
                held = self._held.get(rid)
                if held is not None:
                    await self._advance_one(held)

    async def _apply_newest(self) -> None:
        """Load the newest published weights; only called while no request is held, so a
        trajectory never changes weights halfway."""
        pending = self.slot.take()
        if pending is None:
            return
        version, state = pending
        await self._compute(load_tunable_state, self.policy, state)
        log.info("rollout worker %s now at weight version %d", self.worker_id, version)

    async def _versions_match(self) -> bool:
        """Whether this worker may sample what it holds: every request that names a weight
        version names the one held. Otherwise everything held goes back (with its progress)
        and the worker waits for new weights or ``idle_pull_s``: an on-policy rollout is
        never sampled with the wrong weights, and another worker takes it meanwhile."""
        mine = self.weight_version
        wanted = {
            h.lease.request.weight_version
            for h in self._held.values()
            if h.lease.request.weight_version is not None
        }
        if not wanted or wanted == {mine}:
            return True
        self._n["version_releases"] += len(self._held)
        log.info(
            "rollout worker %s holds version %s, requests want %s: handed back",
            self.worker_id,
            mine,
            sorted(wanted),
        )
        try:
            await self.scheduler.release.ask(
                self.worker_id, self._snapshots(), timeout=self.knobs.call_timeout_s
            )
        except SCHEDULER_ERRORS as exc:
            log.info("release by %s failed (%r): lease expiry takes over", self.worker_id, exc)
        self._held.clear()
        await self._wait_wake(self.knobs.idle_pull_s)
        return False

    def _step_groups(self) -> list[list[_Held]]:
        """Held requests that can share a forward pass: same step, same step count."""
        groups: dict[tuple[int, int], list[_Held]] = {}
        for held in self._held.values():
            step = 0 if held.state is None else held.state.step
            groups.setdefault((step, held.lease.request.num_steps), []).append(held)
        return [groups[key] for key in sorted(groups)]

    async def _advance_batch(self, group: list[_Held]) -> None:
        """One step of every request in ``group`` in one forward pass (``batch_held``)."""
        running = [h for h in group if h.state is None or h.state.step < h.lease.request.num_steps]
        if len(running) <= 1:
            for held in group:
                await self._advance_one(held)
            return
        step = 0 if running[0].state is None else running[0].state.step
        self._inflight = _Inflight(
            running[0].lease.request.request_id, step, self._clock(), samples=len(running)
        )
        for held in running:
            self._log_step("S", held, step)
        t0 = self._clock()
        try:
            states = await self._compute(self._step_batch, running)
        except (ValueError, RuntimeError) as exc:
            # One bad request spoils the batch: step them one by one, so only it fails.
            self._inflight = None
            log.warning("batch step on %s failed (%r); stepping one by one", self.worker_id, exc)
            for held in running:
                await self._advance_one(held)
            return
        self._inflight = None
        self._record_step(self._clock() - t0)
        for held, state in zip(running, states, strict=True):
            self._log_step("E", held, step)
            held.state = state
            self._n["steps_run"] += 1
        for held in group:
            if held.lease.request.request_id in self._held:
                await self._finish_or_commit(held)

    async def _compute(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` off the event loop: on ``executor`` when given, else a pool thread."""
        if self._executor is None:
            return await asyncio.to_thread(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _step_batch(self, group: list[_Held]) -> list[TrajectoryState]:
        """One denoising step of ``group`` as one batch, in a worker thread."""
        t0 = time.monotonic()
        cfg = self.policy.config
        shape = (cfg.num_tokens, cfg.token_dim)
        batch = concat_states(
            [
                h.state
                if h.state is not None
                else TrajectoryState.start([h.lease.request.seed], shape)
                for h in group
            ]
        )
        with torch.no_grad():
            text = self.policy.encode_prompts([h.lease.request.prompt for h in group])

        def velocity(x_BNC: torch.Tensor, sigma_B: torch.Tensor) -> torch.Tensor:
            return self.policy(x_BNC, sigma_B, text)

        num_steps = group[0].lease.request.num_steps
        state = advance(velocity, batch, self.settings.sampler(num_steps))
        pad = self.settings.min_step_s - (time.monotonic() - t0)
        if pad > 0:
            time.sleep(pad)  # emulates a slower device (benchmarks); in a worker thread
        return split_state(state)

    def _record_step(self, elapsed: float) -> None:
        self._n["batches"] += 1
        ema = self._step_ema
        self._step_ema = elapsed if ema is None else 0.7 * ema + 0.3 * elapsed

    async def _pull(self) -> None:
        try:
            leases = await self.scheduler.pull.ask(
                self.worker_id,
                self.knobs.pull_batch,
                self.weight_version,
                timeout=self.knobs.call_timeout_s,
            )
        except PEER_ERRORS as exc:
            log.info("pull by %s failed (%r); retrying", self.worker_id, exc)
            leases = []
        for lease in leases:
            held = _Held(lease=lease)
            if lease.resume_from is not None:
                held.state = TrajectoryState.from_dict(lease.resume_from.payload)
                held.committed_step = lease.resume_from.step
            self._held[lease.request.request_id] = held
        if not leases and not self._draining:
            await self._wait_wake(self.knobs.idle_pull_s)

    async def _advance_one(self, held: _Held) -> None:
        request = held.lease.request
        rid = request.request_id
        if held.state is None or held.state.step < request.num_steps:
            self._inflight = _Inflight(
                rid, 0 if held.state is None else held.state.step, self._clock()
            )
            self._log_step("S", held, self._inflight.step)
            t0 = self._clock()
            try:
                state = await self._compute(self._step, held)
            except (ValueError, RuntimeError) as exc:
                # The request itself is bad (a prompt outside the model's language, a shape
                # the model refuses): retrying it elsewhere fails the same way, so it
                # completes, exactly once, with an error result its submitter sees.
                self._inflight = None
                log.error("request %s failed on %s: %r", rid, self.worker_id, exc)
                await self._send(held, "complete", {"error": f"{type(exc).__name__}: {exc}"})
                return
            self._inflight = None
            self._record_step(self._clock() - t0)
            self._log_step("E", held, state.step - 1)
            held.state = state
            self._n["steps_run"] += 1
        await self._finish_or_commit(held)

    async def _finish_or_commit(self, held: _Held) -> None:
        """Complete a finished request; commit one that is ``commit_interval`` steps on."""
        request = held.lease.request
        state = held.state
        assert state is not None
        if state.step >= request.num_steps:
            # The worker id lets the submitter count who sampled what (spot vs its own).
            await self._send(held, "complete", {**state.to_dict(), "worker_id": self.worker_id})
        elif (
            self.settings.checkpoint
            and state.step - held.committed_step >= self.timing.commit_interval
        ):
            await self._send(held, "commit", Snapshot(step=state.step, payload=state.to_dict()))

    def _log_step(self, kind: str, held: _Held, step: int) -> None:
        if self._log_fd is not None:
            lease = held.lease
            line = (
                f"{kind} {self.worker_id} {lease.request.request_id} {lease.token} {step} "
                f"{time.time():.6f}\n"
            )
            os.write(self._log_fd, line.encode())

    def _step(self, held: _Held) -> TrajectoryState:
        """One denoising step, in a worker thread (torch releases the GIL)."""
        t0 = time.monotonic()
        request = held.lease.request
        if held.text is None:
            held.text = self.policy.encode_prompts([request.prompt])
        if held.state is None:
            cfg = self.policy.config
            held.state = TrajectoryState.start([request.seed], (cfg.num_tokens, cfg.token_dim))
        text = held.text

        def velocity(x_BNC: torch.Tensor, sigma_B: torch.Tensor) -> torch.Tensor:
            return self.policy(x_BNC, sigma_B, text)

        state = advance(velocity, held.state, self.settings.sampler(request.num_steps))
        pad = self.settings.min_step_s - (time.monotonic() - t0)
        if pad > 0:
            time.sleep(pad)  # emulates a slower device (benchmarks); in a worker thread
        return state

    async def _send(self, held: _Held, what: str, payload: Any) -> None:
        """Commit or complete, retrying while the scheduler is unreachable."""
        rid = held.lease.request.request_id
        token = held.lease.token
        caller = self.scheduler.commit if what == "commit" else self.scheduler.complete
        while True:
            try:
                accepted = await caller.ask(rid, token, payload, timeout=self.knobs.call_timeout_s)
                break
            except RemoteError as exc:
                # The scheduler refused the call itself (a bug on one side): stop working on
                # the request; its lease expires and it resumes from its last commit.
                log.error("%s of %s raised at the scheduler: %s; dropped", what, rid, exc)
                self._held.pop(rid, None)
                return
            except PEER_ERRORS as exc:
                log.info("%s of %s failed (%r); retrying", what, rid, exc)
                await self._wait_wake(self.knobs.idle_pull_s)
                if self._draining:
                    return  # drain releases with the latest boundary instead
        if not accepted:
            self._n["stale_drops"] += 1
            self._held.pop(rid, None)
            log.info("%s of %s refused (stale token %d): dropped", what, rid, token)
            return
        if what == "commit":
            self._n["commits"] += 1
            held.committed_step = payload.step
        else:
            self._n["completions"] += 1
            self._held.pop(rid, None)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.knobs.heartbeat_s)  # the renew period (a timer)
            held_before = {
                rid: (0 if h.state is None else h.state.step) for rid, h in self._held.items()
            }
            if not held_before:
                continue
            try:
                count = await self.scheduler.renew.ask(
                    self.worker_id, held_before, timeout=self.knobs.call_timeout_s
                )
            except SCHEDULER_ERRORS as exc:
                log.info("renew by %s failed (%r)", self.worker_id, exc)
                continue
            if count == 0 and not self._draining:
                for rid in held_before:
                    if self._held.pop(rid, None) is not None:
                        self._n["stale_drops"] += 1
                log.info("scheduler holds no lease of %s: dropped %s", self.worker_id, held_before)
