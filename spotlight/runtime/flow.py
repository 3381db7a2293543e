"""Credits: the sender-side half of back-pressure, one pool per (peer, actor).

A sender takes one credit per message before handing it to the transport and gets
it back when the receiver has *processed* the message (``tell``: a ``credit`` message
from the receiver; ``ask``/``stream``: when the call finishes). With ``window``
credits, at most ``window`` messages from one sender wait in one actor's mailbox, so
a fast teller blocks in ``tell`` instead of growing the receiver's memory.
"""

from __future__ import annotations

import asyncio
from collections import deque

from spotlight.runtime.errors import Timeout

__all__ = ["Credits"]


class Credits:
    """A counting gate with FIFO waiters that can be failed all at once."""

    def __init__(self, window: int) -> None:
        assert window >= 1, "credit window must be positive"
        self.window = window
        self.available = window
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._error: BaseException | None = None

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def try_acquire(self) -> bool:
        """Take one credit if one is free and nobody waits (the fast path); never waits."""
        if self._error is None and self.available > 0 and not self._waiters:
            self.available -= 1
            return True
        return False

    async def acquire_within(self, seconds: float, what: str) -> None:
        """:meth:`acquire` under a deadline: ``Timeout`` naming ``what`` when none frees up."""
        try:
            async with asyncio.timeout(seconds):
                await self.acquire()
        except TimeoutError:
            raise Timeout(f"no send credit for {what} within {seconds}s") from None

    async def acquire(self) -> None:
        """Take one credit, waiting (FIFO) if none is left. The caller adds a deadline."""
        if self._error is not None:
            raise self._error
        if self.available > 0 and not self._waiters:
            self.available -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(1)  # granted just as we were cancelled: hand it on
            raise
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    def release(self, n: int = 1) -> None:
        """Return ``n`` credits, waking waiters in order."""
        self.available += n
        while self.available > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                self.available -= 1
                fut.set_result(None)

    def fail(self, error: BaseException) -> None:
        """Wake every waiter with ``error`` and refuse future acquires (peer gone)."""
        self._error = error
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(error)
