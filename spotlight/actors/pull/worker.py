"""The base of every actor that pulls leased work from a scheduler and samples with weights
it receives: the explorer (``exploration/explorer.py``) and the rollout worker
(``rollout/worker.py``). Both subclass :class:`PullWorker`, so the weight endpoints, the
drain on a preemption notice, the two owned tasks and the pull knobs are written once.

Map (one actor; two tasks the subclass's coroutines run, both cancelled in ``on_stop``)::

    publisher ──weight_chunk(v, manifest, offset, chunk)──► WeightReceiver ─┐ (complete)
    trainer/bench ──load_weights(version, state)──► WeightReceiver.offer ◄──┘ (newest wins)
                     │ sets ``_wake``: the subclass applies the version when it may
    scheduler ◄──pull/complete/...── loop task (the subclass's ``_loop``)
    scheduler ◄──renew────────────── heartbeat task (the subclass's ``_heartbeat``)
    preemption handler ──drain(deadline)──► stop pulling; finish the running work only if
                     it fits before ``deadline - drain_margin_s``; release every lease

What a subclass supplies: ``_loop`` and ``_heartbeat`` (the coroutines of the two tasks),
``_weights_policy`` (the model a version must fit), and for ``drain``: how much longer the
work in flight needs (``_inflight_remaining_s``), what abandoning it throws away
(``_inflight_steps``), what the release keeps (``_release_snapshots``) and what it forgets
once released (``_forget_held``). Hooks with a default: ``_after_loop_stopped`` (e.g. stop a
sampling backend before the release).

Drain is idempotent: a second call returns the first report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from spotlight.actors.scheduling.work import DrainReport, Snapshot
from spotlight.actors.weights.publish import WeightInbox
from spotlight.actors.weights.share import WeightManifest
from spotlight.actors.weights.slot import WeightReceiver
from spotlight.models.dit import DiTPolicy
from spotlight.runtime import Actor, ActorRef, endpoint
from spotlight.runtime.errors import ActorStopped, PeerLost, RemoteError, Timeout

__all__ = ["PEER_ERRORS", "SCHEDULER_ERRORS", "PullKnobs", "PullWorker"]

log = logging.getLogger("spotlight.actors.pull.worker")

PEER_ERRORS = (PeerLost, Timeout, ActorStopped, TimeoutError)
"""A scheduler that is gone or slow (not one that answered with an error): asked again later."""

SCHEDULER_ERRORS = (*PEER_ERRORS, RemoteError)
"""What an ask to the scheduler may fail with and a pull worker survives: it retries, or the
leases expire in the scheduler and resume elsewhere."""


@dataclass(frozen=True, kw_only=True)
class PullKnobs:
    """The timing of a pull worker's talk with its scheduler. Each kind of worker reads them
    from its own settings (:class:`~spotlight.actors.exploration.backends.ExploreSettings`,
    :class:`~spotlight.actors.scheduling.scheduler.SchedulingConfig`), which validate them."""

    pull_batch: int
    """Requests pulled at once."""
    idle_pull_s: float
    """An idle worker asks again this often (or as soon as it is woken)."""
    heartbeat_s: float
    """Held leases are renewed this often."""
    call_timeout_s: float
    """Deadline of every ask to the scheduler."""
    drain_margin_s: float
    """On a notice, time kept free before the deadline for the release and the exit."""

    @classmethod
    def read(cls, settings: _PullSettings, *, drain_margin_s: float) -> PullKnobs:
        """The knobs of ``settings`` (which names them alike), with its drain margin."""
        return cls(
            pull_batch=settings.pull_batch,
            idle_pull_s=settings.idle_pull_s,
            heartbeat_s=settings.heartbeat_s,
            call_timeout_s=settings.call_timeout_s,
            drain_margin_s=drain_margin_s,
        )


class _PullSettings(Protocol):
    """What :meth:`PullKnobs.read` takes: ExploreSettings, SchedulingConfig."""

    @property
    def pull_batch(self) -> int: ...
    @property
    def idle_pull_s(self) -> float: ...
    @property
    def heartbeat_s(self) -> float: ...
    @property
    def call_timeout_s(self) -> float: ...


class PullWorker(Actor):
    """Weight endpoints, ``drain`` and task ownership of a pulling sampler; see the map."""

    def __init__(
        self,
        *,
        scheduler: ActorRef,
        worker_id: str,
        knobs: PullKnobs,
        label: str,
        inbox: WeightInbox | None = None,
    ) -> None:
        """``label``: what logs call this worker (``explorer``, ``rollout worker``).
        ``inbox``: the chunk assembler behind ``weight_chunk`` (default: a new one)."""
        self.scheduler = scheduler
        self.worker_id = worker_id
        self.knobs = knobs
        self._label = label
        self.weights = WeightReceiver(f"{label} {worker_id}", inbox)
        self.slot = self.weights.slot
        self._wake = asyncio.Event()
        self._draining = False
        self._loop_task: asyncio.Task[None] | None = None
        self._hb_task: asyncio.Task[None] | None = None
        self._drain_report: DrainReport | None = None

    # ------------------------------------------------------------------ subclass hooks

    def _weights_policy(self) -> DiTPolicy:
        """The model a received version must fit (:func:`~spotlight.actors.weights.slot.weights_fit`)."""
        raise NotImplementedError

    def _loop(self) -> Coroutine[Any, Any, None]:
        raise NotImplementedError

    def _heartbeat(self) -> Coroutine[Any, Any, None]:
        raise NotImplementedError

    def _inflight_remaining_s(self) -> float | None:
        """Seconds the work in flight still needs (``inf``: no estimate yet); None: none."""
        raise NotImplementedError

    def _inflight_steps(self) -> int:
        """What abandoning the work in flight now throws away (0: nothing in flight)."""
        raise NotImplementedError

    def _release_snapshots(self) -> dict[str, Snapshot] | None:
        """The progress the drain's release keeps (None: none, results are idempotent)."""
        return None

    def _forget_held(self) -> None:
        """Drop what the worker holds once the drain has released it."""

    async def _after_loop_stopped(self, deadline: float) -> None:
        """Called by ``drain`` once the loop has stopped, before the release."""

    # ------------------------------------------------------------------ tasks

    def _start_tasks(self) -> None:
        """Start the loop and heartbeat tasks (from ``on_start``)."""
        loop = asyncio.get_running_loop()
        self._loop_task = loop.create_task(self._loop(), name=f"{self._label} {self.worker_id}")
        self._hb_task = loop.create_task(
            self._heartbeat(), name=f"{self._label} heartbeat {self.worker_id}"
        )
        for task in (self._loop_task, self._hb_task):
            task.add_done_callback(self._task_done)

    async def _stop_tasks(self) -> None:
        """Cancel both tasks and wait for them (from ``on_stop``)."""
        for task in (self._loop_task, self._hb_task):
            if task is not None and not task.done():
                task.cancel(f"{self._label} stopping")
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a bad request: say so loudly; the leases expire and resume elsewhere.
            log.critical("task %s crashed", task.get_name(), exc_info=task.exception())

    async def _wait_wake(self, wait_s: float) -> None:
        """Wait until woken (new weights, a drain) or ``wait_s`` has passed."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), wait_s)

    # ------------------------------------------------------------------ endpoints

    @endpoint
    async def load_weights(self, version: int, state_dict: dict[str, torch.Tensor]) -> bool:
        """Offer weights ``version`` (use ``tell``): stored at once, applied when the worker
        holds nothing it is sampling (between batches or requests).

        Returns whether it was kept (False: not newer than what this worker has). ValueError
        (naming both shapes) when the tensors do not fit this worker's model.
        """
        kept = self.weights.offer(self._weights_policy(), version, state_dict)
        if kept:
            self._wake.set()
        return kept

    @endpoint
    async def weight_chunk(
        self, version: int, manifest: WeightManifest, offset: int, chunk: torch.Tensor
    ) -> None:
        """One chunk of weights ``version`` (the publisher ``tell``s one per chunk).

        Chunks may repeat or come out of order; a version is offered to the slot when its
        last chunk is in (:class:`WeightReceiver`).
        """
        if self.weights.offer_chunk(self._weights_policy(), version, manifest, offset, chunk):
            self._wake.set()

    @endpoint
    async def drain(self, deadline: float) -> DrainReport:
        """Stop pulling; finish the work in flight only if its estimated remaining time fits
        before ``deadline`` (``time.time()``) minus ``drain_margin_s``, else abandon it;
        release every lease with the progress the worker keeps.

        Idempotent: a second call returns the first report.
        """
        if self._drain_report is not None:
            return self._drain_report
        started = time.time()
        self._draining = True
        self._wake.set()
        margin = self.knobs.drain_margin_s
        finished, abandoned = await self._stop_loop(deadline - time.time() - margin)
        await self._after_loop_stopped(deadline)
        snapshots = self._release_snapshots()
        timeout = max(0.1, deadline - time.time() - margin / 2)
        try:
            released = await self.scheduler.release.ask(self.worker_id, snapshots, timeout=timeout)
        except SCHEDULER_ERRORS as exc:
            log.warning("release by %s failed (%r): lease expiry takes over", self.worker_id, exc)
            released = -1
        self._forget_held()
        if self._hb_task is not None:  # renewed until the release was answered
            self._hb_task.cancel("drained")
        self._drain_report = DrainReport(
            worker_id=self.worker_id,
            released=released,
            snapshots={rid: s.step for rid, s in (snapshots or {}).items()},
            finished_inflight=finished,
            abandoned_steps=abandoned,
            seconds=time.time() - started,
        )
        log.warning("%s %s drained: %s", self._label, self.worker_id, self._drain_report)
        return self._drain_report

    async def _stop_loop(self, budget: float) -> tuple[bool, int]:
        """Let the loop finish the work in flight if it fits in ``budget`` seconds, else
        cancel it. (whether work in flight finished, the steps abandoned)."""
        task = self._loop_task
        if task is None or task.done():
            return False, 0
        remaining = self._inflight_remaining_s()
        fits = budget > 0 if remaining is None else max(0.0, remaining) <= budget
        finished = False
        if fits:
            await asyncio.wait({task}, timeout=max(0.0, budget))
            finished = task.done() and remaining is not None
        abandoned = 0
        if not task.done():
            abandoned = self._inflight_steps()
            task.cancel("drained: the work in flight does not fit before the deadline")
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return finished, abandoned
