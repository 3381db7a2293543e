"""The Monitor actor: the one place every metric lands, is kept, written and served.

Map::

    MetricsPublisher (each actor) ──tell records(batch)──► Monitor ──► MonitorStore.apply
                                                              │          (latest per topic/source,
                                                              │           bounded histories)
                                                              ├──► JsonlWriter: RUN_DIR/metrics.jsonl
                                                              ├──► Tracker: TensorBoard, W&B
                                                              │    (optional; tracking.py)
    spotlight monitor --attach ──stream subscribe()──────────┤  MonitorState every ``every_s``
    anyone ─────────────────────ask snapshot()───────────────┘  (coalesced; keepalive when idle)

What waits on what: ``records`` is a short mailbox handler (dict updates and one flushed
line per record); it never waits on a subscriber. ``snapshot`` and ``subscribe`` are
*concurrent* endpoints so a slow viewer never sits in the mailbox: a subscriber's
generator waits for a change (or ``keepalive_s``) and then for the stream's credit, so a
slow consumer only sees fewer, fresher states. Publishers never wait on the monitor
(see ``metrics.py``). The tracker gets each batch right after the file does, on the
loop (a TensorBoard write is a queue append; W&B's ``log`` hands off to its own process);
its backends are opened and closed in a worker thread, since W&B starts a service.
Shutdown: ``on_stop`` closes the file and the tracker; open streams end with the actor
(their consumers get ``ActorStopped``/``PeerLost``).

:class:`MonitorStore` is the pure part (no actor, no loop) and is tested directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from spotlight.actors.monitor.metrics import JsonlWriter, MetricRecord, runtime_fields
from spotlight.actors.monitor.tracking import Tracker, TrackingConfig
from spotlight.runtime import Actor, endpoint
from spotlight.runtime.codec import register_wire_type

__all__ = ["MONITOR_NAME", "Monitor", "MonitorConfig", "MonitorState", "MonitorStore"]

log = logging.getLogger("spotlight.actors.monitor.actor")

MONITOR_NAME = "monitor"
"""The name the monitor actor is spawned under, by convention (``spotlight monitor --name``)."""
HISTORY_TOPICS: tuple[str, ...] = ("trainer", "validation", "preemption", "exploration", "cost")
"""Topics whose every record (scalar fields only) is kept in a bounded history."""


@dataclass(frozen=True, kw_only=True)
class MonitorConfig:
    """What the monitor keeps, where it writes, how often it pushes states."""

    run_dir: str | None = None
    """Directory of ``metrics.jsonl``; None keeps metrics in memory only."""
    history_len: int = 512
    """Records kept per history topic (reward curve, validation points, preemptions)."""
    max_sources_per_topic: int = 4096
    """Rows kept per topic; the least recently updated source is forgotten beyond it."""
    keepalive_s: float = 5.0
    """A subscriber gets a state at least this often even when nothing changed (so its
    per-item stream deadline does not fire on a quiet cluster)."""
    min_every_s: float = 0.05
    """Floor of a subscriber's ``every_s`` (protects the monitor from busy viewers)."""
    self_report_s: float | None = 2.0
    """Period at which the monitor records its own runtime's actors (topic ``runtime``),
    so the view lists the actors of its node with no publisher; None turns it off."""
    node_id: str | None = None
    """Source name of those records (default: the runtime's address)."""
    tracking: TrackingConfig | None = None
    """Relay every record to TensorBoard / W&B as well (tracking.py); None: no tracker."""

    def __post_init__(self) -> None:
        for name in ("history_len", "max_sources_per_topic"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name}={value!r} must be an int >= 1")
        for name in ("keepalive_s", "min_every_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0 seconds")
        if self.self_report_s is not None and not self.self_report_s > 0:
            raise ValueError(f"self_report_s={self.self_report_s!r} must be > 0 seconds or None")


