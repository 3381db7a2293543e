"""Spot-cluster traces: when spot nodes join, get a preemption notice, and vanish.

A trace is a CSV file with the header ``t_s,event,node`` and one row per event::

    # comments and blank lines are allowed anywhere
    t_s,event,node
    0,add,spot-0
    600,notice,spot-0      # optional: the cloud warned us (AWS gives 120 s, GCP ~30 s)
    720,remove,spot-0      # a remove with no notice before it is a *silent* loss

Times are seconds of *trace time* from the start of the run, non-decreasing down the
file; rows with equal times apply in file order. A node may come back after its removal
(a new lifetime). Node names are restricted to ``[A-Za-z0-9_.-]`` because they are
substituted into command lines (``spotlight cluster replay --command``).

Validation is strict and every error names the file, the line and the fix: a trace is
an experiment's input, and a silently "repaired" one would make two runs incomparable.

:func:`synthesize_notices` turns silent losses into noticed ones: it inserts a notice
``lead_s`` before each removal that has none. If the node was added less than ``lead_s``
before its removal, the notice is clamped to the add time (the node is warned as soon as
it exists; it gets a shorter lead than asked for). Existing notices are kept as they are.

Time scaling: :meth:`SpotTrace.scaled` divides every time by ``time_scale``, so a
1-hour trace played with ``time_scale=60`` takes one minute of wall time.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "EVENTS",
    "NodeLifetime",
    "SpotTrace",
    "TraceError",
    "TraceEvent",
    "load_trace",
    "parse_trace",
    "synthesize_notices",
]

EventKind = Literal["add", "notice", "remove"]
EVENTS: tuple[str, ...] = ("add", "notice", "remove")
HEADER = ("t_s", "event", "node")
_NODE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class TraceError(ValueError):
    """A trace file (or event list) that is not a valid trace; says where and how to fix it."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One row of a trace. ``line`` is the 1-based file line (None for generated events)."""

    t_s: float
    event: EventKind
    node: str
    line: int | None = None
    synthetic: bool = False
    """True for a notice inserted by :func:`synthesize_notices`."""


@dataclass(frozen=True, slots=True)
class NodeLifetime:
    """One interval during which a node was alive (added and not yet removed)."""

    node: str
    start_s: float
    end_s: float | None
    """Removal time; None if the node is still alive when the trace ends."""
    notice_s: float | None
    """Time of the notice for this lifetime, if any."""

    @property
    def silent(self) -> bool:
        """True when the node was removed without a notice (a silent loss)."""
        return self.end_s is not None and self.notice_s is None

    def duration_s(self, until_s: float) -> float:
        """Seconds alive within ``[0, until_s]`` (a still-alive node counts up to ``until_s``)."""
        end = until_s if self.end_s is None else min(self.end_s, until_s)
        return max(0.0, end - self.start_s)


