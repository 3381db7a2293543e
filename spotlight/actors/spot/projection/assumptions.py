"""The projection's assumptions, each a named, overridable setting with its source.

Two dataclasses: :class:`Assumptions` (the cluster and the systems model) and
:class:`IterationsToTarget` (the learning input: how many iterations random-seed Flow-GRPO
needs, and how much seed selection shortens that). The iteration default is the paired
measurement of issue 18 (``benchmarks/results/selection.json``, NFT on the latent testbed):
2 of 5 runs per arm reached the target within 40 iterations, so the median (45, one
validation interval past the budget) is a floor, and the per-pair ratio is 1.0 [0.89, 1.13].
So the default assumes **no** speed-up from selection; a speed-up is only ever an explicit
override, and reports label it as assumed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

__all__ = ["MEASURED_ITERATIONS", "Assumptions", "IterationsToTarget", "Range"]


@dataclass(frozen=True)
class Range:
    """A median with an interval ``lo <= median <= hi``."""

    median: float
    lo: float
    hi: float

    def __post_init__(self) -> None:
        vals = (self.lo, self.median, self.hi)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in vals):
            raise ValueError(f"range values must be finite numbers, got {vals}")
        if not self.lo <= self.median <= self.hi:
            raise ValueError(f"range must satisfy lo <= median <= hi, got {vals}")

    def points(self) -> tuple[float, ...]:
        """The distinct values lo, median, hi (in that order)."""
        return tuple(dict.fromkeys((self.lo, self.median, self.hi)))

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "lo": self.lo, "hi": self.hi}


@dataclass(frozen=True, kw_only=True)
class IterationsToTarget:
    """Iterations to the target validation score: the projection's learning input."""

    random: Range
    """Iterations random-seed Flow-GRPO needs (strategies a-d)."""
    selection_speedup: Range
    """How many times fewer iterations seed selection needs (strategy e): iters_ratio."""
    censored: bool = False
    """True when fewer than half the random-seed runs reached the target, so the median
    iterations are a floor rather than a measurement."""
    source: str = "override"

    def __post_init__(self) -> None:
        if self.random.lo <= 0:
            raise ValueError(
                f"iterations to target must be > 0, got lo={self.random.lo}; pass a positive "
                "count (--iters MEDIAN [LO HI]) measured by scripts/bench_selection.py"
            )
        if self.selection_speedup.lo <= 0:
            raise ValueError(
                f"selection speed-up must be > 0, got lo={self.selection_speedup.lo}; "
                "1.0 means no speed-up (--selection-speedup MEDIAN [LO HI])"
            )

    @classmethod
    def from_selection_json(cls, path: str | Path) -> IterationsToTarget:
        """Read issue 18's paired measurement (``scripts/bench_selection.py``'s output)."""
        data = json.loads(Path(path).read_text())
        try:
            runs = [float(v) for v in data["iters_to_target"]["random"]["per_run"]]
            ratio = data["iters_ratio"]
            reached = int(data["iters_to_target"]["random"]["reached"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a bench_selection result (missing {exc})") from None
        med = float(data["iters_to_target"]["random"]["median"])
        return cls(
            random=Range(med, min(runs), max(runs)),
            selection_speedup=Range(float(ratio["median"]), float(ratio["lo"]), float(ratio["hi"])),
            censored=2 * reached < len(runs),
            source=str(path),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "random": self.random.to_dict(),
            "selection_speedup": self.selection_speedup.to_dict(),
            "censored": self.censored,
            "source": self.source,
        }


MEASURED_ITERATIONS = IterationsToTarget(
    random=Range(45.0, 40.0, 45.0),
    selection_speedup=Range(1.0, 40.0 / 45.0, 45.0 / 40.0),
    censored=True,
    source="benchmarks/results/selection.json (issue 18, NFT: 5 paired seeds, 40 iterations; "
    "2 of 5 runs per arm reached base + 0.1, the rest censored at 45; "
    "iters_ratio 1.0 [0.89, 1.13])",
)


@dataclass(frozen=True, kw_only=True)
class Assumptions:
    """The cluster and the systems model (sources in docs/projection.md, "Assumptions")."""

    ondemand_gpus: int = 8
    """N: on-demand GPUs (trainer and rollouts) of strategies a, c, d, e."""
    spot_gpus: int = 8
    """M: the most spot GPUs a run holds (taken from the trace as offered); b gets N + M
    on-demand GPUs, the same count as Spotlight's peak."""
    sp_degree: int | None = None
    """GPUs per SP sampling group; None = the cost preset's."""
    restart_scope: Literal["group", "pool"] = "group"
    """What a preemption restarts in strategy c: the lost worker's SP ``group`` (the issue's
    definition), or the whole spot ``pool`` (one TorchElastic job: every membership change,
    joins included, restarts every spot worker)."""
    restart_version: Literal["full", "lora"] = "full"
    """What a restart-style worker pulls per iteration (the issue's c: full weights)."""
    link_gbps: float = 25.0
    """Bandwidth to each spot node for weight versions (lora.json's assumption)."""
    notice_s: float | None = None
    """Notice lead before each silent removal; None = the trace's cloud (AWS 120, GCP 30)."""
    loss_detect_s: float = 3.0
    """Seconds to detect a silent loss (the runtime's liveness: 3 missed 1 s heartbeats)."""
    commit_interval_steps: int = 1
    """Spotlight commits a sample's progress every this many denoising steps."""
    starts: int = 8
    """Start offsets spread evenly over the trace; the interval covers all of them."""
    max_sim_s: float = 60 * 24 * 3600.0
    """Refuse (ValueError) if the target is not reached within this simulated time."""

    def __post_init__(self) -> None:
        for name in ("ondemand_gpus", "commit_interval_steps", "starts"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not (isinstance(self.spot_gpus, int) and self.spot_gpus >= 0):
            raise ValueError(f"spot_gpus must be an int >= 0, got {self.spot_gpus!r}")
        if self.sp_degree is not None and not self.sp_degree >= 1:
            raise ValueError(f"sp_degree must be >= 1, got {self.sp_degree!r}")
        if self.restart_scope not in ("group", "pool"):
            raise ValueError(f"restart_scope must be 'group' or 'pool', got {self.restart_scope!r}")
        if self.restart_version not in ("full", "lora"):
            raise ValueError(
                f"restart_version must be 'full' or 'lora', got {self.restart_version!r}"
            )
        for name in ("link_gbps", "max_sim_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        for name in ("loss_detect_s", "notice_s"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
