"""Metrics: the record every actor publishes, the publisher that never blocks, the file.

Map::

    actor code ── publish(topic, **fields) ──► MetricsPublisher ring (bounded, sync append)
                                                  │ sender task: drains up to ``batch_size``
                                                  ▼ records, one ``tell`` per batch
                                   Monitor.records(batch, dropped) ──► state + metrics.jsonl

Why a ring and a task instead of ``await monitor.record.tell(...)`` in the caller: a
``tell`` waits for a send credit, so a slow or dead monitor would stall the trainer. Here
``publish`` is a plain function that appends to a bounded deque and returns; when the
deque is full the *oldest* record is dropped (the monitor cares most about the latest
state) and counted. The sender task waits on the monitor (each ``tell`` bounded by
``send_timeout_s``); a batch it cannot deliver is dropped and counted, and it backs off
``retry_s`` before the next try. Every drop is visible in :meth:`MetricsPublisher.statistics`
and the cumulative count travels with each batch, so the monitor shows it too.

Use in an actor::

    async def on_start(self) -> None:
        monitor = await self.runtime.lookup(coordinator_address, "monitor", timeout=10.0)
        self.metrics = MetricsPublisher(monitor, source=self.name, runtime=self.runtime)

    async def on_stop(self) -> None:
        await self.metrics.close()

    ...  self.metrics.publish_record(ValidationRecord(iteration=k, score=s, spread=d, val_s=t))
    ...  self.metrics.publish("reward_pool", **stats)   # a topic without a record

One record per event or per period (a preemption is one record, sent when its outcome is
known); with several data-parallel ranks only rank 0 publishes ``trainer``.

Topics: ``records.py`` declares one typed record per topic the view, the event lines and
the trackers read (``publish_record(TrainerRecord(...))``); ``publish`` checks the fields of
those topics against their record and raises ``ValueError`` naming what is wrong. Other
well-formed topics (e.g. ``reward_pool``) are kept and written as they come.

Field values must be plain (None, bool, int, float, str, and lists/dicts of them);
:func:`plain` converts dataclasses, mappings, tuples, numpy and 0-d torch values, and turns
non-finite floats into None so every line is strict JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from spotlight.actors.monitor.records import RECORDS, Record, check_fields
from spotlight.runtime.codec import register_wire_type
from spotlight.runtime.errors import SpotlightError

if TYPE_CHECKING:
    from spotlight.runtime import ActorRef
    from spotlight.runtime.actor import ActorHost

__all__ = [
    "KNOWN_TOPICS",
    "METRICS_FILE",
    "JsonlWriter",
    "MetricRecord",
    "MetricsPublisher",
    "PublisherConfig",
    "PublisherStats",
    "ReadResult",
    "plain",
    "read_jsonl",
    "runtime_fields",
]

log = logging.getLogger("spotlight.actors.monitor.metrics")

METRICS_FILE = "metrics.jsonl"
"""Name of the JSON-lines file inside a run directory."""
KNOWN_TOPICS: tuple[str, ...] = tuple(RECORDS)
"""Topics with a typed record (records.py); any other well-formed topic is kept too."""
_TOPIC_RE = re.compile(r"^[a-z][a-z0-9_.\-]{0,63}$")
_MAX_DEPTH = 8


def plain(value: Any, *, _depth: int = 0) -> Any:
    """``value`` as plain JSON-able data (see the module docstring for what converts)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if _depth >= _MAX_DEPTH:
        raise ValueError(f"metric value nested deeper than {_MAX_DEPTH} levels: {value!r:.80}")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain(getattr(value, f.name), _depth=_depth + 1)
            for f in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {str(k): plain(v, _depth=_depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset | deque):
        return [plain(v, _depth=_depth + 1) for v in value]
    item = getattr(value, "item", None)  # numpy scalars, 0-d arrays and tensors
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return plain(item(), _depth=_depth + 1)
    raise ValueError(
        f"metric value {value!r:.80} of type {type(value).__name__} is not plain data; "
        "use None, bool, int, float, str, lists/dicts of them, or a dataclass"
    )


def check_topic(topic: str) -> str:
    if not isinstance(topic, str) or not _TOPIC_RE.match(topic):
        raise ValueError(
            f"metric topic {topic!r} must be lowercase [a-z0-9_.-], at most 64 chars; "
            f"the view draws: {', '.join(KNOWN_TOPICS)}"
        )
    return topic


@register_wire_type(name="spotlight.MetricRecord")
@dataclass(frozen=True, kw_only=True)
class MetricRecord:
    """One measurement: who (``source``) said what (``fields``) about ``topic``, when."""

    time: float
    """``time.time()`` at the publisher (wall clock, so records of many nodes line up)."""
    source: str
    """The actor, node or group that published it (one row per source in the view)."""
    topic: str
    """What it is about; see the module docstring's table."""
    fields: dict[str, Any]
    """Plain values only (converted by :func:`plain`)."""
    seq: int = 0
    """Per-publisher sequence number (gaps show records dropped on the way)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "source": self.source,
            "topic": self.topic,
            "seq": self.seq,
            "fields": self.fields,
        }

    @classmethod
    def from_json(cls, obj: Any) -> MetricRecord:
        """Rebuild from :meth:`to_json` output; ``ValueError`` naming what is wrong."""
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in ("time", "source", "topic", "fields") if k not in obj]
        if missing:
            raise ValueError(f"missing keys {missing}")
        t, fields = obj["time"], obj["fields"]
        if not isinstance(t, int | float) or isinstance(t, bool):
            raise ValueError(f"'time' must be a number, got {t!r:.40}")
        if not isinstance(obj["source"], str) or not isinstance(obj["topic"], str):
            raise ValueError("'source' and 'topic' must be strings")
        if not isinstance(fields, dict):
            raise ValueError(f"'fields' must be an object, got {type(fields).__name__}")
        seq = obj.get("seq", 0)
        return cls(
            time=float(t),
            source=obj["source"],
            topic=obj["topic"],
            fields=fields,
            seq=seq if isinstance(seq, int) else 0,
        )


_ACTOR_KEYS = ("name", "class", "generation", "state", "mailbox", "restarts", "handler_errors")


def runtime_fields(runtime: ActorHost) -> dict[str, Any]:
    """The part of ``Runtime.statistics()`` worth a metric (topic ``runtime``): its actors
    and a few gauges, without the per-connection detail."""
    stats = runtime.statistics()
    return {
        "address": stats.get("address"),
        "actors": [
            {k: a.get(k) for k in _ACTOR_KEYS}
            for a in stats.get("actors", [])
            if isinstance(a, Mapping)
        ],
        "peers": len(stats.get("peers", [])),
        "pending_calls": stats.get("pending_calls"),
        "queued_messages": stats.get("queued_messages"),
        "restarts": stats.get("restarts"),
        # How long this process's event loop could not run (the transport's heartbeat
        # measures it): what a soak checks stays small while torch works beside the loop.
        "loop_lag_max_ms": stats.get("loop_lag_max_ms"),
        "loop_stalls": stats.get("loop_stalls"),
    }


# ============================================================================ publisher


@dataclass(frozen=True, kw_only=True)
class PublisherConfig:
    """How much a publisher buffers and how long it waits for the monitor."""

    max_pending: int = 1024
    """Records buffered while the monitor is slow; beyond this the oldest is dropped."""
    batch_size: int = 64
    """Records sent in one ``tell``."""
    send_timeout_s: float = 5.0
    """Deadline of one ``tell`` (waiting for a send credit); the batch is dropped after."""
    retry_s: float = 1.0
    """Pause after a failed send before the next, so a dead monitor costs little."""

    def __post_init__(self) -> None:
        for name in ("max_pending", "batch_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name}={getattr(self, name)!r} must be an int >= 1")
        for name in ("send_timeout_s", "retry_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0 seconds")


@dataclass(frozen=True, kw_only=True)
class PublisherStats:
    """Counters of one :class:`MetricsPublisher`."""

    published: int
    sent: int
    dropped: int
    """All drops: ``dropped_full`` + ``dropped_failed`` + ``dropped_closed``."""
    dropped_full: int
    """Oldest records pushed out because ``max_pending`` records were waiting."""
    dropped_failed: int
    """Records in batches the monitor did not take (timeout, peer lost, no monitor)."""
    dropped_closed: int
    """Records still pending when the publisher was closed."""
    pending: int
    in_flight: int
    """Records in the ``tell`` under way (published = sent + dropped + pending + in_flight)."""
    send_failures: int
    last_error: str | None


class MetricsPublisher:
    """Owned by one actor: ``publish(topic, **fields)`` returns at once, never raises on I/O.

    Create it in ``on_start`` (it needs the running loop) with ``runtime=self.runtime`` so
    the sender task is cancelled at runtime shutdown, and ``await close()`` in
    ``on_stop``. ``monitor=None`` counts every record as dropped (no monitor in this run);
    :meth:`set_monitor` attaches one later. Call ``publish`` on the event loop's thread; a
    call from a worker thread (``asyncio.to_thread``) is handed to the loop safely.
    """

    def __init__(
        self,
        monitor: ActorRef | None,
        *,
        source: str,
        runtime: ActorHost | None = None,
        config: PublisherConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not source or not isinstance(source, str):
            raise ValueError(f"source={source!r} must be a non-empty string (actor/node id)")
        self.source = source
        self.config = config or PublisherConfig()
        self._monitor = monitor
        self._runtime = runtime
        self._clock = clock
        self._ring: deque[MetricRecord] = deque()
        self._seq = 0
        self._sent = 0
        self._dropped_full = 0
        self._dropped_failed = 0
        self._dropped_closed = 0
        self._failures = 0
        self._last_error: str | None = None
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        """Set while nothing is pending or in flight (what :meth:`flush` waits for)."""
        self._idle.set()

    # -- the actor's side ----------------------------------------------------------

    def publish(self, topic: str, /, **fields: Any) -> bool:
        """Queue one record and return at once: True if queued, False once closed.

        A bad topic, a value that is not plain data, or fields that do not parse as the
        topic's record (records.py) raise ``ValueError`` here, in the caller, where the bug is.
        """
        if self._closed:
            return False
        body = plain(fields)
        check_fields(check_topic(topic), body)
        return self._submit(topic, self._clock(), body)

    def publish_record(self, record: Record, /) -> bool:
        """Publish a typed record (records.py) under its topic."""
        return self.publish(record.TOPIC, **record.fields())

    def publish_stats(self, topic: str, stats: Any, /, **extra: Any) -> bool:
        """Publish a ``statistics()`` dataclass (or mapping) as fields, plus ``extra``."""
        body = plain(stats)
        if not isinstance(body, dict):
            raise ValueError(
                f"publish_stats needs a dataclass or mapping, got {type(stats).__name__}"
            )
        return self.publish(topic, **body, **extra)

    def set_monitor(self, monitor: ActorRef | None) -> None:
        """Send to ``monitor`` from now on (e.g. once the coordinator told us where it is)."""
        self._monitor = monitor
        self._wake.set()

    def statistics(self) -> PublisherStats:
        dropped = self._dropped_full + self._dropped_failed + self._dropped_closed
        return PublisherStats(
            published=self._seq,
            sent=self._sent,
            dropped=dropped,
            dropped_full=self._dropped_full,
            dropped_failed=self._dropped_failed,
            dropped_closed=self._dropped_closed,
            pending=len(self._ring),
            in_flight=self._in_flight,
            send_failures=self._failures,
            last_error=self._last_error,
        )

    async def flush(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """Wait until every record is sent or dropped (True) or ``timeout`` passes (False).

        For tests and a clean exit; ordinary code never needs it.
        """
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop the sender; records still pending are dropped and counted. Idempotent."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel(msg="metrics publisher closed")
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._dropped_closed += len(self._ring)
        self._ring.clear()
        self._idle.set()

    # -- internals -----------------------------------------------------------------

    def _submit(self, topic: str, t: float, fields: dict[str, Any]) -> bool:
        if self._closed:
            return False
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._enqueue(topic, t, fields)
            return True
        try:  # from a worker thread: the deque and the events belong to the loop
            self._loop.call_soon_threadsafe(self._enqueue, topic, t, fields)
        except RuntimeError:  # the loop is closed: nobody will ever send it
            self._dropped_closed += 1
            return False
        return True

    def _enqueue(self, topic: str, t: float, fields: dict[str, Any]) -> None:
        if self._closed:
            return
        self._seq += 1
        record = MetricRecord(time=t, source=self.source, topic=topic, fields=fields, seq=self._seq)
        if len(self._ring) >= self.config.max_pending:
            self._ring.popleft()
            self._dropped_full += 1
        self._ring.append(record)
        self._idle.clear()
        if self._task is None:
            self._task = self._start_task()
        self._wake.set()

    def _start_task(self) -> asyncio.Task[None]:
        name = f"metrics-publisher:{self.source}"
        if self._runtime is not None and not self._runtime.closed:
            return self._runtime.create_task(self._sender(), name=name)
        return self._loop.create_task(self._sender(), name=name)

    async def _sender(self) -> None:
        cfg = self.config
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            while self._ring and not self._closed:
                n = min(cfg.batch_size, len(self._ring))
                batch = [self._ring.popleft() for _ in range(n)]
                self._in_flight = n
                try:
                    ok = await self._send(batch)
                finally:
                    self._in_flight = 0
                if not ok:
                    await asyncio.sleep(cfg.retry_s)
            if not self._ring:
                self._idle.set()

    async def _send(self, batch: list[MetricRecord]) -> bool:
        monitor = self._monitor
        dropped = self._dropped_full + self._dropped_failed + self._dropped_closed
        try:
            if monitor is None:
                raise SpotlightError("no monitor attached")
            await monitor.records.tell(
                batch, self.source, dropped, timeout=self.config.send_timeout_s
            )
        except Exception as exc:  # Timeout, PeerLost, MessageTooLarge, no runtime, ...
            # counted and kept in last_error: the sender must outlive any one bad batch
            self._dropped_failed += len(batch)
            self._failures += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            if self._failures == 1 or self._failures % 100 == 0:
                log.info("metrics from %s not delivered (%s)", self.source, self._last_error)
            return False
        self._sent += len(batch)
        return True


# ============================================================================ the file


class JsonlWriter:
    """Append-only JSON lines, one record per line, flushed after each write.

    Flushed (not fsynced): a crash of this process loses nothing already written, a crash
    of the machine may lose the last lines. A write error (disk full) is counted and
    logged once; it never raises into the monitor's handler.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")
        self.lines = 0
        self.errors = 0
        self.last_error: str | None = None

    @classmethod
    def for_run_dir(cls, run_dir: str | Path) -> JsonlWriter:
        """The run's single metrics file: ``RUN_DIR/metrics.jsonl``."""
        return cls(Path(run_dir) / METRICS_FILE)

    def write(self, record: MetricRecord | Mapping[str, Any]) -> bool:
        """Append one line; False (and counted) when the file could not take it."""
        return self.write_many([record]) == 1

    def write_many(self, records: Iterable[MetricRecord | Mapping[str, Any]]) -> int:
        """Append one line per record and flush once; returns the lines written."""
        if self._file is None:
            raise ValueError(f"JsonlWriter for {self.path} is closed")
        written = 0
        for record in records:
            obj = record.to_json() if isinstance(record, MetricRecord) else dict(record)
            try:
                line = json.dumps(obj, allow_nan=False, separators=(",", ":"))
                self._file.write(line + "\n")
            except (OSError, ValueError, TypeError) as exc:
                self._error(exc)
                continue
            written += 1
        try:
            self._file.flush()
        except OSError as exc:
            self._error(exc)
        self.lines += written
        return written

    def _error(self, exc: Exception) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.errors == 1:
            log.error("cannot write metrics to %s: %s", self.path, self.last_error)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ReadResult:
    """What :func:`read_jsonl` found: the good records and where the bad lines were."""

    path: Path
    records: list[MetricRecord] = field(default_factory=list)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    """(1-based line number, why) for each line that was skipped."""
    blank_lines: int = 0


def read_jsonl(path: str | Path) -> ReadResult:
    """Read a metrics file, skipping (and reporting) corrupt lines.

    ``FileNotFoundError``/``IsADirectoryError`` propagate for the caller to word; a
    truncated last line (a crash mid-write) is just one more bad line.
    """
    result = ReadResult(Path(path))
    with result.path.open("r", encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                result.blank_lines += 1
                continue
            try:
                result.records.append(MetricRecord.from_json(json.loads(line)))
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                result.bad_lines.append((number, str(exc)))
    return result