class SpotTrace:
    """A validated, immutable sequence of spot events with derived views.

    Build one with :func:`load_trace`, :func:`parse_trace` or :meth:`from_events`
    (which validates too, so a generated trace obeys the same rules as a file).
    """

    def __init__(self, events: Sequence[TraceEvent], *, source: str = "<events>") -> None:
        _validate(events, source)
        self._events = tuple(events)
        self.source = source

    @classmethod
    def from_events(
        cls, events: Iterable[tuple[float, str, str]], *, source: str = "<events>"
    ) -> SpotTrace:
        """Build from ``(t_s, event, node)`` tuples, validated like a file."""
        rows = []
        for i, (t, ev, node) in enumerate(events, start=1):
            if ev not in EVENTS:
                raise TraceError(source, i, f"unknown event {ev!r}; valid events: {EVENTS}")
            rows.append(TraceEvent(float(t), ev, node, line=i))  # type: ignore[arg-type]
        return cls(rows, source=source)

    # ---- views -------------------------------------------------------------------------
    @property
    def events(self) -> tuple[TraceEvent, ...]:
        return self._events

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node named in the trace, in order of first appearance."""
        return tuple(dict.fromkeys(e.node for e in self._events))

    @property
    def end_s(self) -> float:
        """Time of the last event (0 for an empty event list)."""
        return self._events[-1].t_s if self._events else 0.0

    def lifetimes(self) -> list[NodeLifetime]:
        """Every alive interval, ordered by start time (a re-added node has several)."""
        open_: dict[str, tuple[float, float | None]] = {}
        out: list[NodeLifetime] = []
        for e in self._events:
            if e.event == "add":
                open_[e.node] = (e.t_s, None)
            elif e.event == "notice":
                start, _ = open_[e.node]
                open_[e.node] = (start, e.t_s)
            else:
                start, notice = open_.pop(e.node)
                out.append(NodeLifetime(e.node, start, e.t_s, notice))
        out.extend(NodeLifetime(n, s, None, nt) for n, (s, nt) in open_.items())
        out.sort(key=lambda lt: (lt.start_s, lt.node))
        return out

    def capacity_steps(self) -> list[tuple[float, int]]:
        """``(t_s, alive nodes right after all events at t_s)`` at every event time.

        A node under notice still counts as alive: it runs until it is removed.
        """
        steps: list[tuple[float, int]] = []
        alive = 0
        for e in self._events:
            alive += {"add": 1, "notice": 0, "remove": -1}[e.event]
            if steps and steps[-1][0] == e.t_s:
                steps[-1] = (e.t_s, alive)
            else:
                steps.append((e.t_s, alive))
        return steps

    def capacity_at(self, t_s: float) -> int:
        """Alive spot nodes at ``t_s`` (events at exactly ``t_s`` have already happened)."""
        steps = self.capacity_steps()
        i = bisect.bisect_right([t for t, _ in steps], t_s)
        return steps[i - 1][1] if i else 0

    def removal_time(self, index: int) -> float | None:
        """For the notice at ``events[index]``, the time of the removal it announces."""
        node = self._events[index].node
        for e in self._events[index + 1 :]:
            if e.node == node and e.event == "remove":
                return e.t_s
        return None

    def scaled(self, time_scale: float) -> SpotTrace:
        """The same trace with every time divided by ``time_scale`` (> 0)."""
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale must be a finite number > 0, got {time_scale!r}")
        events = [
            TraceEvent(e.t_s / time_scale, e.event, e.node, e.line, e.synthetic)
            for e in self._events
        ]
        return SpotTrace(events, source=f"{self.source} (x1/{time_scale:g})")

    def capped(
        self,
        max_live: int,
        *,
        start_s: float = 0.0,
        end_s: float | None = None,
        ending_only: bool = False,
    ) -> SpotTrace:
        """The lifetimes that fit ``max_live`` nodes at once, within ``[start_s, end_s)``.

        What a machine that can carry only a few node processes replays of a large pool's
        trace (a real 32- or 64-node trace on 2 cores): lifetimes are taken greedily in order
        of start; one that would exceed ``max_live`` alive is dropped whole, so every kept
        node keeps its real add, notice and remove times (shifted by ``start_s``). A lifetime
        that started before ``start_s`` starts at 0; one still alive at ``end_s`` stays alive
        (no removal is invented). Node names get a ``.k`` suffix per kept lifetime, so a
        re-added node is a new process either way. ``ending_only``: skip lifetimes still
        alive at ``end_s``: in a pool whose oldest nodes outlive the window (GCP's count log
        removes the newest first) first-fit would otherwise keep those and replay no loss.
        """
        if not (isinstance(max_live, int) and max_live >= 1):
            raise ValueError(f"max_live must be an int >= 1, got {max_live!r}")
        end = math.inf if end_s is None else end_s
        if not (math.isfinite(start_s) and start_s >= 0 and end > start_s):
            raise ValueError(f"need 0 <= start_s < end_s, got {start_s!r}, {end_s!r}")
        kept: list[tuple[float, str, str]] = []
        ends: list[float] = []  # removal times of the kept lifetimes (inf: alive at the end)
        for k, lt in enumerate(self.lifetimes()):
            stop = math.inf if lt.end_s is None or lt.end_s >= end else lt.end_s
            if lt.start_s >= end or stop <= start_s or (ending_only and stop == math.inf):
                continue
            begin = max(lt.start_s, start_s)
            ends = [t for t in ends if t > begin]
            if len(ends) >= max_live:
                continue
            ends.append(stop)
            name = f"{lt.node}.{k}"
            kept.append((begin - start_s, "add", name))
            if lt.notice_s is not None and stop != math.inf and lt.notice_s < stop:
                kept.append((max(lt.notice_s, begin) - start_s, "notice", name))
            if stop != math.inf:
                kept.append((stop - start_s, "remove", name))
        order = {"remove": 0, "add": 1, "notice": 2}  # a slot frees before it is re-taken
        kept.sort(key=lambda r: (r[0], order[r[1]]))
        return SpotTrace.from_events(kept, source=f"{self.source} (<= {max_live} live)")

    def to_csv(self) -> str:
        """The trace as CSV text (``%.3f`` seconds), loadable by :func:`parse_trace`."""
        lines = [",".join(HEADER)]
        lines += [f"{e.t_s:.3f},{e.event},{e.node}" for e in self._events]
        return "\n".join(lines) + "\n"

    def __len__(self) -> int:
        return len(self._events)

    def __repr__(self) -> str:
        return f"SpotTrace({self.source!r}, {len(self)} events, {len(self.nodes)} nodes)"


# ---- loading ------------------------------------------------------------------------------
def load_trace(path: str | Path) -> SpotTrace:
    """Read and validate a trace CSV file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TraceError(str(path), None, f"cannot read trace file: {exc}") from exc
    return parse_trace(text, source=str(path))


