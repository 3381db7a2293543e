"""Pure rendering of a :class:`~spotlight.actors.monitor.actor.MonitorState` to a rich renderable.

No I/O, no clock, no actor: ``render(state)`` depends on the state alone (ages are
measured against ``state.time``), so tests render to a string and assert on the text.
The system is assembled incrementally: a section whose topic has not reported yet shows
"—" rather than disappearing, so a missing publisher is visible. The one exception is
Rewards: it appears once the ``rewards`` topic reports, because with ``rewards.workers: 0``
the trainer scores in process and nothing publishes it (a "—" there would be no fault).

Layout (fits 100 columns × 30 lines with the default row limits)::

    header: run dir, uptime, records, publisher drops
    ┌ left ──────────────────────────┐ ┌ right ───────────────────────────────┐
    │ Nodes (class, status, GPU-h, $) │ │ Trainer (iteration, loss, reward ±)  │
    │ Actors & SP groups              │ │ Validation sparkline                 │
    │                                 │ │ Scheduler / Exploration / Preemptions│
    │                                 │ │ Rewards (when reward actors run)     │
    └─────────────────────────────────┘ └──────────────────────────────────────┘
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from spotlight.actors.monitor.actor import MonitorState

__all__ = ["DASH", "render", "sparkline"]

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


def _get(fields: Mapping[str, Any], *paths: str) -> Any:
    """First present value among dotted ``paths`` (``"leases.re_leases"``), else None."""
    for path in paths:
        node: Any = fields
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None:
            return node
    return None


def _num(value: Any, fmt: str = "{:,}") -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return DASH if value is None else str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return DASH
    return fmt.format(value)


def _short(node: str) -> str:
    """``tcp://10.0.0.7:5555`` -> ``10.0.0.7:5555``: the scheme is noise in a narrow column."""
    return node.split("://", 1)[-1]


