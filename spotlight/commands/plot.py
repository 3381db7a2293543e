"""`spotlight plot RUN_DIR`: draw a run's metrics.jsonl as PNG curves.

Reads ``RUN_DIR/metrics.jsonl`` (or a ``.jsonl`` path given directly), skips corrupt lines
(reporting how many and where the first ones are) and writes, for each curve that has
data, one PNG into ``--out`` (default ``RUN_DIR/plots``):

- ``reward.png``: trainer reward mean ± std per iteration (one line per trainer source)
- ``validation.png``: validation score per iteration
- ``loss.png``: trainer loss per iteration
- ``cost.png``: dollars so far over wall time (``cost`` topic, else the nodes' ``cost_usd``)

Exit codes: 0 when at least one PNG was written, 1 when the file has no plottable data,
2 when the file is missing, unreadable, empty or entirely corrupt.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PlotError", "add_arguments", "plot_run", "run"]

_SHOW_BAD = 3


class PlotError(ValueError):
    """Bad input for ``spotlight plot``: the message names the path (and line)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory (or a metrics .jsonl)")
    parser.add_argument(
        "--out", default=None, help="directory for the PNGs (default: RUN_DIR/plots)"
    )


@dataclass(frozen=True)
class PlotResult:
    written: list[Path]
    skipped: list[str]
    """Curves with no data, e.g. ``"validation.png: no 'validation' records with 'score'"``."""
    records: int
    bad_lines: list[tuple[int, str]]


@dataclass(frozen=True)
class _Curve:
    file: str
    title: str
    xlabel: str
    series: dict[str, list[tuple[float, ...]]]
    needs: str
    """What the file lacks when there is nothing to draw (for the skip note)."""
    band: bool = False
    """Shade ± the second value (std) around the first."""


def _metrics_file(run_dir: Path) -> Path:
    from spotlight.actors.monitor.metrics import METRICS_FILE

    return run_dir if run_dir.suffix == ".jsonl" or run_dir.is_file() else run_dir / METRICS_FILE


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def _series(
    records: Sequence[Any], topic: str, x: str, *ys: str
) -> dict[str, list[tuple[float, ...]]]:
    """Per source, sorted points ``(x, y1, y2, ...)`` of records that have x and y1."""
    out: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    for rec in records:
        if rec.topic != topic:
            continue
        xv = rec.time if x == "time" else _number(rec.fields.get(x))
        vals = [_number(rec.fields.get(y)) for y in ys]
        if xv is None or vals[0] is None:
            continue
        out[rec.source].append((xv, *(v if v is not None else float("nan") for v in vals)))
    return {src: sorted(points) for src, points in out.items()}


def _cost_series(records: Sequence[Any]) -> dict[str, list[tuple[float, ...]]]:
    metered = _series(records, "cost", "time", "total_usd")
    if metered:
        return metered
    latest: dict[str, float] = {}  # node -> its latest cost_usd; sum over nodes over time
    points: list[tuple[float, ...]] = []
    for rec in sorted((r for r in records if r.topic == "node"), key=lambda r: r.time):
        usd = _number(rec.fields.get("cost_usd"))
        if usd is None:
            continue
        latest[rec.source] = usd
        points.append((rec.time, sum(latest.values())))
    return {"nodes (sum)": points} if points else {}


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> PlotResult:
    """Write the PNGs; raises :class:`PlotError` for a missing/empty/corrupt file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spotlight.actors.monitor.metrics import read_jsonl

    path = _metrics_file(Path(run_dir))
    try:
        result = read_jsonl(path)
    except FileNotFoundError:
        raise PlotError(
            f"no metrics file at {path}: expected RUN_DIR/metrics.jsonl written by the monitor"
        ) from None
    except OSError as exc:
        raise PlotError(f"cannot read {path}: {exc}") from None
    if not result.records:
        if result.bad_lines:
            number, why = result.bad_lines[0]
            raise PlotError(
                f"{path}: all {len(result.bad_lines)} lines are corrupt; first at line "
                f"{number}: {why}"
            )
        raise PlotError(f"{path} is empty: no metric records to plot")

    out = Path(out_dir) if out_dir is not None else path.parent / "plots"
    out.mkdir(parents=True, exist_ok=True)
    records = result.records
    t0 = min(r.time for r in records)
    minutes = {src: [((p[0] - t0) / 60, *p[1:]) for p in pts]
               for src, pts in _cost_series(records).items()}  # fmt: skip
    curves = [
        _Curve("reward.png", "reward (mean ± std)", "iteration",
               _series(records, "trainer", "iteration", "reward_mean", "reward_std"),
               "'trainer' records with 'reward_mean'", band=True),
        _Curve("validation.png", "validation score", "iteration",
               _series(records, "validation", "iteration", "score"),
               "'validation' records with 'score'"),
        _Curve("loss.png", "loss", "iteration", _series(records, "trainer", "iteration", "loss"),
               "'trainer' records with 'loss'"),
        _Curve("cost.png", "cost so far (USD)", "minutes since the first record", minutes,
               "'cost' records with 'total_usd' nor 'node' records with 'cost_usd'"),
    ]  # fmt: skip
    written: list[Path] = []
    skipped: list[str] = []
    for curve in curves:
        if not curve.series:
            skipped.append(f"{curve.file}: no {curve.needs}")
            continue
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        try:
            for source, points in sorted(curve.series.items()):
                xs = [p[0] for p in points]
                (line,) = ax.plot(
                    xs, [p[1] for p in points], marker="." if len(xs) < 50 else None, label=source
                )
                if curve.band:
                    lo = [p[1] - p[2] for p in points]
                    hi = [p[1] + p[2] for p in points]
                    ax.fill_between(xs, lo, hi, alpha=0.15, color=line.get_color())
            ax.set_xlabel(curve.xlabel)
            ax.set_ylabel(curve.title)
            ax.set_title(f"{curve.title} — {path.parent.name}")
            ax.grid(alpha=0.3)
            if len(curve.series) > 1:
                ax.legend(fontsize="small")
            fig.tight_layout()
            target = out / curve.file
            fig.savefig(target)
            written.append(target)
        finally:
            plt.close(fig)
    return PlotResult(written, skipped, len(records), result.bad_lines)


def run(args: argparse.Namespace) -> int:
    try:
        result = plot_run(args.run_dir, args.out)
    except PlotError as exc:
        print(f"spotlight plot: {exc}", file=sys.stderr)
        return 2
    if result.bad_lines:
        first = "; ".join(f"line {n}: {why}" for n, why in result.bad_lines[:_SHOW_BAD])
        print(
            f"spotlight plot: skipped {len(result.bad_lines)} corrupt line(s) in "
            f"{_metrics_file(Path(args.run_dir))} ({first})",
            file=sys.stderr,
        )
    for note in result.skipped:
        print(f"spotlight plot: no plot {note}", file=sys.stderr)
    for path in result.written:
        print(path)
    if not result.written:
        print(f"spotlight plot: nothing to plot in {result.records} records", file=sys.stderr)
        return 1
    return 0
