"""Pure rendering of a :class:`~spotlight.actors.monitor.actor.MonitorState` to a rich renderable.

No I/O, no clock, no actor: ``render(state)`` depends on the state alone (ages are
measured against ``state.time``), so tests render to a string and assert on the text.
The system is assembled incrementally: a section whose topic has not reported yet shows
"—" rather than disappearing, so a missing publisher is visible. The one exception is
Rewards: it appears once the ``rewards`` topic reports, because with ``rewards.workers: 0``
the trainer scores in process and nothing publishes it (a "—" there would be no fault);
Rollouts likewise with ``rollout.workers: trainer``. Every section reads its topic through
the topic's typed record (records.py), the class its publisher builds; a record that does
not parse shows as "unreadable TOPIC record from SOURCE" in red.

Layout (fits 100 columns × 30 lines with the default row limits)::

    header: run dir, uptime, records, publisher drops
    ┌ left ──────────────────────────┐ ┌ right ───────────────────────────────┐
    │ Nodes (class, status, GPU-h, $) │ │ Trainer (iteration, loss, reward ±)  │
    │ Actors & SP groups              │ │ Validation sparkline                 │
    │                                 │ │ Schedulers / Exploration / Preempt.  │
    │                                 │ │ Rewards, Rollouts (when they run)    │
    └─────────────────────────────────┘ └──────────────────────────────────────┘
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from spotlight.actors.monitor.actor import MonitorState
from spotlight.actors.monitor.records import (
    CostRecord,
    ExplorationRecord,
    NodeRecord,
    PlannerRecord,
    PreemptionRecord,
    Record,
    RewardsRecord,
    RolloutsRecord,
    RuntimeRecord,
    SchedulerRecord,
    SPGroupRecord,
    TrainerRecord,
    ValidationRecord,
)

__all__ = ["DASH", "render", "sparkline"]

R = TypeVar("R", bound=Record)

DASH = "—"
BLOCKS = "▁▂▃▄▅▆▇█"
_STATUS_STYLE = {"alive": "green", "notice": "yellow", "gone": "red"}
_CLASS_LABEL = {"ondemand": "on-dem"}


# ============================================================================ helpers


def sparkline(values: Sequence[float | None], width: int = 40) -> str:
    """Unicode-block sparkline of the last ``width`` values (None/NaN draw a space)."""
    if width < 1:
        raise ValueError(f"width={width} must be >= 1")
    tail = list(values)[-width:]
    finite = [v for v in tail if v is not None and math.isfinite(v)]
    if not finite:
        return DASH
    lo, hi = min(finite), max(finite)
    span = hi - lo
    out = []
    for v in tail:
        if v is None or not math.isfinite(v):
            out.append(" ")
        elif span == 0:
            out.append(BLOCKS[len(BLOCKS) // 2])
        else:
            out.append(BLOCKS[min(len(BLOCKS) - 1, int((v - lo) / span * len(BLOCKS)))])
    return "".join(out)


def _num(value: Any, fmt: str = "{:,}") -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return DASH if value is None else str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return DASH
    return fmt.format(value)


def _short(node: str) -> str:
    """``tcp://10.0.0.7:5555`` -> ``10.0.0.7:5555``: the scheme is noise in a narrow column."""
    return node.split("://", 1)[-1]


def _pct(value: Any) -> str:
    return _num(value * 100, "{:.0f}%") if isinstance(value, int | float) else DASH


def _age(seconds: float) -> str:
    if seconds < 0:
        seconds = 0.0
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _section(title: str) -> Table:
    """A compact key/value block with a title line (2 lines of chrome)."""
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=None,
        show_header=False,
        padding=(0, 0, 0, 1),
        expand=True,
    )
    table.add_column(ratio=1)
    return table


def _latest(state: MonitorState, topic: str) -> dict[str, dict[str, Any]]:
    return state.latest.get(topic, {})


class Unreadable:
    """A record of a known topic that does not parse as its class (a publisher bug):
    shown in red with its source, never as a silent "—"."""

    def __init__(self, source: str, topic: str) -> None:
        self.source, self.topic = source, topic

    def text(self) -> Text:
        return Text(f"unreadable {self.topic} record from {self.source}", style="red")


def _rows(state: MonitorState, cls: type[R]) -> list[tuple[str, float, R | Unreadable]]:
    """Every source's newest record of ``cls.TOPIC``: (source, time, record), oldest first."""
    out: list[tuple[str, float, R | Unreadable]] = []
    for source, entry in _latest(state, cls.TOPIC).items():
        rec = cls.read(entry["fields"])
        out.append(
            (source, entry["time"], rec if rec is not None else Unreadable(source, cls.TOPIC))
        )
    return out