def _float(value: Any) -> float:
    """A number as float; anything else (None, text) counts 0 in a sum."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else 0.0


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


def _newest(state: MonitorState, topic: str) -> tuple[str, dict[str, Any]] | None:
    rows = _latest(state, topic)
    if not rows:
        return None
    source, entry = max(rows.items(), key=lambda kv: kv[1]["time"])
    return source, entry["fields"]


# ============================================================================ sections


def _nodes(state: MonitorState, max_rows: int) -> RenderableType:
    rows = _latest(state, "node")
    table = Table(
        title="Nodes", title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0), expand=True, show_edge=False,
    )  # fmt: skip
    table.add_column("node", no_wrap=True, overflow="ellipsis", ratio=1, min_width=6)
    for name in ("class", "status"):
        table.add_column(name, no_wrap=True, min_width=6)
    for name in ("GPUs", "GPU-h", "$", "seen"):
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    if not rows:
        table.add_row(DASH, DASH, DASH, DASH, DASH, DASH, DASH)
        return table
    order = {"alive": 0, "notice": 1, "gone": 2}

    def key(item: tuple[str, dict[str, Any]]) -> tuple[int, int, str]:
        f = item[1]["fields"]
        kind = 0 if f.get("kind") == "ondemand" else 1
        return (order.get(str(f.get("status")), 3), kind, item[0])

    items = sorted(rows.items(), key=key)
    counts: dict[str, int] = {}
    gpu_h = usd = 0.0
    for _source, entry in items:
        f = entry["fields"]
        counts[str(f.get("status", "?"))] = counts.get(str(f.get("status", "?")), 0) + 1
        gpu_h += _float(f.get("gpu_hours"))
        usd += _float(f.get("cost_usd"))
    shown = items if len(items) <= max_rows else items[: max_rows - 1]
    for source, entry in shown:
        f = entry["fields"]
        status = str(f.get("status", DASH))
        table.add_row(
            source,
            _CLASS_LABEL.get(str(f.get("kind")), str(f.get("kind", DASH))),
            Text(status, style=_STATUS_STYLE.get(status, "")),
            _num(f.get("gpus")),
            _num(f.get("gpu_hours"), "{:,.2f}"),
            _num(f.get("cost_usd"), "{:,.2f}"),
            _age(state.time - entry["time"]),
        )
    if len(shown) < len(items):
        table.add_row(
            Text(f"… +{len(items) - len(shown)} more", style="dim"), "", "", "", "", "", ""
        )
    cost = _newest(state, "cost")
    if cost is not None:  # the metered bill beats the sum of node rows
        f = cost[1]
        gpu_h = _float(f.get("ondemand_gpu_hours")) + _float(f.get("spot_gpu_hours"))
        usd = _float(f.get("total_usd"))
    tally = " ".join(
        f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: order.get(kv[0], 3))
    )
    summary = f"{len(items)} nodes: {tally} · {gpu_h:,.2f} GPU-h · ${usd:,.2f}"
    if cost is not None:
        f = cost[1]
        summary += (
            f" (on-demand ${_num(f.get('ondemand_usd'), '{:,.2f}')}, "
            f"spot ${_num(f.get('spot_usd'), '{:,.2f}')})"
        )
    return Group(table, Text(summary))


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
    for group, entry in sorted(_latest(state, "sp_group").items()):
        f = entry["fields"]
        members = f.get("members")
        degree = f.get("degree", len(members) if isinstance(members, list) else None)
        rows.append((group, "SP group", str(f.get("node", DASH)), _num(f.get("epoch")),
                     _num(degree), str(f.get("status", DASH))))  # fmt: skip
    for node, entry in sorted(_latest(state, "runtime").items()):
        for actor in entry["fields"].get("actors") or []:
            if not isinstance(actor, Mapping):
                continue
            restarts = actor.get("restarts") or 0
            st = str(actor.get("state", DASH)) + (f" ↻{restarts}" if restarts else "")
            rows.append((str(actor.get("name", "?")), str(actor.get("class", DASH)), _short(node),
                         _num(actor.get("generation")), DASH, st))  # fmt: skip
    if not rows:
        table.add_row(DASH, DASH, DASH, DASH, DASH, DASH)
        return table
    shown = rows if len(rows) <= max_rows else rows[: max_rows - 1]
    for row in shown:
        table.add_row(*row)
    if len(shown) < len(rows):
        table.add_row(Text(f"… +{len(rows) - len(shown)} more", style="dim"), "", "", "", "", "")
    return table


def _history(
    state: MonitorState, topic: str, *paths: str, source: str | None = None
) -> list[float | None]:
    """Values of the first present path per history item (of ``source`` only, if given)."""
    out: list[float | None] = []
    for item in state.history.get(topic, []):
        if source is not None and item["source"] != source:
            continue
        v = _get(item["fields"], *paths)
        out.append(float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None)
    return out


def _trainer(state: MonitorState, spark_width: int) -> RenderableType:
    sec = _section("Trainer")
    newest = _newest(state, "trainer")
    if newest is None:
        sec.add_row(DASH)
        return sec
    src, f = newest
    mean, std = _get(f, "reward_mean"), _get(f, "reward_std")
    reward = _num(mean, "{:.3f}") + (f" ± {_num(std, '{:.3f}')}" if std is not None else "")
    sec.add_row(
        f"iter {_num(_get(f, 'iteration'))}  loss {_num(_get(f, 'loss'), '{:.4g}')}  "
        f"zero-std {_pct(_get(f, 'zero_std_fraction'))}"
    )
    rewards = _history(state, "trainer", "reward_mean", source=src)  # one rank's curve
    if any(r is not None for r in rewards):
        sec.add_row(f"reward {reward}, last {min(len(rewards), spark_width)} records:")
        sec.add_row(Text(sparkline(rewards, spark_width), "cyan"))
    else:
        sec.add_row(f"reward {reward}")
    return sec


def _validation(state: MonitorState, spark_width: int) -> RenderableType:
    sec = _section("Validation")
    newest = _newest(state, "validation")
    if newest is None:
        sec.add_row(DASH)
        return sec
    src, f = newest
    scores = _history(state, "validation", "score", source=src)
    finite = [s for s in scores if s is not None]
    best = f"  best {max(finite):.3f}" if finite else ""
    sec.add_row(
        f"score {_num(_get(f, 'score'), '{:.3f}')} @ iter {_num(_get(f, 'iteration'))}{best}"
        f"  ({len(scores)} pts)"
    )
    sec.add_row(Text(sparkline(scores, spark_width), style="magenta"))
    return sec


def _scheduler(state: MonitorState) -> RenderableType:
    sec = _section("Scheduler")
    newest = _newest(state, "scheduler")
    if newest is None:
        sec.add_row(DASH)
        return sec
    f = newest[1]
    sec.add_row(
        f"queue {_num(_get(f, 'queue_depth', 'leases.queued', 'queued'))}  "
        f"leases {_num(_get(f, 'active_leases', 'leases.active_leases'))}  "
        f"re-leases {_num(_get(f, 'leases.re_leases', 're_leases'))}  "
        f"expired {_num(_get(f, 'leases.expired', 'expired'))}"
    )
    sec.add_row(
        f"done {_num(_get(f, 'leases.completed', 'completed'))}  "
        f"stale {_num(_get(f, 'leases.stale_results', 'stale_results'))}  "
        f"recomputed steps {_num(_get(f, 'leases.steps_recomputed', 'steps_recomputed'))}"
    )
    return sec


def _exploration(state: MonitorState) -> RenderableType:
    sec = _section("Exploration")
    newest = _newest(state, "exploration")
    if newest is None:
        sec.add_row(DASH)
        return sec
    f = newest[1]
    used, budget = _get(f, "budget_used_s"), _get(f, "budget_s")
    frac = _get(f, "budget_used_fraction")
    if (
        frac is None
        and isinstance(used, int | float)
        and isinstance(budget, int | float)
        and budget
    ):
        frac = used / budget
    sec.add_row(
        f"budget used {_pct(frac)} ({_num(used, '{:,.1f}')} of {_num(budget, '{:,.1f}')} s)"
    )
    sec.add_row(
        f"fallbacks {_num(_get(f, 'fallbacks'))}  seeds {_num(_get(f, 'seeds', 'seeds_explored'))}"
    )
    return sec


def _preemptions(state: MonitorState, max_rows: int) -> RenderableType:
    sec = _section("Preemptions")
    events = state.history.get("preemption", [])
    total = state.records_by_topic.get("preemption", 0)
    if not total:
        sec.add_row(DASH)
        return sec
    lost = 0
    silent = 0
    rejoined = 0  # a node found gone came back from the same process: a loss taken back
    for e in events:
        steps = _get(e["fields"], "steps_lost", "drain.abandoned_steps")
        lost += steps if isinstance(steps, int) else 0
        kind = _get(e["fields"], "kind")
        silent += kind == "silent"
        rejoined += kind == "rejoined"
    kept = "" if len(events) == total else f" (last {len(events)})"
    back = f", {rejoined} rejoined" if rejoined else ""
    sec.add_row(
        f"{total}{kept}: {len(events) - silent - rejoined} with notice, {silent} silent{back}; "
        f"steps lost {lost}"
    )
    for e in events[-max_rows:][::-1]:
        f = e["fields"]
        lead = _get(f, "lead_s")
        sec.add_row(
            Text(
                f"{_age(state.time - e['time'])} ago  {f.get('node', f.get('worker_id', e['source']))}"
                f"  {f.get('kind', 'notice')}"
                + (f" {lead:.0f}s" if isinstance(lead, int | float) else "")
                + (
                    ""
                    if f.get("kind") == "rejoined"
                    else f", lost {_num(_get(f, 'steps_lost', 'drain.abandoned_steps'))} steps"
                ),
                style="dim",
            )
        )
    return sec


def _rewards(state: MonitorState) -> RenderableType | None:
    newest = _newest(state, "rewards")
    if newest is None:
        return None
    f = newest[1]
    sec = _section("Rewards")
    last = _get(f, "last_call_s")
    sec.add_row(
        f"workers {_num(_get(f, 'workers'))}  calls {_num(_get(f, 'calls'))}  "
        f"last {_num(last * 1000 if isinstance(last, int | float) else None, '{:,.0f}')} ms"
    )
    sec.add_row(
        f"images {_num(_get(f, 'remote_images'))} remote, {_num(_get(f, 'local_images'))} "
        f"in process  retries {_num(_get(f, 'retries'))}"
    )
    return sec


def _rollouts(state: MonitorState) -> RenderableType | None:
    """The trainer's last batch through the rollout pool (absent with rollout.workers
    trainer): how long it took and how much of it spot nodes drew."""
    newest = _newest(state, "rollouts")
    if newest is None:
        return None
    f = newest[1]
    seconds = _get(f, "seconds")
    sec = _section("Rollouts")
    sec.add_row(
        f"iter {_num(_get(f, 'iteration'))}: {_num(_get(f, 'samples'))} in "
        f"{_num(seconds, '{:.2f}') if isinstance(seconds, int | float) else DASH} s, "
        f"{_num(_get(f, 'spot_samples'))} by {_num(_get(f, 'spot_workers'))} spot workers"
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
