"""Reports of a projection: a rich table for people, JSON for machines, PNGs for papers.

The table shows, per strategy, medians with the [lo, hi] interval where it is not a point;
the timelines go only to ``--json`` and the curve PNG. The curve's y axis is *normalised*
validation score (0 at the base, 1 at the target), linear in iterations: the projection
models time and cost, not learning, and says so on the plot.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from spotlight.actors.spot.projection.project import Projection
from spotlight.actors.spot.projection.simulate import STRATEGIES
from spotlight.actors.spot.projection.sweep import Heatmap

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["COLUMNS", "curves_png", "heatmap_png", "table"]

COLUMNS = (
    ("hours", "hours_to_target", "{:.2f}"),
    ("$", "usd_to_target", "{:,.0f}"),
    ("sooner\nvs a", "speedup_vs_ondemand", "{:.2f}x"),
    ("cheaper\nvs a", "cost_ratio_vs_ondemand", "{:.2f}x"),
    ("sooner\nvs b", "speedup_vs_same_gpus", "{:.2f}x"),
    ("cheaper\nvs b", "cost_ratio_vs_same_gpus", "{:.2f}x"),
    ("preempt-\nions", "preemptions", "{:.0f}"),
    ("steps\nlost", "steps_lost", "{:,.0f}"),
    ("on-demand\nGPU-h", "gpu_hours_ondemand", "{:.1f}"),
    ("spot\nGPU-h", "gpu_hours_spot", "{:.1f}"),
)
WIDTH = 132
"""The table's width: a wide terminal's; narrower ones wrap lines rather than cells."""
LETTERS = dict(zip(STRATEGIES, "abcde", strict=True))


def escape(text: str) -> str:
    """Rich markup escaping (brackets in numbers are not tags)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _cell(stats: dict[str, float], fmt: str) -> str:
    med = fmt.format(stats["median"])
    if abs(stats["hi"] - stats["lo"]) <= 1e-9 * max(1.0, abs(stats["median"])):
        return med
    return escape(f"{med}\n[{fmt.format(stats['lo'])}, {fmt.format(stats['hi'])}]")


def table(proj: Projection) -> Table:
    """The terminal table: one row per strategy, medians and [lo, hi]."""
    from rich.table import Table

    sh, it = proj.trace.shape, proj.iters
    t = Table(title=f"PROJECTION: {proj.trace.name} x {proj.preset.name} (simulated, not measured)")
    t.add_column("strategy", no_wrap=True)
    for head, _, _ in COLUMNS:
        t.add_column(head, justify="right")
    summary = proj.table()
    for s in STRATEGIES:
        t.add_row(f"({LETTERS[s]}) {s}", *(_cell(summary[s][k], f) for _, k, f in COLUMNS))
    r, sel = it.random, it.selection_speedup
    t.caption = (
        f"N={proj.assume.ondemand_gpus} on-demand GPUs, spot cap M={proj.assume.spot_gpus} "
        f"({sh.gpus_per_node} GPU/node {sh.instance}); prices {proj.prices.name}: on-demand "
        f"${proj.prices.ondemand_usd_per_gpu_hour:.3f}, spot ${proj.prices.spot_usd_per_gpu_hour:.3f}"
        f" /GPU-h; notice {proj.notice_s:g} s; iterations to target {r.median:g} [{r.lo:g}, "
        f"{r.hi:g}]{' (censored: a floor)' if it.censored else ''}, selection speed-up "
        f"{sel.median:g} [{sel.lo:g}, {sel.hi:g}] ({it.source.split(' (')[0]}); "
        f"{len({s.start_s for s in proj.runs})} trace start offsets; \\[lo, hi] spans them all."
    )
    if sh.gpu not in ("unknown", proj.preset.gpu) and proj.preset.gpu != "cpu":
        t.caption += (
            f" The trace's nodes are {sh.gpu}, the per-step costs {proj.preset.gpu}'s: the trace "
            "serves as the availability process, dollars are at its prices."
        )
    return t


def curves_png(proj: Projection, path: str | Path) -> Path:
    """Normalised validation score against hours and against dollars, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = proj.runs[proj.median_scenario()]
    fig, (ax_h, ax_d) = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in ("ondemand", "ondemand_same_gpus", "restart", "spotlight", "spotlight_no_explore"):
        run = runs[s]  # d after e, dashed: they coincide when selection gives no speed-up
        ts = [0.0] + [p[0] / 3600 for p in run.timeline]
        usd = [0.0] + [p[2] for p in run.timeline]
        score = [0.0] + [p[1] / run.iterations for p in run.timeline]
        style = {"linestyle": "--"} if s == "spotlight_no_explore" else {}
        ax_h.plot(ts, score, label=f"({LETTERS[s]}) {s}", **style)
        ax_d.plot(usd, score, label=f"({LETTERS[s]}) {s}", **style)
    ax_h.set_xlabel("hours")
    ax_d.set_xlabel("dollars")
    for ax in (ax_h, ax_d):
        ax.set_ylabel("validation score (0 = base, 1 = target)")
        ax.axhline(1.0, color="grey", linewidth=0.6)
        ax.grid(alpha=0.3)
    ax_h.legend(fontsize=8)
    fig.suptitle(
        f"PROJECTION {proj.trace.name} x {proj.preset.name}: score assumed linear in iterations "
        f"(median scenario)",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def heatmap_png(hm: Heatmap, path: str | Path) -> Path:
    """The preemption-rate x recovery-time heat map (restart / Spotlight-d time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    im = ax.imshow(hm.ratio, origin="lower", cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(hm.recoveries_s)), [f"{r:g}" for r in hm.recoveries_s])
    ax.set_yticks(range(len(hm.rates)), [f"{r:g}" for r in hm.rates])
    ax.set_xlabel("recovery time of a restart (s): launch + rendezvous + weight load")
    ax.set_ylabel("preemptions per node-hour")
    for i, row in enumerate(hm.ratio):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label="restart time / Spotlight (no exploration) time")
    ax.set_title(textwrap.fill(hm.label, 95), fontsize=7)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
