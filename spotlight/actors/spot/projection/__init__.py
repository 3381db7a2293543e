"""Projection: time and dollars to a target score on a real spot trace (simulated, labelled so).

On a 2-core CPU machine wall time cannot say how much sooner and cheaper Spotlight reaches
a target on a real cluster, so this package simulates it: ``shaped`` (traces that carry
their instance shape and prices), ``costs`` (calibrated per-step cost presets),
``assumptions`` (every other setting, with its source), ``simulate`` (one strategy over one
trace window), ``project`` (every strategy over every scenario: median and interval),
``sweep`` (sensitivity: preemption rate x recovery time; assumed selection speed-ups) and
``report`` (terminal table, JSON, PNGs). The model and its sources: docs/projection.md.
"""

from spotlight.actors.spot.projection.assumptions import (
    MEASURED_ITERATIONS,
    Assumptions,
    IterationsToTarget,
    Range,
)
from spotlight.actors.spot.projection.costs import COST_PRESETS, CostPreset, cost_preset
from spotlight.actors.spot.projection.project import METRICS, Projection, Scenario, project
from spotlight.actors.spot.projection.shaped import (
    InstanceShape,
    ShapedTrace,
    load_shaped,
    parse_shaped,
    window,
)
from spotlight.actors.spot.projection.simulate import STRATEGIES, Run, simulate

__all__ = [
    "COST_PRESETS",
    "MEASURED_ITERATIONS",
    "METRICS",
    "STRATEGIES",
    "Assumptions",
    "CostPreset",
    "InstanceShape",
    "IterationsToTarget",
    "Projection",
    "Range",
    "Run",
    "Scenario",
    "ShapedTrace",
    "cost_preset",
    "load_shaped",
    "parse_shaped",
    "project",
    "simulate",
    "window",
]