def _newest(state: MonitorState, cls: type[R]) -> tuple[str, R | Unreadable] | None:
    rows = _rows(state, cls)
    if not rows:
        return None
    source, _t, rec = max(rows, key=lambda row: row[1])
    return source, rec


def _newest_into(sec: Table, state: MonitorState, cls: type[R]) -> tuple[str, R] | None:
    """The newest readable record of ``cls``; otherwise writes "—" (nobody reported) or
    the unreadable line into ``sec`` and returns None."""
    newest = _newest(state, cls)
    if newest is None:
        sec.add_row(DASH)
        return None
    source, rec = newest
    if isinstance(rec, Unreadable):
        sec.add_row(rec.text())
        return None
    return source, rec


# ============================================================================ sections


def _nodes(state: MonitorState, max_rows: int) -> RenderableType:
    table = Table(
        title="Nodes", title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0), expand=True, show_edge=False,
    )  # fmt: skip
    table.add_column("node", no_wrap=True, overflow="ellipsis", ratio=1, min_width=6)
    for name in ("class", "status"):
        table.add_column(name, no_wrap=True, min_width=6)
    for name in ("GPUs", "GPU-h", "$", "seen"):
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    rows = _rows(state, NodeRecord)
    if not rows:
        table.add_row(DASH, DASH, DASH, DASH, DASH, DASH, DASH)
        return table
    order = {"alive": 0, "notice": 1, "gone": 2}
    good = [(src, t, r) for src, t, r in rows if isinstance(r, NodeRecord)]
    bad = [r.text() for _s, _t, r in rows if isinstance(r, Unreadable)]
    good.sort(key=lambda row: (order.get(row[2].status, 3), row[2].kind != "ondemand", row[0]))
    counts: dict[str, int] = {}
    for _src, _t, rec in good:
        counts[rec.status] = counts.get(rec.status, 0) + 1
    shown = good if len(good) <= max_rows else good[: max_rows - 1]
    for source, t, rec in shown:
        table.add_row(
            source,
            _CLASS_LABEL.get(rec.kind, rec.kind),
            Text(rec.status, style=_STATUS_STYLE.get(rec.status, "")),
            _num(rec.gpus),
            _num(rec.gpu_hours, "{:,.2f}"),
            _num(rec.cost_usd, "{:,.2f}"),
            _age(state.time - t),
        )
    if len(shown) < len(good):
        table.add_row(
            Text(f"… +{len(good) - len(shown)} more", style="dim"), "", "", "", "", "", ""
        )
    tally = " ".join(
        f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: order.get(kv[0], 3))
    )
    summary = [f"{len(good)} node{'s' if len(good) != 1 else ''}: {tally}"]
    cost = _newest(state, CostRecord)
    if cost is not None and isinstance(cost[1], CostRecord):  # the metered bill
        c = cost[1]
        summary[0] += f" · {c.ondemand_gpu_hours + c.spot_gpu_hours:,.2f} GPU-h"
        summary.append(
            f"${c.total_usd:,.2f} (on-demand ${c.ondemand_usd:,.2f}, spot ${c.spot_usd:,.2f})"
            f" · ${c.usd_per_hour:,.2f}/h now"
        )
    else:
        gpu_h = sum(r.gpu_hours for _s, _t, r in good)
        summary[0] += f" · {gpu_h:,.2f} GPU-h · ${sum(r.cost_usd for _s, _t, r in good):,.2f}"
    return Group(table, *(Text(line) for line in summary), *bad)


def _actors(state: MonitorState, max_rows: int) -> RenderableType:
    table = Table(
        title="Actors & SP groups", title_justify="left", title_style="bold",
        box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), expand=True, show_edge=False,
    )  # fmt: skip
    table.add_column("name", no_wrap=True, overflow="ellipsis", ratio=2, min_width=6)
    table.add_column("kind", no_wrap=True, overflow="ellipsis", ratio=2, min_width=6)
    table.add_column("node", no_wrap=True, overflow="ellipsis", ratio=1, min_width=5)
    table.add_column("epoch", justify="right", no_wrap=True, min_width=5)
    table.add_column("deg", justify="right", no_wrap=True, min_width=3)
    table.add_column("state", no_wrap=True, overflow="ellipsis", min_width=7)
    rows: list[tuple[str, ...]] = []
    bad: list[Text] = []
    for group, _t, sp in sorted(_rows(state, SPGroupRecord), key=lambda row: row[0]):
        if isinstance(sp, Unreadable):
            bad.append(sp.text())
            continue
        rows.append((group, "SP group", sp.node, _num(sp.epoch), _num(sp.degree),
                     sp.status or DASH))  # fmt: skip
    for node, _t, rt in sorted(_rows(state, RuntimeRecord), key=lambda row: row[0]):
        if isinstance(rt, Unreadable):
            bad.append(rt.text())
            continue
        for actor in rt.actors:
            restarts = actor.get("restarts") or 0
            st = str(actor.get("state", DASH)) + (f" ↻{restarts}" if restarts else "")
            rows.append((str(actor.get("name", "?")), str(actor.get("class", DASH)), _short(node),
                         _num(actor.get("generation")), DASH, st))  # fmt: skip
    if not rows:
        table.add_row(DASH, DASH, DASH, DASH, DASH, DASH)
        return Group(table, *bad)
    shown = rows if len(rows) <= max_rows else rows[: max_rows - 1]
    for row in shown:
        table.add_row(*row)
    if len(shown) < len(rows):
        table.add_row(Text(f"… +{len(rows) - len(shown)} more", style="dim"), "", "", "", "", "")
    return Group(table, *bad)


