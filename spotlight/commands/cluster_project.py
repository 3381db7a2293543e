"""`spotlight cluster project`: time and dollars to target on a real spot trace (a projection).

    spotlight cluster project --trace traces/aws_p3_32node_bamboo.csv --preset qwen-image-h100-512
    spotlight cluster project --trace T --preset P --iters 300 200 450 --json
    spotlight cluster project --trace T --preset P --png curves.png --heatmap heat.png

Prints a table per strategy (a ondemand, b ondemand_same_gpus, c restart,
d spotlight_no_explore, e spotlight): hours and dollars to the target, ratios vs a and b,
preemptions, work lost, GPU-hours. ``--json`` prints the same as one JSON document with
the median scenario's timelines. Every assumption is a flag (``--help``); the model and the
source of every default: docs/projection.md. The iterations default to issue 18's measured
values (benchmarks/results/selection.json): no speed-up from seed selection.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from spotlight.actors.spot.prices import PRICE_PRESETS, Prices
from spotlight.actors.spot.projection import (
    COST_PRESETS,
    MEASURED_ITERATIONS,
    Assumptions,
    IterationsToTarget,
    Range,
    cost_preset,
    load_shaped,
    project,
)
from spotlight.actors.spot.trace import TraceError

__all__ = ["add_project_parser", "run_project"]


def add_project_parser(sub: Any) -> None:
    pp = sub.add_parser(
        "project",
        help="projection: time and $ to target per strategy over a spot trace",
        description="A discrete-event projection (not a measurement); docs/projection.md "
        "gives the model and the source of every default.",
    )
    pp.add_argument("--trace", type=Path, required=True, help="trace CSV with #@ instance metadata")
    pp.add_argument("--preset", required=True, help=f"cost preset: {', '.join(COST_PRESETS)}")
    pp.add_argument(
        "--iters", type=float, nargs="+", metavar="N",
        help="iterations to target of random-seed Flow-GRPO: MEDIAN [LO HI] "
        "(default: selection.json's, censored at 20)",
    )  # fmt: skip
    pp.add_argument(
        "--selection-speedup", type=float, nargs="+", metavar="X",
        help="how many times fewer iterations seed selection needs: MEDIAN [LO HI] "
        "(default: the measured 1.0; any other value is an assumption)",
    )  # fmt: skip
    pp.add_argument("--selection-json", type=Path, help="read both from a bench_selection JSON")
    pp.add_argument("--prices", choices=sorted(PRICE_PRESETS), help="override the trace's prices")
    pp.add_argument("--spot-price", type=float, help="override USD per spot GPU-hour")
    pp.add_argument("--ondemand-price", type=float, help="override USD per on-demand GPU-hour")
    pp.add_argument("--json", action="store_true", help="print JSON (timelines included)")
    pp.add_argument("--png", type=Path, help="write score vs hours / dollars to this PNG")
    pp.add_argument("--heatmap", type=Path, help="write the preemption x recovery heat map PNG")
    for f in dataclasses.fields(Assumptions):
        default = f.default
        kind: Any = float if f.name in ("notice_s", "loss_detect_s", "link_gbps", "max_sim_s") else (
            int if isinstance(default, int) or f.name == "sp_degree" else str
        )  # fmt: skip
        pp.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=default,
                        help=f"(default {default})")  # fmt: skip


def _range(values: list[float] | None, what: str, default: Range) -> Range:
    if values is None:
        return default
    if len(values) == 1:
        return Range(values[0], values[0], values[0])
    if len(values) == 3:
        med, lo, hi = values
        return Range(med, lo, hi)
    raise ValueError(f"{what} takes MEDIAN or MEDIAN LO HI, got {len(values)} values")


def _iterations(args: argparse.Namespace) -> IterationsToTarget:
    base = MEASURED_ITERATIONS
    if args.selection_json is not None:
        base = IterationsToTarget.from_selection_json(args.selection_json)
    if args.iters is None and args.selection_speedup is None:
        return base
    for v in [*(args.iters or []), *(args.selection_speedup or [])]:
        if not v > 0:
            raise ValueError(f"iterations and speed-ups must be > 0, got {v:g}")
    return IterationsToTarget(
        random=_range(args.iters, "--iters", base.random),
        selection_speedup=_range(
            args.selection_speedup, "--selection-speedup", base.selection_speedup
        ),
        censored=base.censored and args.iters is None,
        source="command line" if args.iters is not None else base.source,
    )


def _prices(args: argparse.Namespace, trace_prices: Prices) -> Prices:
    base = Prices.preset(args.prices) if args.prices else trace_prices
    if args.spot_price is None and args.ondemand_price is None:
        return base
    return dataclasses.replace(
        base,
        ondemand_usd_per_gpu_hour=args.ondemand_price or base.ondemand_usd_per_gpu_hour,
        spot_usd_per_gpu_hour=args.spot_price or base.spot_usd_per_gpu_hour,
        name=f"{base.name} (overridden)",
        source="command-line override",
    )


def run_project(args: argparse.Namespace) -> int:
    from spotlight.actors.spot.projection import report, sweep

    try:
        shaped = load_shaped(args.trace)
        preset = cost_preset(args.preset)
        assume = Assumptions(
            **{f.name: getattr(args, f.name) for f in dataclasses.fields(Assumptions)}
        )
        iters = _iterations(args)
        result = project(shaped, preset=preset, assume=assume, iters=iters,
                         prices=_prices(args, shaped.shape.prices()))  # fmt: skip
        heat = None
        if args.heatmap is not None:
            heat = sweep.preemption_sweep(shaped, preset=preset, assume=assume,
                                          iterations=round(iters.random.median))  # fmt: skip
    except (TraceError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.png is not None:
        report.curves_png(result, args.png)
    if heat is not None:
        report.heatmap_png(heat, args.heatmap)
    if args.json:
        out = result.to_dict()
        if heat is not None:
            out["heatmap"] = heat.to_dict()
        print(json.dumps(out))
        return 0
    from rich.console import Console

    Console(width=max(report.WIDTH, Console().width)).print(report.table(result))
    return 0
