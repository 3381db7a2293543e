"""The notice record, the source protocol, and what every polling source shares.

Every source obeys one contract: ``await source.wait()`` returns exactly one
:class:`PreemptionNotice` when the node is told it will go away, may be cancelled
at any time, and never raises for a transient failure (timeouts, refused
connections, malformed answers): those are counted, logged once per kind of error
(see :class:`ErrorLog`) and retried on the next poll. A malformed answer is never
read as a notice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol, runtime_checkable

from spotlight.runtime.notice._http import MetadataError

__all__ = [
    "ErrorLog",
    "NoticeSource",
    "PollingSource",
    "PreemptionNotice",
    "SourceStatistics",
    "make_notice",
    "parse_timestamp",
]

log = logging.getLogger("spotlight.runtime.notice")


@dataclass(frozen=True, kw_only=True)
class PreemptionNotice:
    """The node was told it will be taken away."""

    source: str
    """Name of the source that saw it ("signal", "file", "aws", "gcp", "azure")."""
    received_at: float
    """``time.time()`` when this process saw the notice."""
    deadline: float | None
    """Absolute ``time.time()`` by which the node is gone; ``None`` = unknown. Never
    earlier than ``received_at`` (a deadline already past is clamped; ``detail`` says so)."""
    detail: str
    """Human-readable account: what was seen and how the deadline was derived."""
    event_id: str | None = None
    """The cloud's id for the event where it has one (Azure ``EventId``), for acknowledging."""

    def time_left(self, now: float | None = None) -> float | None:
        """Seconds until the deadline (0 when past), or ``None`` when unknown."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - (time.time() if now is None else now))


def make_notice(
    *,
    source: str,
    received_at: float,
    deadline: float | None,
    detail: str,
    event_id: str | None = None,
) -> PreemptionNotice:
    """Build a notice, clamping a deadline that already passed to ``received_at``.

    A past deadline still means "leave now": dropping it would lose the notice.
    """
    if deadline is not None and deadline < received_at:
        late = received_at - deadline
        detail = (
            f"{detail}; deadline {_iso(deadline)} had already passed {late:.1f} s "
            "before the notice was seen, clamped to now"
        )
        deadline = received_at
    log.warning("preemption notice from %s: %s", source, detail)
    return PreemptionNotice(
        source=source, received_at=received_at, deadline=deadline, detail=detail, event_id=event_id
    )


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_timestamp(text: str) -> float:
    """Parse an ISO 8601 (``2026-11-23T13:20:00Z``) or RFC 1123 (``Mon, 23 Nov 2026
    13:20:00 GMT``, Azure's ``NotBefore``) time into ``time.time()`` seconds.

    A time without a zone is taken as UTC (all three clouds write UTC).
    Raises ``ValueError`` when neither format matches.
    """
    text = text.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"not an ISO 8601 or RFC 1123 time: {text[:80]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass(slots=True)
class SourceStatistics:
    """Counters a source keeps; :class:`NoticeWatcher` aggregates them."""

    polls: int = 0
    """Completed polls (answered or failed); a signal source counts 0."""
    errors: int = 0
    """Polls that failed (network, protocol, malformed answer)."""
    last_error: str | None = None
    last_error_at: float | None = None
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    def copy(self) -> SourceStatistics:
        return SourceStatistics(
            polls=self.polls,
            errors=self.errors,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            errors_by_kind=dict(self.errors_by_kind),
        )


@runtime_checkable
class NoticeSource(Protocol):
    """Something that tells us the node is about to be preempted."""

    name: str

    async def wait(self) -> PreemptionNotice:
        """Return once, when a notice is seen; cancellable; retries transient errors."""
        ...

    def statistics(self) -> SourceStatistics:
        """A snapshot of this source's counters."""
        ...


class ErrorLog:
    """Counts failures and logs them rate-limited: one line per kind, not per poll.

    The first failure of a kind is logged at WARNING; repeats of that kind are
    logged again at most every ``repeat_s`` seconds (with how many were folded
    in), so a node that is simply not on this cloud writes one line, not one per
    poll. Recovery after a run of failures is logged once at INFO under the same
    limit.
    """

    def __init__(self, source: str, stats: SourceStatistics, *, repeat_s: float) -> None:
        self._source = source
        self._stats = stats
        self._repeat_s = repeat_s
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._failing = 0

    def record(self, kind: str, message: str, *, exc_info: bool = False) -> None:
        now = time.monotonic()
        stats = self._stats
        stats.errors += 1
        stats.last_error = f"{kind}: {message}"
        stats.last_error_at = time.time()
        stats.errors_by_kind[kind] = stats.errors_by_kind.get(kind, 0) + 1
        self._failing += 1
        if self._should_log(kind, now):
            folded = self._suppressed.pop(kind, 0)
            extra = f" ({folded} more since last logged)" if folded else ""
            log.warning(
                "notice source %s: %s%s; retrying (repeats of '%s' logged at most every %g s)",
                self._source,
                message,
                extra,
                kind,
                self._repeat_s,
                exc_info=exc_info,
            )
        else:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1

    def ok(self) -> None:
        if self._failing and self._should_log("(recovered)", time.monotonic()):
            log.info(
                "notice source %s: answering again after %d failed polls",
                self._source,
                self._failing,
            )
        self._failing = 0

    def _should_log(self, kind: str, now: float) -> bool:
        last = self._last_logged.get(kind)
        if last is not None and now - last < self._repeat_s:
            return False
        self._last_logged[kind] = now
        return True


class PollingSource:
    """Base for sources that ask something every ``poll_interval_s`` seconds.

    Subclasses implement :meth:`poll`, returning a notice or ``None`` and raising
    :class:`MetadataError` for a failed poll. Poll *starts* are spaced at least
    ``poll_interval_s`` apart whatever the poll took (so a server that ignores a
    long-poll option cannot turn the loop into a busy loop).
    """

    name: str = "polling"

    def __init__(self, *, poll_interval_s: float, log_repeat_s: float = 300.0) -> None:
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s={poll_interval_s!r} must be > 0")
        self.poll_interval_s = poll_interval_s
        self._stats = SourceStatistics()
        self._errors = ErrorLog(self.name, self._stats, repeat_s=log_repeat_s)

    def statistics(self) -> SourceStatistics:
        return self._stats.copy()

    async def poll(self) -> PreemptionNotice | None:
        raise NotImplementedError

    async def wait(self) -> PreemptionNotice:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                notice = await self.poll()
            except MetadataError as exc:
                self._stats.polls += 1
                self._errors.record(exc.kind, exc.message)
            except Exception as exc:  # a bug or a shape we did not foresee: keep watching
                self._stats.polls += 1
                self._errors.record(
                    f"unexpected {type(exc).__name__}", f"unexpected error: {exc!r}", exc_info=True
                )
            else:
                self._stats.polls += 1
                self._errors.ok()
                if notice is not None:
                    return notice
            await asyncio.sleep(self.next_poll_delay(loop.time() - started))

    def next_poll_delay(self, elapsed: float) -> float:
        """Seconds to wait before the next poll, given how long this one took."""
        return max(0.0, self.poll_interval_s - elapsed)
