"""Rollout worker: pulls sampling requests, denoises them step by step, commits progress.

Map (one actor; two tasks it owns, both cancelled in ``on_stop``)::

    scheduler ◄──pull/commit/complete── _loop task ──asyncio.to_thread──► advance() (torch)
    scheduler ◄──renew(progress)─────── _heartbeat task (every heartbeat_s)
    preemption handler ──drain(deadline)──► endpoint: stop pulling, park or abandon, release

* ``_loop`` waits on: a ``pull`` ask when it holds nothing (empty answer: waits
  ``idle_pull_s`` or until woken by ``drain``); one denoising step in a worker thread
  (never on the event loop); a ``commit`` every ``commit_interval`` steps and a
  ``complete`` at the end. Requests held together advance round-robin, one step each.
* ``_heartbeat`` renews every lease it holds and reports the step each has reached (so the
  scheduler can count recomputed steps); an answer of 0 while it holds leases means the
  scheduler no longer knows them (expired, or the scheduler restarted): they are dropped.
* An unreachable scheduler (``PeerLost``/``Timeout``) is retried every ``idle_pull_s``;
  the worker does not run past an unacknowledged commit, so a scheduler outage costs at
  most ``commit_interval`` steps per request.

Each request is one trajectory of batch 1, whose noise is a pure function of
``(seed, step)``: resumed from any snapshot on any worker it is bit-identical to an
uninterrupted run (forward passes of batch 1 do not depend on what else a worker runs).

Back-pressure: a worker holds at most ``pull_batch`` requests and pulls only when empty.

Shutdown: ``drain`` (preemption) or ``on_stop``; ``drain`` keeps renewing until its
``release`` is answered, then stops both tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from spotlight.actors.leases import Lease, Snapshot
from spotlight.actors.scheduler import SchedulingConfig
from spotlight.models.dit import DiTPolicy, TextEmbedding
from spotlight.models.sampler import SamplerConfig, TrajectoryState, advance
from spotlight.runtime import Actor, ActorRef, endpoint
from spotlight.runtime.codec import register_wire_type
from spotlight.runtime.errors import ActorStopped, PeerLost, RemoteError, Timeout

__all__ = ["DrainReport", "RolloutSettings", "RolloutWorker", "WorkerStats"]

log = logging.getLogger("spotlight.actors.rollout")

_RETRYABLE = (PeerLost, Timeout, ActorStopped, TimeoutError)


@register_wire_type(name="spotlight.RolloutSettings")
@dataclass(frozen=True, kw_only=True)
class RolloutSettings:
    """How a worker samples (the request says how many steps)."""

    noise_level: float = 0.7
    """Flow-GRPO noise level of the SDE steps (see ``SamplerConfig``)."""
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

    def __post_init__(self) -> None:
        if not self.min_step_s >= 0:
            raise ValueError(f"min_step_s must be >= 0, got {self.min_step_s}")

    def sampler(self, num_steps: int) -> SamplerConfig:
        return SamplerConfig(num_steps=num_steps, noise_level=self.noise_level, shift=self.shift)


@register_wire_type(name="spotlight.DrainReport")
@dataclass(frozen=True, kw_only=True)
class DrainReport:
    """What a worker did when drained before a deadline."""

    worker_id: str
    released: int
    """Leases handed back (-1: the release ask failed; lease expiry takes over)."""
    snapshots: dict[str, int]
    """Request id -> step of the snapshot committed with the release."""
    finished_inflight: bool
    """The step running at the notice was finished (it fitted before the deadline)."""
    abandoned_steps: int
    """Steps that were running and were given up (recomputed elsewhere): 0 or 1."""
    seconds: float


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


class RolloutWorker(Actor):
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
    ) -> None:
        self.scheduler = scheduler
        self.worker_id = worker_id
        self.policy = model
        self.timing = timing
        self.settings = settings or RolloutSettings()
        self._clock = clock
        self._held: dict[str, _Held] = {}
        self._inflight: _Inflight | None = None
        self._draining = False
        self._wake = asyncio.Event()
        self._parked = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._hb_task: asyncio.Task[None] | None = None
        self._step_ema: float | None = None
        self._n = {"steps_run": 0, "commits": 0, "completions": 0, "stale_drops": 0}
        self._log_fd: int | None = None

    async def on_start(self) -> None:
        if self.settings.step_log is not None:
            self._log_fd = os.open(self.settings.step_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        loop = asyncio.get_running_loop()
        self._loop_task = loop.create_task(self._loop(), name=f"rollout {self.worker_id}")
        self._loop_task.add_done_callback(self._loop_ended)
        self._hb_task = loop.create_task(self._heartbeat(), name=f"heartbeat {self.worker_id}")

    async def on_stop(self) -> None:
        for task in (self._loop_task, self._hb_task):
            if task is not None and not task.done():
                task.cancel("rollout worker stopping")
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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
        )

    @endpoint
    async def drain(self, deadline: float) -> DrainReport:
        """Stop pulling; finish the running step if it fits before ``deadline``
        (``time.time()``), else give it up; release every lease with its latest boundary.

        The estimate is the running step's remaining time from the measured average step
        time; ``preemption_margin_s`` is kept free for the release and the exit.
        """
        started = time.time()
        self._draining = True
        self._wake.set()
        margin = self.timing.preemption_margin_s
        budget = deadline - time.time() - margin
        finished = False
        abandoned = 0
        inflight = self._inflight
        task = self._loop_task
        if task is not None and not task.done():
            fits = budget > 0
            if inflight is not None:
                est = self._step_ema if self._step_ema is not None else float("inf")
                remaining = max(0.0, est - (self._clock() - inflight.started))
                fits = remaining <= budget
            if fits:
                try:
                    await asyncio.wait_for(asyncio.shield(self._parked.wait()), budget)
                    finished = inflight is not None
                except TimeoutError:
                    pass
            if not task.done():
                abandoned = 1 if self._inflight is not None else 0
                task.cancel("preempted: the running step does not fit before the deadline")
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        snapshots = {
            rid: Snapshot(step=h.state.step, payload=h.state.to_dict())
            for rid, h in self._held.items()
            if h.state is not None and h.state.step > h.committed_step and self.settings.checkpoint
        }
        timeout = max(0.1, deadline - time.time() - margin / 2)
        try:
            released = await self.scheduler.release.ask(self.worker_id, snapshots, timeout=timeout)
        except (*_RETRYABLE, RemoteError) as exc:
            log.warning("release by %s failed (%r): lease expiry takes over", self.worker_id, exc)
            released = -1
        self._held.clear()
        if self._hb_task is not None:
            self._hb_task.cancel("drained")
        return DrainReport(
            worker_id=self.worker_id,
            released=released,
            snapshots={rid: s.step for rid, s in snapshots.items()},
            finished_inflight=finished,
            abandoned_steps=abandoned,
            seconds=time.time() - started,
        )

    # ------------------------------------------------------------------ loops

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a bad request: say so loudly; the leases expire and resume elsewhere.
            log.critical("rollout loop of %s crashed", self.worker_id, exc_info=task.exception())

    async def _loop(self) -> None:
        try:
            while not self._draining:
                if not self._held:
                    await self._pull()
                    continue
                for rid in list(self._held):
                    if self._draining:
                        break
                    held = self._held.get(rid)
                    if held is not None:
                        await self._advance_one(held)
        finally:
            self._parked.set()

    async def _pull(self) -> None:
        try:
            leases = await self.scheduler.pull.ask(
                self.worker_id, self.timing.pull_batch, timeout=self.timing.call_timeout_s
            )
        except _RETRYABLE as exc:
            log.info("pull by %s failed (%r); retrying", self.worker_id, exc)
            leases = []
        for lease in leases:
            held = _Held(lease=lease)
            if lease.resume_from is not None:
                held.state = TrajectoryState.from_dict(lease.resume_from.payload)
                held.committed_step = lease.resume_from.step
            self._held[lease.request.request_id] = held
        if not leases and not self._draining:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.timing.idle_pull_s)

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
                state = await asyncio.to_thread(self._step, held)
            except (ValueError, RuntimeError) as exc:
                # The request itself is bad (a prompt outside the model's language, a shape
                # the model refuses): retrying it elsewhere fails the same way, so it
                # completes, exactly once, with an error result its submitter sees.
                self._inflight = None
                log.error("request %s failed on %s: %r", rid, self.worker_id, exc)
                await self._send(held, "complete", {"error": f"{type(exc).__name__}: {exc}"})
                return
            elapsed = self._clock() - t0
            self._inflight = None
            self._log_step("E", held, state.step - 1)
            held.state = state
            self._n["steps_run"] += 1
            ema = self._step_ema
            self._step_ema = elapsed if ema is None else 0.7 * ema + 0.3 * elapsed
        state = held.state
        assert state is not None
        if state.step >= request.num_steps:
            await self._send(held, "complete", state.to_dict())
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
                accepted = await caller.ask(rid, token, payload, timeout=self.timing.call_timeout_s)
                break
            except RemoteError as exc:
                # The scheduler refused the call itself (a bug on one side): stop working on
                # the request; its lease expires and it resumes from its last commit.
                log.error("%s of %s raised at the scheduler: %s; dropped", what, rid, exc)
                self._held.pop(rid, None)
                return
            except _RETRYABLE as exc:
                log.info("%s of %s failed (%r); retrying", what, rid, exc)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.timing.idle_pull_s)
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
            await asyncio.sleep(self.timing.heartbeat_s)  # the renew period (a timer)
            held_before = {
                rid: (0 if h.state is None else h.state.step) for rid, h in self._held.items()
            }
            if not held_before:
                continue
            try:
                count = await self.scheduler.renew.ask(
                    self.worker_id, held_before, timeout=self.timing.call_timeout_s
                )
            except (*_RETRYABLE, RemoteError) as exc:
                log.info("renew by %s failed (%r)", self.worker_id, exc)
                continue
            if count == 0 and not self._draining:
                for rid in held_before:
                    if self._held.pop(rid, None) is not None:
                        self._n["stale_drops"] += 1
                log.info("scheduler holds no lease of %s: dropped %s", self.worker_id, held_before)
