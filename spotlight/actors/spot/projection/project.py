"""Every strategy over every scenario of one trace: the headline as median and interval.

A *scenario* is one start offset into the trace (``Assumptions.starts`` of them, spread
evenly over its span), one iterations-to-target value (lo, median, hi of
:class:`IterationsToTarget.random`) and, for strategy e only, one selection speed-up (lo,
median, hi). Each metric is reported as ``{median, lo, hi}``: the median over start offsets
at the median iterations and speed-up, and the min and max over every scenario. Ratios
compare a strategy with ``ondemand`` (and ``ondemand_same_gpus``) in the *same* scenario.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from spotlight.actors.spot.prices import Prices
from spotlight.actors.spot.projection.assumptions import Assumptions, IterationsToTarget
from spotlight.actors.spot.projection.costs import CostPreset
from spotlight.actors.spot.projection.shaped import ShapedTrace, window
from spotlight.actors.spot.projection.simulate import STRATEGIES, Run, simulate
from spotlight.actors.spot.trace import synthesize_notices

__all__ = ["METRICS", "Projection", "Scenario", "project", "start_offsets", "strategy_iterations"]

METRICS = (
    "hours_to_target",
    "usd_to_target",
    "speedup_vs_ondemand",
    "cost_ratio_vs_ondemand",
    "gpu_hours_spot",
    "steps_lost",
)
"""The benchmark's keys per trace and strategy (issue 20), each as {median, lo, hi}."""
_EXTRA = (
    "speedup_vs_same_gpus",
    "cost_ratio_vs_same_gpus",
    "gpu_hours_ondemand",
    "preemptions",
    "recoveries",
    "iterations",
)


@dataclass(frozen=True)
class Scenario:
    start_s: float
    iterations: float
    speedup: float


@dataclass
class Projection:
    """The result: per strategy and scenario, the run; and the summary statistics."""

    trace: ShapedTrace
    preset: CostPreset
    assume: Assumptions
    iters: IterationsToTarget
    prices: Prices
    notice_s: float
    runs: dict[Scenario, dict[str, Run]] = field(default_factory=dict)
    label: str = "PROJECTION (discrete-event simulation; not a measurement)"

    def median_scenario(self, start_s: float | None = None) -> Scenario:
        s = self.iters
        first = min(sc.start_s for sc in self.runs) if start_s is None else start_s
        return Scenario(first, s.random.median, s.selection_speedup.median)

    def metric(self, strategy: str, name: str, sc: Scenario) -> float:
        """One metric of one strategy in one scenario."""
        run = self.runs[sc][strategy]
        ref = {
            "ondemand": self.runs[sc]["ondemand"],
            "same_gpus": self.runs[sc]["ondemand_same_gpus"],
        }
        value: Callable[[], float] = {
            "hours_to_target": lambda: run.wall_s / 3600,
            "usd_to_target": lambda: run.usd,
            "speedup_vs_ondemand": lambda: _ratio(ref["ondemand"].wall_s, run.wall_s),
            "cost_ratio_vs_ondemand": lambda: _ratio(ref["ondemand"].usd, run.usd),
            "speedup_vs_same_gpus": lambda: _ratio(ref["same_gpus"].wall_s, run.wall_s),
            "cost_ratio_vs_same_gpus": lambda: _ratio(ref["same_gpus"].usd, run.usd),
            "gpu_hours_spot": lambda: run.gpu_s_spot / 3600,
            "gpu_hours_ondemand": lambda: run.gpu_s_ondemand / 3600,
            "steps_lost": lambda: run.steps_lost,
            "preemptions": lambda: float(run.preemptions),
            "recoveries": lambda: float(run.recoveries),
            "iterations": lambda: float(run.iterations),
        }[name]
        return value()

    def summary(self, strategy: str, name: str) -> dict[str, float]:
        """``{median, lo, hi}`` of one metric (see the module docstring)."""
        med = self.iters.random.median, self.iters.selection_speedup.median
        at_median = [
            self.metric(strategy, name, sc)
            for sc in self.runs
            if (sc.iterations, sc.speedup) == med
        ]
        every = [self.metric(strategy, name, sc) for sc in self.runs]
        return {"median": statistics.median(at_median), "lo": min(every), "hi": max(every)}

    def table(self) -> dict[str, dict[str, dict[str, float]]]:
        """strategy -> metric -> {median, lo, hi}, for METRICS and the table's extras."""
        return {s: {m: self.summary(s, m) for m in (*METRICS, *_EXTRA)} for s in STRATEGIES}

    def to_dict(self, *, timelines: bool = True) -> dict[str, object]:
        sc = self.median_scenario()
        out: dict[str, object] = {
            "label": self.label,
            "trace": self.trace.name,
            "instance": vars(self.trace.shape) | {"notice_s_used": self.notice_s},
            "preset": self.preset.name,
            "prices": vars(self.prices),
            "assumptions": self.assume.to_dict(),
            "iterations_to_target": self.iters.to_dict(),
            "starts_s": sorted({s.start_s for s in self.runs}),
            "strategies": self.table(),
        }
        if timelines:
            out["median_scenario_runs"] = {k: r.to_dict() for k, r in self.runs[sc].items()}
        return out


def _ratio(num: float, den: float) -> float:
    return math.inf if den == 0 else num / den


def start_offsets(trace: ShapedTrace, count: int) -> list[float]:
    """``count`` start offsets spread evenly over the first 3/4 of the trace's span (a run
    that starts later would mostly see the pool frozen after the last event)."""
    span = trace.trace.end_s * 0.75
    return [span * i / count for i in range(count)]


def strategy_iterations(strategy: str, iterations: float, speedup: float) -> int:
    """Whole iterations a strategy needs: e needs ``iterations / speedup``, rounded up."""
    need = iterations / speedup if strategy == "spotlight" else iterations
    return max(1, math.ceil(need - 1e-9))


def project(
    shaped: ShapedTrace,
    *,
    preset: CostPreset,
    assume: Assumptions,
    iters: IterationsToTarget,
    prices: Prices | None = None,
    starts: Sequence[float] | None = None,
) -> Projection:
    """Simulate every strategy over every scenario (see the module docstring)."""
    shaped.check_cap(assume.spot_gpus)
    notice = shaped.shape.notice_s if assume.notice_s is None else assume.notice_s
    trace = synthesize_notices(shaped.trace, notice)
    prices = prices or shaped.shape.prices()
    result = Projection(shaped, preset, assume, iters, prices, notice)
    offsets = list(starts) if starts is not None else start_offsets(shaped, assume.starts)
    cache: dict[tuple[str, float, int], Run] = {}
    for start in offsets:
        win = window(trace, start)
        for n_iter in iters.random.points():
            for speedup in iters.selection_speedup.points():
                runs = {}
                for s in STRATEGIES:
                    need = strategy_iterations(s, n_iter, speedup)
                    key = (s, start, need)
                    if key not in cache:
                        cache[key] = simulate(
                            s,
                            win,
                            preset=preset,
                            assume=assume,
                            gpus_per_node=shaped.shape.gpus_per_node,
                            prices=prices,
                            iterations=need,
                        )
                    runs[s] = cache[key]
                result.runs[Scenario(start, n_iter, speedup)] = runs
    return result
