"""RemoteReward: a ``RewardFn`` (``(images, prompts) -> float32 [B]``) over the reward actors.

The trainer calls its reward inside torch work that runs in a worker thread
(``TrainerLoop._torch_call``: ``rollout`` and ``validate`` call ``reward_fn`` mid-function).
So the client is a plain synchronous callable that hops onto the runtime's event loop::

    torch thread                                  event loop (the runtime's)
    RemoteReward(images, prompts)
      split into chunks of ``chunk_images``
      run_coroutine_threadsafe(_score) ─────────► roster.wait_ready(start window left)
      .result(timeout=overall bound)              one drain task per reward actor (pull):
                                                    pop a chunk ─ score.ask(timeout) ─► actor
                                                    ok: result[i]; PeerLost/Timeout/...: chunk
                                                    back to the queue, that actor retires
                                                  rounds until the queue is empty or no actor
      ◄──────────────────── results by chunk ─────┘ is left; returns what it has
      chunks without a result: computed here, in process (counted, logged)
      concatenate in chunk order ──► float32 [B]

Why pull, not round-robin: a chunk goes to whichever actor is free, so a slow or loaded
worker takes fewer chunks instead of holding a fixed share, and a failed chunk simply goes
back to the queue for the others. Chunks are small and fixed-size so that a lost worker
costs one chunk's recomputation, not the batch's.

Exactly once: every chunk has one slot; a result is written only by the ask that returned it.
An ask that timed out is cancelled by the runtime, so its late reply is dropped, never
written; the chunk is scored again elsewhere. Scores do not depend on the chunking because
every reward scores each image on its own (the ``Reward`` protocol: GenEval and OCR loop per
image), so remote scores equal in-process ones bit for bit, in the caller's order.

Bad input (``RewardInputError`` from an actor) is the caller's error, not a worker's: it is
raised here as ``ValueError`` at once, as the in-process reward would, and nothing retries.

Bounds: each ask by ``timeout_s``; the asks of one call together by ``timeout_s`` ×
(chunks + 1), past which the chunks still unscored go in process; the caller's wait by the
start window plus that plus a margin (if the loop itself stopped: everything in process). Calling from the
loop's own thread would deadlock, so it raises instead.

Data parallelism: only rank 0 has a runtime. Each DP rank scores its own shard of whole
groups (dp_trainer.py) and the rewards are all-gathered; rank 0 scores through the actors,
followers in process. Bit-identical scores keep every rank's update identical.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from spotlight.actors.rewards.actor import INPUT_ERROR
from spotlight.actors.rewards.pool import RewardRoster
from spotlight.models.rewards.batch import check_batch
from spotlight.runtime import ActorRef
from spotlight.runtime.errors import RemoteError, SpotlightError

__all__ = ["RemoteReward", "RemoteRewardStats"]

log = logging.getLogger("spotlight.actors.rewards.client")

RewardFn = Callable[[np.ndarray, list[str]], np.ndarray]

_NET_MARGIN_S = 10.0
"""Slack of the caller's wait over the coroutine's own bound."""


@dataclass
class RemoteRewardStats:
    """What the client did; cumulative since it was made."""

    calls: int = 0
    images: int = 0
    chunks: int = 0
    remote_images: int = 0
    """Images scored by reward actors."""
    local_images: int = 0
    """Images scored in process because no actor was left (or none had registered)."""
    retries: int = 0
    """Chunks re-queued after an actor failed (PeerLost, Timeout, ActorStopped, ...); that
    actor gets no more chunks of the same call."""
    seconds: float = 0.0
    """Wall seconds inside calls (caller's view: hop, transfer, scoring, fallback)."""
    last_call_s: float = 0.0
    by_worker: dict[str, int] = dataclasses.field(default_factory=dict)
    """Chunks scored per reward worker."""


@dataclass
class _Outcome:
    results: dict[int, np.ndarray]
    retries: int = 0
    by_worker: dict[str, int] = dataclasses.field(default_factory=dict)
    bad_input: str | None = None


class RemoteReward:
    """A ``RewardFn`` that scores through the reward actors of a roster; see the module map.

    Build it on the loop's thread (it remembers that loop); call it from any other thread.
    """

    def __init__(
        self,
        roster: RewardRoster,
        local: RewardFn,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        timeout_s: float = 30.0,
        chunk_images: int = 16,
        ready_within_s: Callable[[], float] = lambda: 0.0,
        on_call: Callable[[RemoteRewardStats], None] | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not isinstance(chunk_images, int) or chunk_images < 1:
            raise ValueError(f"chunk_images must be an integer >= 1, got {chunk_images!r}")
        self.roster = roster
        self.local = local
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.timeout_s = timeout_s
        self.chunk_images = chunk_images
        self._ready_within_s = ready_within_s
        self._on_call = on_call
        self._stats = RemoteRewardStats()
        self._lock = threading.Lock()

    def statistics(self) -> RemoteRewardStats:
        with self._lock:
            return dataclasses.replace(self._stats, by_worker=dict(self._stats.by_worker))

    # -- the caller's thread -----------------------------------------------------------

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            raise RuntimeError(
                "RemoteReward was called on its event loop's thread, where it would wait on "
                "itself; call it from a worker thread (asyncio.to_thread)"
            )
        check_batch(images, prompts)  # shape errors never leave the process
        t0 = time.perf_counter()
        prompts = list(prompts)
        n = len(prompts)
        chunks = [(lo, min(lo + self.chunk_images, n)) for lo in range(0, n, self.chunk_images)]
        wait_s = self._ready_within_s()
        # The coroutine bounds itself (start window + ``_rounds_cap_s``); this is the net
        # for a loop that stopped running under us.
        bound = wait_s + self._rounds_cap_s(len(chunks)) + _NET_MARGIN_S
        outcome = _Outcome(results={})
        try:
            fut = asyncio.run_coroutine_threadsafe(
                self._score(images, prompts, chunks, wait_s), self.loop
            )
        except RuntimeError as exc:  # the loop is closed: nothing remote is possible
            log.warning("reward loop unavailable (%r); scoring in process", exc)
        else:
            try:
                outcome = fut.result(timeout=bound)
            except concurrent.futures.TimeoutError:
                fut.cancel()
                log.error("remote reward call exceeded %.1f s; scoring it in process", bound)
            except concurrent.futures.CancelledError:  # the loop is shutting down
                log.warning("remote reward call cancelled by its loop; scoring in process")
        if outcome.bad_input is not None:
            raise ValueError(outcome.bad_input)
        out = np.empty(n, dtype=np.float32)
        local = 0
        for i, (lo, hi) in enumerate(chunks):
            got = outcome.results.get(i)
            if got is None:
                got = np.asarray(self.local(images[lo:hi], prompts[lo:hi]), dtype=np.float32)
                local += hi - lo
            out[lo:hi] = got
        if local:
            log.warning("%d of %d images scored in process (no reward actor left)", local, n)
        seconds = time.perf_counter() - t0
        with self._lock:
            s = self._stats
            s.calls += 1
            s.images += n
            s.chunks += len(chunks)
            s.remote_images += n - local
            s.local_images += local
            s.retries += outcome.retries
            s.seconds += seconds
            s.last_call_s = seconds
            for wid, k in outcome.by_worker.items():
                s.by_worker[wid] = s.by_worker.get(wid, 0) + k
            snapshot = dataclasses.replace(s, by_worker=dict(s.by_worker))
        if self._on_call is not None:
            self._on_call(snapshot)
        return out

    def _rounds_cap_s(self, n_chunks: int) -> float:
        """The most the asks of one call may take: every chunk once plus one failure, each
        within ``timeout_s`` (a slower call scores the rest in process)."""
        return self.timeout_s * (n_chunks + 1)

    # -- the event loop ----------------------------------------------------------------

    async def _score(
        self,
        images: np.ndarray,
        prompts: list[str],
        chunks: list[tuple[int, int]],
        wait_s: float,
    ) -> _Outcome:
        if wait_s > 0:
            await self.roster.wait_ready(wait_s)
        outcome = _Outcome(results={})
        queue = deque(range(len(chunks)))
        retired: set[ActorRef] = set()

        async def drain(wid: str, ref: ActorRef) -> None:
            while queue and outcome.bad_input is None:
                i = queue.popleft()
                lo, hi = chunks[i]
                try:
                    got = await ref.score.ask(images[lo:hi], prompts[lo:hi], timeout=self.timeout_s)
                    got = np.asarray(got, dtype=np.float32)
                    if got.shape != (hi - lo,):
                        raise SpotlightError(f"{ref!r} answered shape {got.shape} for {hi - lo}")
                except RemoteError as exc:
                    if exc.type_name == INPUT_ERROR:
                        outcome.bad_input = exc.message
                        queue.clear()
                        return
                    self._retire(outcome, queue, retired, i, ref, exc)
                    return
                except (SpotlightError, TimeoutError, ConnectionError) as exc:
                    self._retire(outcome, queue, retired, i, ref, exc)
                    return
                outcome.results[i] = got
                outcome.by_worker[wid] = outcome.by_worker.get(wid, 0) + 1

        try:
            async with asyncio.timeout(self._rounds_cap_s(len(chunks))):
                while queue and outcome.bad_input is None:
                    actors = [(w, r) for w, r in self.roster.actors() if r not in retired]
                    if not actors:
                        break
                    async with asyncio.TaskGroup() as tg:
                        for wid, ref in actors:
                            tg.create_task(drain(wid, ref))
        except TimeoutError:
            log.error(
                "reward actors took over %.1f s for one call; %d chunk(s) go in process",
                self._rounds_cap_s(len(chunks)),
                len(chunks) - len(outcome.results),
            )
        return outcome

    @staticmethod
    def _retire(
        outcome: _Outcome,
        queue: deque[int],
        retired: set[ActorRef],
        i: int,
        ref: ActorRef,
        exc: BaseException,
    ) -> None:
        """Chunk ``i`` back to the front of the queue; ``ref`` gets no more of this call."""
        queue.appendleft(i)
        retired.add(ref)
        outcome.retries += 1
        log.warning("reward actor %r failed (%r); its chunk is retried", ref, exc)