@register_wire_type(name="spotlight.MonitorState")
@dataclass(frozen=True, kw_only=True)
class MonitorState:
    """A self-contained copy of what the monitor knows; what the view draws.

    ``latest[topic][source]`` is ``{"time": t, "fields": {...}}`` of the newest record;
    ``history[topic]`` is a list of ``{"time", "source", "fields"}`` (scalar fields only),
    oldest first.
    """

    time: float
    """Monitor wall clock when this copy was taken."""
    started_at: float
    run_dir: str | None
    version: int
    """Increments with every applied batch (a viewer can tell whether anything changed)."""
    records: int
    records_by_topic: dict[str, int]
    latest: dict[str, dict[str, dict[str, Any]]]
    history: dict[str, list[dict[str, Any]]]
    publisher_drops: dict[str, int]
    """Records each publisher dropped before they reached us (its own count)."""
    rejected: int = 0
    """Malformed items received (not ``MetricRecord``) and ignored."""
    write_errors: int = 0
    subscribers: int = 0

    @classmethod
    def empty(cls, *, now: float | None = None) -> MonitorState:
        t = time.time() if now is None else now
        return cls(
            time=t,
            started_at=t,
            run_dir=None,
            version=0,
            records=0,
            records_by_topic={},
            latest={},
            history={},
            publisher_drops={},
        )

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest without the histories (one line per update in ``--json``)."""
        return {
            "time": round(self.time, 3),
            "version": self.version,
            "records": self.records,
            "records_by_topic": self.records_by_topic,
            "publisher_drops": self.publisher_drops,
            "latest": {
                topic: {src: e["fields"] for src, e in rows.items()}
                for topic, rows in self.latest.items()
            },
            "history_len": {topic: len(h) for topic, h in self.history.items()},
        }


def _scalars(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is None or isinstance(v, bool | int | float | str)}


class MonitorStore:
    """Latest record per (topic, source) plus bounded histories. Pure: no I/O, no loop."""

    def __init__(
        self, config: MonitorConfig | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config or MonitorConfig()
        self._clock = clock
        self.started_at = clock()
        self.version = 0
        self.records = 0
        self.rejected = 0
        self.records_by_topic: dict[str, int] = {}
        self.latest: dict[str, dict[str, dict[str, Any]]] = {}
        self.history: dict[str, deque[dict[str, Any]]] = {}
        self.publisher_drops: dict[str, int] = {}

    def apply(self, records: Iterable[Any], *, publisher: str = "", dropped: int = 0) -> int:
        """Take a batch; returns how many were valid records. Never raises on bad items."""
        taken = 0
        limit = self.config.max_sources_per_topic
        for rec in records:
            if not isinstance(rec, MetricRecord) or not isinstance(rec.fields, dict):
                self.rejected += 1
                continue
            taken += 1
            rows = self.latest.setdefault(rec.topic, {})
            rows.pop(rec.source, None)  # re-insert: dict order = least recently updated first
            rows[rec.source] = {"time": rec.time, "fields": rec.fields}
            if len(rows) > limit:
                del rows[next(iter(rows))]
            self.records_by_topic[rec.topic] = self.records_by_topic.get(rec.topic, 0) + 1
            if rec.topic in HISTORY_TOPICS:
                hist = self.history.get(rec.topic)
                if hist is None:
                    hist = self.history[rec.topic] = deque(maxlen=self.config.history_len)
                hist.append(
                    {"time": rec.time, "source": rec.source, "fields": _scalars(rec.fields)}
                )
        self.records += taken
        if publisher and isinstance(dropped, int) and dropped > 0:
            self.publisher_drops[publisher] = dropped
        if taken or dropped:
            self.version += 1
        return taken

    def snapshot(
        self, *, run_dir: str | None = None, write_errors: int = 0, subscribers: int = 0
    ) -> MonitorState:
        """A copy safe to hand out (entries are replaced on update, never mutated)."""
        return MonitorState(
            time=self._clock(),
            started_at=self.started_at,
            run_dir=run_dir,
            version=self.version,
            records=self.records,
            records_by_topic=dict(self.records_by_topic),
            latest={topic: dict(rows) for topic, rows in self.latest.items()},
            history={topic: list(h) for topic, h in self.history.items()},
            publisher_drops=dict(self.publisher_drops),
            rejected=self.rejected,
            write_errors=write_errors,
            subscribers=subscribers,
        )


@dataclass
class _Pulse:
    """Wakes every waiting subscriber once per change (a fresh event each time)."""

    event: asyncio.Event = field(default_factory=asyncio.Event)

    def fire(self) -> None:
        self.event.set()
        self.event = asyncio.Event()


class Monitor(Actor):
    """Receives :class:`MetricRecord` batches; serves ``snapshot`` and ``subscribe``.

    Spawn it with a :class:`MonitorConfig`; publishers find it by name (``"monitor"`` by
    convention) through the coordinator or ``Runtime.lookup``.
    """

    def __init__(self, config: MonitorConfig | None = None) -> None:
        self.config = config or MonitorConfig()
        self.store = MonitorStore(self.config)
        self.writer: JsonlWriter | None = None
        self.subscribers = 0
        self._pulse: _Pulse | None = None
        self._reporter: asyncio.Task[None] | None = None
        self.tracker: Tracker | None = None

    async def on_start(self) -> None:
        self._pulse = _Pulse()
        if self.config.run_dir is not None:
            self.writer = JsonlWriter.for_run_dir(self.config.run_dir)
            log.info("monitor writes metrics to %s", self.writer.path)
        tracking = self.config.tracking
        if tracking is not None and tracking.enabled:
            from spotlight.actors.monitor.tracking_backends import open_backends

            backends = await asyncio.to_thread(open_backends, tracking)
            self.tracker = Tracker(tracking, backends)
        if self.config.self_report_s is not None:
            self._reporter = self.runtime.create_task(
                self._report_runtime(self.config.self_report_s), name=f"{self.name}.self-report"
            )

    async def on_stop(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel(msg="monitor stopped")
            self._reporter = None
        if self.writer is not None:
            self.writer.close()
        if self.tracker is not None:
            await asyncio.to_thread(self.tracker.close)
        if self._pulse is not None:
            self._pulse.fire()

    @endpoint
    async def records(self, batch: list[MetricRecord], source: str = "", dropped: int = 0) -> None:
        """A publisher's batch (told); ``dropped`` is its cumulative drop count."""
        if not isinstance(batch, list):
            self.store.rejected += 1
            return
        self._take(batch, source, dropped)

    @endpoint(concurrent=True)
    async def snapshot(self) -> MonitorState:
        """The current state (ask)."""
        return self._state()

    @endpoint(concurrent=True)
    async def subscribe(self, every_s: float = 0.5) -> AsyncIterator[MonitorState]:
        """States: one now, then after each change at most every ``every_s`` seconds, and
        at least every ``keepalive_s``. Ends when the consumer leaves or the actor stops."""
        if not isinstance(every_s, int | float) or not every_s >= 0:
            raise ValueError(f"every_s={every_s!r} must be a number >= 0 seconds")
        every = max(float(every_s), self.config.min_every_s)
        loop = asyncio.get_running_loop()
        self.subscribers += 1
        try:
            last_version = -1
            while True:
                assert self._pulse is not None, "on_start ran"
                waiter = self._pulse.event
                if self.store.version == last_version:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(waiter.wait(), self.config.keepalive_s)
                state = self._state()
                last_version = state.version
                sent_at = loop.time()
                yield state
                rest = every - (loop.time() - sent_at)
                if rest > 0:
                    await asyncio.sleep(rest)  # rate limit: coalesce bursts into one state
        finally:
            self.subscribers -= 1

    @endpoint(concurrent=True)
    async def statistics(self) -> dict[str, Any]:
        """Counters for tests and the runtime view."""
        return {
            "records": self.store.records,
            "rejected": self.store.rejected,
            "version": self.store.version,
            "subscribers": self.subscribers,
            "lines_written": self.writer.lines if self.writer else 0,
            "write_errors": self.writer.errors if self.writer else 0,
            "metrics_file": str(self.writer.path) if self.writer else None,
            "tracking": self.tracker.statistics() if self.tracker else None,
        }

    async def _report_runtime(self, period_s: float) -> None:
        """Record this node's runtime (its actors) every ``period_s``, as a publisher would."""
        source = self.config.node_id or self.runtime.address
        while True:
            record = MetricRecord(
                time=time.time(),
                source=source,
                topic="runtime",
                fields=runtime_fields(self.runtime),
            )
            self._take([record])
            await asyncio.sleep(period_s)

    def _take(self, batch: list[Any], source: str = "", dropped: int = 0) -> None:
        self.store.apply(batch, publisher=source, dropped=dropped)
        records = [r for r in batch if isinstance(r, MetricRecord)]
        if self.writer is not None:
            self.writer.write_many(records)
        if self.tracker is not None:
            self.tracker.write(records)
        if self._pulse is not None:
            self._pulse.fire()

    def _state(self) -> MonitorState:
        return self.store.snapshot(
            run_dir=self.config.run_dir,
            write_errors=self.writer.errors if self.writer else 0,
            subscribers=self.subscribers,
        )