def parse_trace(text: str, *, source: str = "<string>") -> SpotTrace:
    """Parse and validate trace CSV text (see the module docstring for the format)."""
    header_seen = False
    events: list[TraceEvent] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        cells = [c.strip() for c in line.split(",")]
        if not header_seen:
            if tuple(cells) != HEADER:
                raise TraceError(
                    source,
                    lineno,
                    f"missing header: the first row must be 't_s,event,node', got {line!r}; "
                    "add that header line at the top of the file",
                )
            header_seen = True
            continue
        if len(cells) != 3:
            raise TraceError(
                source, lineno, f"expected 3 columns t_s,event,node, got {len(cells)}: {line!r}"
            )
        t_text, ev, node = cells
        try:
            t = float(t_text)
        except ValueError:
            raise TraceError(
                source, lineno, f"t_s {t_text!r} is not a number; write seconds, e.g. 120 or 7.5"
            ) from None
        if ev not in EVENTS:
            raise TraceError(
                source, lineno, f"unknown event {ev!r}; valid events: {', '.join(EVENTS)}"
            )
        events.append(TraceEvent(t, ev, node, line=lineno))  # type: ignore[arg-type]
    if not header_seen:
        raise TraceError(
            source, None, "empty trace: expected a 't_s,event,node' header and event rows"
        )
    return SpotTrace(events, source=source)


def _validate(events: Sequence[TraceEvent], source: str) -> None:
    """Check the trace rules; raise :class:`TraceError` at the first broken one."""
    if not events:
        raise TraceError(source, None, "empty trace: it has a header but no event rows")
    state: dict[str, str] = {}  # node -> "alive" | "noticed" | "removed"
    prev_t = 0.0
    for idx, e in enumerate(events):

        def fail(msg: str, e: TraceEvent = e, idx: int = idx) -> TraceError:
            if e.line is None:  # a generated event: name its position instead of a line
                return TraceError(source, None, f"event #{idx + 1} ({e.event} {e.node}): {msg}")
            return TraceError(source, e.line, msg)

        if not math.isfinite(e.t_s):
            raise fail(f"t_s must be a finite number, got {e.t_s!r}")
        if e.t_s < 0:
            raise fail(f"negative time {e.t_s:g}; times are seconds from the start (>= 0)")
        if e.t_s < prev_t:
            raise fail(f"time goes backwards ({e.t_s:g} after {prev_t:g}); sort the rows by t_s")
        prev_t = e.t_s
        if not _NODE_RE.match(e.node):
            raise fail(f"node name {e.node!r} must match [A-Za-z0-9_.-]+")
        st = state.get(e.node)
        if e.event == "add":
            if st in ("alive", "noticed"):
                raise fail(
                    f"re-add of {e.node!r} while it is alive; remove it first or use a new name"
                )
            state[e.node] = "alive"
        elif e.event == "notice":
            if st is None:
                raise fail(f"notice for {e.node!r}, which was never added; add it first")
            if st == "removed":
                raise fail(
                    f"notice for {e.node!r} after its removal; move the notice before the remove"
                )
            if st == "noticed":
                raise fail(f"second notice for {e.node!r} in one lifetime; keep only the first")
            state[e.node] = "noticed"
        else:
            if st is None:
                raise fail(f"remove of {e.node!r}, which was never added; add it first")
            if st == "removed":
                raise fail(f"remove of {e.node!r}, which is already removed; drop this row")
            state[e.node] = "removed"
    dangling = [n for n, s in state.items() if s == "noticed"]
    if dangling:
        raise TraceError(
            source,
            None,
            f"notice without a following remove for {dangling}; add a remove row at the "
            "notice's deadline (a notice announces a removal)",
        )


def synthesize_notices(trace: SpotTrace, lead_s: float) -> SpotTrace:
    """Insert a notice ``lead_s`` before every removal that has none.

    ``lead_s == 0`` returns the trace unchanged (no notices: every such loss stays silent).
    A notice that would fall before its node's add time is clamped to the add time.
    """
    if not (math.isfinite(lead_s) and lead_s >= 0):
        raise ValueError(f"notice lead must be a finite number of seconds >= 0, got {lead_s!r}")
    if lead_s == 0:
        return trace
    events = trace.events
    times = [e.t_s for e in events]
    keyed: list[tuple[float, float, TraceEvent]] = [(e.t_s, i, e) for i, e in enumerate(events)]
    added_at: dict[str, float] = {}
    noticed: set[str] = set()
    for i, e in enumerate(events):
        if e.event == "add":
            added_at[e.node] = e.t_s
            noticed.discard(e.node)
        elif e.event == "notice":
            noticed.add(e.node)
        elif e.node not in noticed:
            t_notice = max(e.t_s - lead_s, added_at[e.node])
            # place it after every original event at the same time, but before its removal
            tie = min(i, bisect.bisect_right(times, t_notice)) - 0.5
            keyed.append((t_notice, tie, TraceEvent(t_notice, "notice", e.node, None, True)))
    keyed.sort(key=lambda k: (k[0], k[1]))
    return SpotTrace([k[2] for k in keyed], source=f"{trace.source} (+notices {lead_s:g}s)")
