"""Sensitivity: where the systems part matters, and what an *assumed* selection speed-up buys.

``preemption_sweep``: synthetic steady pools (exactly ``spot_gpus`` GPUs of the trace's
node shape; every node lives an exponential time with the given preemptions per node-hour,
its replacement arrives 60 s after it goes), simulated for every preemption rate x
recovery time (what a restart-style recovery costs: process launch + rendezvous + weight
load, which also stands for every fresh node's start in all spot strategies). The cell is
restart's time over Spotlight-without-exploration's (> 1: the systems part helps), the
median over ``seeds`` pools.

``speedup_sweep``: strategy e under assumed selection speed-ups. The measured value
(selection.json) is 1.0; any other value here is an assumption, labelled so in every report.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

from spotlight.actors.spot.projection.assumptions import Assumptions, IterationsToTarget, Range
from spotlight.actors.spot.projection.costs import CostPreset
from spotlight.actors.spot.projection.project import project, strategy_iterations
from spotlight.actors.spot.projection.shaped import ShapedTrace
from spotlight.actors.spot.projection.simulate import simulate
from spotlight.actors.spot.trace import SpotTrace, synthesize_notices

__all__ = [
    "RATES_PER_NODE_HOUR",
    "RECOVERIES_S",
    "SPEEDUPS",
    "Heatmap",
    "preemption_sweep",
    "speedup_sweep",
    "steady_pool",
]

RATES_PER_NODE_HOUR = (0.1, 0.3, 1.0, 3.0, 10.0)
RECOVERIES_S = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
SPEEDUPS = (1.0, 1.5, 2.0, 4.0)
REPLACE_S = 60.0


@dataclass(frozen=True)
class Heatmap:
    rates: tuple[float, ...]
    recoveries_s: tuple[float, ...]
    ratio: tuple[tuple[float, ...], ...]
    """ratio[i][j]: restart hours / spotlight_no_explore hours at rates[i], recoveries_s[j]."""
    label: str

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "preemptions_per_node_hour": list(self.rates),
            "recovery_s": list(self.recoveries_s),
            "restart_hours_over_spotlight_no_explore": [list(r) for r in self.ratio],
        }


def steady_pool(nodes: int, rate_per_hour: float, horizon_s: float, seed: int) -> SpotTrace:
    """A pool of ``nodes`` nodes with exponential lives and 60 s replacements (no notices)."""
    rng = random.Random(seed)
    rows: list[tuple[float, str, str]] = []
    for slot in range(nodes):
        t, life = 0.0, 0
        while t < horizon_s:
            name = f"s{slot}-{life}"
            rows.append((t, "add", name))
            end = t + rng.expovariate(rate_per_hour / 3600)
            if end >= horizon_s:
                break
            rows.append((end, "remove", name))
            t, life = end + REPLACE_S, life + 1
    rows.sort(key=lambda r: (r[0], r[1] != "remove"))
    return SpotTrace.from_events(rows, source=f"steady pool {rate_per_hour:g}/node-h seed {seed}")


def preemption_sweep(
    shaped: ShapedTrace,
    *,
    preset: CostPreset,
    assume: Assumptions,
    iterations: int,
    rates: Sequence[float] = RATES_PER_NODE_HOUR,
    recoveries_s: Sequence[float] = RECOVERIES_S,
    seeds: int = 3,
) -> Heatmap:
    """The heat map described in the module docstring."""
    gpn = shaped.shape.gpus_per_node
    nodes = max(1, assume.spot_gpus // gpn)
    notice = shaped.shape.notice_s if assume.notice_s is None else assume.notice_s
    per_iter = (preset.rollout_gpu_s + preset.train_gpu_s) / assume.ondemand_gpus
    horizon = 2 * iterations * per_iter + 2 * max(recoveries_s) + 3600
    prices = shaped.shape.prices()
    grid = []
    for rate in rates:
        pools = [
            synthesize_notices(steady_pool(nodes, rate, horizon, seed), notice)
            for seed in range(seeds)
        ]
        row = []
        for rec in recoveries_s:
            p = replace(preset, process_launch_s=rec, group_init_s=0.0, base_load_s=0.0)
            ratios = []
            for pool in pools:
                hours = {
                    s: simulate(
                        s, pool, preset=p, assume=assume, gpus_per_node=gpn, prices=prices,
                        iterations=iterations,
                    ).wall_s
                    for s in ("restart", "spotlight_no_explore")
                }  # fmt: skip
                ratios.append(hours["restart"] / hours["spotlight_no_explore"])
            row.append(statistics.median(ratios))
        grid.append(tuple(row))
    label = (
        f"restart / spotlight_no_explore time to target; {preset.name}, {nodes} x {gpn}-GPU "
        f"spot nodes, SP {assume.sp_degree or preset.sp_degree}, notice {notice:g} s, "
        f"{iterations} iterations, median of {seeds} synthetic pools (PROJECTION)"
    )
    return Heatmap(tuple(rates), tuple(recoveries_s), tuple(grid), label)


def speedup_sweep(
    shaped: ShapedTrace,
    *,
    preset: CostPreset,
    assume: Assumptions,
    iters: IterationsToTarget,
    speedups: Sequence[float] = SPEEDUPS,
) -> list[dict[str, object]]:
    """Strategy e under each *assumed* selection speed-up: one labelled row per value."""
    rows: list[dict[str, object]] = []
    for s in speedups:
        assumed = replace(iters, selection_speedup=Range(s, s, s), source="ASSUMED speed-up")
        res = project(shaped, preset=preset, assume=assume, iters=assumed)
        rows.append(
            {
                "assumed_selection_speedup": s,
                "label": "ASSUMED, not measured (selection.json measured 1.0)"
                if s != 1.0
                else "the measured value",
                "iterations": strategy_iterations("spotlight", iters.random.median, s),
                "speedup_vs_ondemand": res.summary("spotlight", "speedup_vs_ondemand"),
                "cost_ratio_vs_ondemand": res.summary("spotlight", "cost_ratio_vs_ondemand"),
            }
        )
    return rows
