"""LoopSocket: a plain ZeroMQ socket driven by the event loop's reader callback.

Why not ``zmq.asyncio``: every received message there costs a future, a few callbacks
and one task step of the loop that awaits it (the router loop, a connection loop),
before the message even reaches the actor's mailbox or the caller's future. Here the
event loop calls :meth:`LoopSocket._on_ready` when ZeroMQ's notification fd fires; it
drains the socket with ``NOBLOCK`` (at most ``batch`` messages per loop step, so a
flood cannot starve other callbacks) and hands each message to ``on_message``
synchronously, which resolves a caller's future or queues an envelope directly.

ZeroMQ's fd is edge-triggered and only says "something changed": a send can consume
the edge of an arriving message, so after sends we schedule one drain for the next loop
step (at most one is pending, so a burst of sends costs one extra callback). Sends never block: ``NOBLOCK`` first; on a full queue
(high-water mark) the sender waits, FIFO, for ``POLLOUT``, under the caller's deadline.

Shutdown: :meth:`close` removes the reader, fails waiting senders with ``error`` and
closes the socket with linger 0; afterwards ``send`` raises and nothing reads.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import zmq
from zmq.backend import Socket as _Backend

__all__ = ["LoopSocket"]

log = logging.getLogger("spotlight.runtime")

# pyzmq's Python-level send_multipart/recv_multipart cost several microseconds a message
# (flag enums, per-frame checks); the backend calls with plain int flags cost well under
# one. Multipart atomicity still holds: only the first part of a message can hit EAGAIN.
_send = _Backend.send
_recv = _Backend.recv
_getsockopt = _Backend.get
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLOUT = int(zmq.POLLOUT)


class LoopSocket:
    """One ZeroMQ socket; ``on_message(frames)`` is called on the loop for each message."""

    def __init__(
        self,
        sock: zmq.Socket[Any],
        on_message: Callable[[list[zmq.Frame]], None],
        *,
        batch: int = 256,
    ) -> None:
        self.sock = sock
        self.on_message = on_message
        self.batch = batch
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self._writers: deque[asyncio.Future[None]] = deque()
        self._drain_scheduled = False
        self._fd = cast(int, sock.get(zmq.FD))
        self.loop.add_reader(self._fd, self._on_ready)
        self._schedule_drain()  # messages may have arrived before the reader was added

    # -- receiving ------------------------------------------------------------------

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled and not self.closed:
            self._drain_scheduled = True
            self.loop.call_soon(self._on_ready)

    def _on_ready(self) -> None:
        self._drain_scheduled = False
        if self.closed:
            return
        sock = self.sock
        on_message = self.on_message
        for _ in range(self.batch):
            try:
                frame = _recv(sock, _NOBLOCK, False, False)
            except zmq.Again:
                break
            frames = [frame]
            while frame.more:
                frame = _recv(sock, _NOBLOCK, False, False)
                frames.append(frame)
            try:
                on_message(frames)
            except Exception:  # never let one message wedge an edge-triggered socket
                log.exception("message handler failed; the message is dropped")
            if self.closed:  # the message made the owner close us
                return
        else:
            self._schedule_drain()  # more may wait: continue after other callbacks
        if self._writers and cast(int, _getsockopt(sock, _EVENTS)) & _POLLOUT:
            self._wake_writer()

    def _wake_writer(self) -> None:
        while self._writers:
            fut = self._writers.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    # -- sending --------------------------------------------------------------------

    def send_nowait(self, frames: Sequence[Any]) -> bool:
        """Queue ``frames`` at once if the socket has room (and nobody waits before us)."""
        if self.closed:
            raise zmq.ZMQError(zmq.ENOTSOCK, "socket closed")
        return not self._writers and self._try_send(frames)

    def _try_send(self, frames: Sequence[Any]) -> bool:
        """``bytes`` frames are copied (small); memoryviews (big tensors) go zero-copy."""
        sock = self.sock
        last = len(frames) - 1
        try:
            for i, frame in enumerate(frames):
                _send(sock, frame, _NOBLOCK if i == last else _NOBLOCK_MORE,
                      type(frame) is bytes, False)  # fmt: skip
        except zmq.Again:
            assert i == 0, "ZeroMQ queues the parts of a message atomically"
            return False
        self._schedule_drain()  # the send may have eaten the fd's edge for input
        return True

    async def send(self, frames: Sequence[Any]) -> None:
        """Queue ``frames``; waits (FIFO) for room. The caller adds the deadline."""
        if self.send_nowait(frames):
            return
        first = False
        while True:
            fut: asyncio.Future[None] = self.loop.create_future()
            if first:
                self._writers.appendleft(fut)  # woken but still no room: keep our turn
            else:
                self._writers.append(fut)
            self._schedule_drain()  # re-check POLLOUT now: the edge may be gone
            try:
                await fut
            except BaseException:
                if fut in self._writers:
                    self._writers.remove(fut)
                elif fut.done() and not fut.cancelled() and fut.exception() is None:
                    self._wake_writer()  # woken just as we gave up: pass the turn on
                raise
            if self.closed:
                raise zmq.ZMQError(zmq.ENOTSOCK, "socket closed")
            if self._try_send(frames):
                break
            first = True
        if self._writers:  # let the next waiter try after us
            self._schedule_drain()

    # -- closing --------------------------------------------------------------------

    def close(self, error: BaseException | None = None, *, linger: int = 0) -> None:
        """Stop reading, fail waiting senders, close (``linger`` ms to flush). Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self._fd)
        exc = error or zmq.ZMQError(zmq.ENOTSOCK, "socket closed")
        while self._writers:
            fut = self._writers.popleft()
            if not fut.done():
                fut.set_exception(exc)
        self.sock.close(linger=linger)