def _history(state: MonitorState, cls: type[R], source: str) -> list[R]:
    """The readable records of ``source`` in the history of ``cls.TOPIC``, oldest first."""
    out = []
    for item in state.history.get(cls.TOPIC, []):
        rec = cls.read(item["fields"]) if item["source"] == source else None
        if rec is not None:
            out.append(rec)
    return out


def _trainer(state: MonitorState, spark_width: int) -> RenderableType:
    sec = _section("Trainer")
    newest = _newest_into(sec, state, TrainerRecord)
    if newest is None:
        return sec
    src, t = newest
    reward = _num(t.reward_mean, "{:.3f}") + f" ± {_num(t.reward_std, '{:.3f}')}"
    sec.add_row(
        f"iter {_num(t.iteration)}  loss {_num(t.loss, '{:.4g}')}  "
        f"zero-std {_pct(t.zero_std_fraction)}  {t.iteration_s:.1f} s"
    )
    rewards = [r.reward_mean for r in _history(state, TrainerRecord, src)]  # one rank's curve
    if any(r is not None for r in rewards):
        sec.add_row(f"reward {reward}, last {min(len(rewards), spark_width)} iterations:")
        sec.add_row(Text(sparkline(rewards, spark_width), "cyan"))
    else:
        sec.add_row(f"reward {reward}")
    return sec


def _validation(state: MonitorState, spark_width: int) -> RenderableType:
    sec = _section("Validation")
    newest = _newest_into(sec, state, ValidationRecord)
    if newest is None:
        return sec
    src, v = newest
    scores = [r.score for r in _history(state, ValidationRecord, src)]
    finite = [s for s in scores if s is not None]
    best = f"  best {max(finite):.3f}" if finite else ""
    sec.add_row(
        f"score {_num(v.score, '{:.3f}')} @ iter {_num(v.iteration)}{best}  ({len(scores)} pts)"
    )
    sec.add_row(Text(sparkline(scores, spark_width), style="magenta"))
    return sec


def _scheduler(state: MonitorState) -> RenderableType:
    sec = _section("Schedulers")
    rows = sorted(_rows(state, SchedulerRecord), key=lambda row: row[0])
    if not rows:
        sec.add_row(DASH)
    for source, _t, s in rows:
        if isinstance(s, Unreadable):
            sec.add_row(s.text())
            continue
        name = source.removesuffix("_scheduler")
        sec.add_row(
            f"{name}  q {_num(s.queue_depth)}  leased {_num(s.active_leases)}  "
            f"done {_num(s.completed)}  {_num(s.workers)} workers"
        )
        sec.add_row(
            Text(
                f"  re-leased {_num(s.re_leases)}  expired {_num(s.expired)}  "
                f"stale {_num(s.stale_results)}  redone {_num(s.steps_recomputed)}",
                style="dim",
            )
        )
    return sec


def _exploration(state: MonitorState) -> RenderableType:
    sec = _section("Exploration")
    newest = _newest_into(sec, state, ExplorationRecord)
    if newest is None:
        return sec
    e = newest[1]
    if e.mode == "random":
        sec.add_row(f"iter {_num(e.iteration)}: random seeds (the baseline)")
        return sec
    sec.add_row(
        f"iter {_num(e.iteration)}: {_num(e.seeds)} explored + {_num(e.fallbacks)} random seeds"
    )
    sec.add_row(f"in all: {_num(e.seeds_total)} explored, {_num(e.fallbacks_total)} random")
    frac = e.budget_used_s / e.budget_s if e.budget_s > 0 else None
    line = f"budget {e.budget_used_s:,.1f}/{e.budget_s:,.1f} GPU-s ({_pct(frac)})"
    planner = _newest(state, PlannerRecord)
    if planner is not None:
        p = planner[1]
        if isinstance(p, Unreadable):
            sec.add_row(p.text())
        else:
            line += f"  {p.explorers} explorers"
    sec.add_row(line)
    return sec


