"""Combining sources: the first notice wins, the others are cancelled cleanly.

Data flow::

    source.wait() --+                       (one task per source, each polling or
    source.wait() --+--> first_notice() ---> waiting on a signal; all cancelled and
    stop.wait()   --+        |                awaited before first_notice returns)
                             v
                     NoticeWatcher task ---> await on_notice(notice)   (once)

``first_notice`` owns its tasks: when it returns, raises or is cancelled, every
task it started has finished. ``NoticeWatcher`` owns one task running
``first_notice`` and then the callback; ``close()`` cancels it (with a reason)
and waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from spotlight.runtime.notice._core import NoticeSource, PreemptionNotice, SourceStatistics

__all__ = ["NoticeWatcher", "WatcherStatistics", "first_notice"]

log = logging.getLogger("spotlight.runtime.notice")


async def first_notice(
    sources: Sequence[NoticeSource], *, stop: asyncio.Event | None = None
) -> PreemptionNotice | None:
    """Wait for the first source to fire and return its notice.

    Returns ``None`` if ``stop`` is set first (a notice that arrives in the same
    loop iteration as ``stop`` is still returned). With no sources and no
    ``stop`` it waits until cancelled. A source that raises (a configuration
    error: sources retry transient ones themselves) makes this raise the same
    error, after the other sources were cancelled.
    """
    names: dict[asyncio.Task[Any], str] = {}
    try:
        for source in sources:
            names[asyncio.create_task(source.wait(), name=f"notice-{source.name}")] = source.name
        stop_task = None
        if stop is not None:
            stop_task = asyncio.create_task(stop.wait(), name="notice-stop")
            names[stop_task] = "stop"
        if not names:
            await asyncio.Future()  # nothing can ever fire: wait for cancellation
        done, _ = await asyncio.wait(names, return_when=asyncio.FIRST_COMPLETED)
        for task in names:  # in source order; a notice wins over stop
            if task in done and task is not stop_task:
                notice: PreemptionNotice = task.result()  # raises if the source failed
                return notice
        return None
    finally:
        pending = [t for t in names if not t.done()]
        for task in pending:
            task.cancel("notice watching finished")
        if pending:
            # asyncio.wait never raises the tasks' errors; a cancel of *this* task still
            # propagates (the cancelled children then finish on their own).
            await asyncio.wait(pending)
            for task in pending:
                if not task.cancelled() and task.exception() is not None:
                    log.error(
                        "notice source %s failed while being cancelled",
                        names[task],
                        exc_info=task.exception(),
                    )


@dataclass(frozen=True, slots=True)
class WatcherStatistics:
    """What a :class:`NoticeWatcher` has done so far (read by the monitor and tests)."""

    running: bool
    notice: PreemptionNotice | None
    polls: int
    errors: int
    last_error: str | None
    """The most recent error over all sources, prefixed with the source's name."""
    callback_error: str | None
    sources: dict[str, SourceStatistics] = field(default_factory=dict)


class NoticeWatcher:
    """Watches ``sources`` in a background task and calls ``on_notice`` once.

    Use ``async with NoticeWatcher(sources, on_notice):`` or ``start()`` /
    ``close()``. The callback runs inside the watcher's task, so ``close()``
    during the callback cancels it; an exception from the callback is logged
    and kept in ``statistics().callback_error``, never raised into the loop.
    A source that raises (a configuration error) ends the watcher: logged, kept
    in ``statistics().last_error``, and re-raised by :meth:`wait`.
    """

    def __init__(
        self,
        sources: Sequence[NoticeSource],
        on_notice: Callable[[PreemptionNotice], Awaitable[None]],
    ) -> None:
        self.sources = list(sources)
        self._on_notice = on_notice
        self._task: asyncio.Task[PreemptionNotice | None] | None = None
        self._notice: PreemptionNotice | None = None
        self._callback_error: str | None = None
        self._failure: str | None = None

    @property
    def notice(self) -> PreemptionNotice | None:
        """The notice, once one fired."""
        return self._notice

    def start(self) -> None:
        """Start watching in the running loop (at most once)."""
        if self._task is not None:
            raise RuntimeError("NoticeWatcher.start() called twice")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="notice-watcher")

    async def wait(self) -> PreemptionNotice | None:
        """Wait until the watcher ends: the notice (after the callback), or ``None`` if closed."""
        if self._task is None:
            raise RuntimeError("NoticeWatcher.wait() before start()")
        try:
            return await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if self._task.cancelled():
                return None
            raise

    async def close(self) -> None:
        """Stop watching; wait for the background task to finish. Idempotent."""
        task = self._task
        if task is None or task.done() or task is asyncio.current_task():
            return
        task.cancel("NoticeWatcher closed")
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def __aenter__(self) -> NoticeWatcher:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def acknowledge(self) -> bool:
        """Tell the cloud we are ready to go, where it listens (Azure); ``True`` if sent.

        Optional: lets the platform proceed before the deadline. Raises the
        source's error when the acknowledgement fails.
        """
        notice = self._notice
        if notice is None:
            return False
        for source in self.sources:
            ack = getattr(source, "acknowledge", None)
            if source.name == notice.source and ack is not None and notice.event_id:
                await ack(notice)
                return True
        return False

    def statistics(self) -> WatcherStatistics:
        per_source = {s.name: s.statistics() for s in self.sources}
        last: tuple[float, str] | None = None
        for name, st in per_source.items():
            if (
                st.last_error is not None
                and st.last_error_at is not None
                and (last is None or st.last_error_at >= last[0])
            ):
                last = (st.last_error_at, f"{name}: {st.last_error}")
        last_error = self._failure or (last[1] if last else None)
        return WatcherStatistics(
            running=self._task is not None and not self._task.done(),
            notice=self._notice,
            polls=sum(st.polls for st in per_source.values()),
            errors=sum(st.errors for st in per_source.values()),
            last_error=last_error,
            callback_error=self._callback_error,
            sources=per_source,
        )

    async def _run(self) -> PreemptionNotice | None:
        try:
            notice = await first_notice(self.sources)
        except Exception as exc:
            self._failure = f"watcher stopped: {exc!r}"
            log.exception("notice watcher stopped: a source failed")
            raise
        self._notice = notice
        if notice is None:  # pragma: no cover - no stop event is passed
            return None
        started = time.monotonic()
        try:
            await self._on_notice(notice)
        except Exception as exc:
            self._callback_error = repr(exc)
            log.exception("notice callback failed for %s", notice)
        else:
            log.info("notice callback finished in %.3f s", time.monotonic() - started)
        return notice