def _preemptions(state: MonitorState, max_rows: int) -> RenderableType:
    sec = _section("Preemptions")
    cost = _newest(state, CostRecord)
    bill = cost[1] if cost is not None and isinstance(cost[1], CostRecord) else None
    events = [
        (item["time"], item["source"], rec)
        for item in state.history.get(PreemptionRecord.TOPIC, [])
        if (rec := PreemptionRecord.read(item["fields"])) is not None
    ]
    if bill is None and not events:
        sec.add_row(DASH)
        return sec
    if bill is not None:  # the coordinator's tally: every event since the run started
        notice, silent, rejoined = bill.preemptions_notice, bill.preemptions_silent, bill.rejoined
        lost: int | None = bill.work_lost_steps
    else:
        notice = sum(r.kind == "notice" for _t, _s, r in events)
        rejoined = sum(r.kind == "rejoined" for _t, _s, r in events)
        silent = sum(r.kind == "silent" for _t, _s, r in events) - rejoined  # taken back
        lost = sum(r.steps_lost or 0 for _t, _s, r in events)
    back = f", {rejoined} rejoined" if rejoined else ""
    sec.add_row(
        f"{notice + silent}: {notice} with notice, {silent} silent{back}; steps lost {_num(lost)}"
    )
    for t, _source, r in events[-max_rows:][::-1]:
        lead = f" {r.lead_s:.0f}s" if r.lead_s is not None else ""
        what = "" if r.kind == "rejoined" else f", lost {_num(r.steps_lost)} steps"
        sec.add_row(
            Text(f"{_age(state.time - t)} ago  {r.node}  {r.kind}{lead}{what}", style="dim")
        )
    return sec


def _rewards(state: MonitorState) -> RenderableType | None:
    newest = _newest(state, RewardsRecord)
    if newest is None:
        return None
    sec = _section("Rewards")
    r = newest[1]
    if isinstance(r, Unreadable):
        sec.add_row(r.text())
        return sec
    sec.add_row(
        f"workers {_num(r.workers)}  calls {_num(r.calls)}  "
        f"last {_num(r.last_call_s * 1000, '{:,.0f}')} ms"
    )
    sec.add_row(
        f"images {_num(r.remote_images)} remote, {_num(r.local_images)} in process  "
        f"retries {_num(r.retries)}"
    )
    return sec


def _rollouts(state: MonitorState) -> RenderableType | None:
    """The trainer's last batch through the rollout pool (absent with rollout.workers
    trainer): how long it took and how much of it spot nodes drew."""
    newest = _newest(state, RolloutsRecord)
    if newest is None:
        return None
    sec = _section("Rollouts")
    r = newest[1]
    if isinstance(r, Unreadable):
        sec.add_row(r.text())
        return sec
    sec.add_row(
        f"iter {_num(r.iteration)}: {_num(r.samples)} in {r.seconds:.2f} s, "
        f"{_num(r.spot_samples)} by {_num(r.spot_workers)} spot workers"
    )
    return sec


# ============================================================================ the view


def render(
    state: MonitorState,
    *,
    max_nodes: int = 8,
    max_actors: int = 6,
    max_preemptions: int = 3,
    spark_width: int = 40,
) -> RenderableType:
    """The whole monitor view for ``state`` (see the module docstring for the layout)."""
    drops = sum(state.publisher_drops.values())
    header = Text.assemble(
        ("spotlight monitor", "bold"),
        f"  run {state.run_dir or DASH}  up {_duration(state.time - state.started_at)}"
        f"  records {state.records:,}  ",
        (f"drops {drops:,}", "yellow" if drops else ""),
        f"  viewers {state.subscribers}",
    )
    if state.write_errors:
        header.append(f"  write errors {state.write_errors}", style="red")
    left = Group(_nodes(state, max_nodes), _actors(state, max_actors))
    sections = [
        _trainer(state, spark_width),
        _validation(state, spark_width),
        _scheduler(state),
        _exploration(state),
        _preemptions(state, max_preemptions),
        _rewards(state),
        _rollouts(state),
    ]
    right = Group(*(s for s in sections if s is not None))
    grid = Table.grid(expand=True, padding=(0, 2))
    grid.add_column(ratio=53)
    grid.add_column(ratio=47)
    grid.add_row(left, right)
    return Group(header, grid)
