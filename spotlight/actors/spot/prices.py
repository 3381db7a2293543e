"""GPU prices and cost accounting: how many GPU-hours each node class used, and the bill.

Prices are per **GPU-hour** (an 8-GPU instance's hourly price divided by 8), so node
sizes never hide in a price. Defaults come from public price lists; they drift, so every
preset names its source and date and every price can be overridden in the run config.

Presets (USD per GPU-hour):

``aws-p5`` (the default)
    on-demand 12.29: AWS EC2 on-demand list price of ``p5.48xlarge`` (8x H100 80 GB),
    US East (N. Virginia), $98.32/h, https://aws.amazon.com/ec2/pricing/on-demand/
    (the 2023-2025 list price, also quoted in "H100 GPU Instance Pricing On AWS",
    The Next Platform, 2023-07-27). Spot 3.32 = on-demand x 0.27: spot H100 capacity runs
    69-77% under on-demand (DESIGN.md; Spotlight paper, arXiv 2606.19004); we take the
    73% midpoint rather than one day's spot quote, which moves daily.
``gcp-a3-high-2026``
    on-demand 3.00, spot 2.25: GCP ``a3-highgpu`` H100 as reported for March 2026 after
    the 2025 hyperscaler price cuts (costnimbus.com, "GPU cost management for ML teams");
    a *pessimistic* preset where spot is only 25% under on-demand. Compare both presets
    before claiming a saving: the spot discount is the whole lever.

Billing model: per-second, from a node's start to its stop (AWS and GCP bill GPU
instances per second). A spot node is billed for its whole life, busy or idle.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from rich.table import Table

    from spotlight.actors.spot.trace import SpotTrace

__all__ = [
    "NODE_CLASSES",
    "PRICE_PRESETS",
    "CostMeter",
    "CostSummary",
    "Prices",
    "cost_table",
]

NodeClass = Literal["ondemand", "spot"]
NODE_CLASSES: tuple[str, ...] = ("ondemand", "spot")


@dataclass(frozen=True, kw_only=True)
class Prices:
    """USD per GPU-hour for each node class."""

    ondemand_usd_per_gpu_hour: float = 12.29
    """On-demand price (default: AWS p5.48xlarge $98.32/h / 8 GPUs, us-east-1)."""
    spot_usd_per_gpu_hour: float = 3.32
    """Spot price (default: on-demand x 0.27, the 73% discount midpoint; see module doc)."""
    name: str = "aws-p5"
    """A label for reports."""
    source: str = "AWS EC2 on-demand list price p5.48xlarge; spot at the 73% discount midpoint"
    """Where the numbers come from, printed under cost tables."""

    def __post_init__(self) -> None:
        for attr in ("ondemand_usd_per_gpu_hour", "spot_usd_per_gpu_hour"):
            v = getattr(self, attr)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{attr} must be a finite price >= 0 USD, got {v!r}")

    def per_gpu_hour(self, node_class: str) -> float:
        """The price of one GPU-hour of ``node_class`` ("ondemand" or "spot")."""
        if node_class == "ondemand":
            return self.ondemand_usd_per_gpu_hour
        if node_class == "spot":
            return self.spot_usd_per_gpu_hour
        raise ValueError(f"unknown node class {node_class!r}; valid: {NODE_CLASSES}")

    @property
    def spot_discount(self) -> float:
        """Fraction saved by spot vs on-demand (0.73 means 73% cheaper)."""
        od = self.ondemand_usd_per_gpu_hour
        return 0.0 if od == 0 else 1.0 - self.spot_usd_per_gpu_hour / od

    @classmethod
    def preset(cls, name: str) -> Prices:
        """A named preset from :data:`PRICE_PRESETS`."""
        try:
            return PRICE_PRESETS[name]
        except KeyError:
            raise ValueError(
                f"unknown price preset {name!r}; valid presets: {sorted(PRICE_PRESETS)}"
            ) from None


PRICE_PRESETS: dict[str, Prices] = {
    "aws-p5": Prices(),
    "gcp-a3-high-2026": Prices(
        ondemand_usd_per_gpu_hour=3.00,
        spot_usd_per_gpu_hour=2.25,
        name="gcp-a3-high-2026",
        source="GCP a3-highgpu H100, March 2026 as reported by costnimbus.com (pessimistic)",
    ),
}


@dataclass(frozen=True)
class CostSummary:
    """GPU-hours and dollars per node class."""

    gpu_hours: Mapping[str, float]
    dollars: Mapping[str, float]
    prices: Prices

    @property
    def total_gpu_hours(self) -> float:
        return sum(self.gpu_hours.values())

    @property
    def total_dollars(self) -> float:
        return sum(self.dollars.values())

    def to_dict(self) -> dict[str, float]:
        out = {f"{c}_gpu_hours": self.gpu_hours[c] for c in NODE_CLASSES}
        out |= {f"{c}_usd": self.dollars[c] for c in NODE_CLASSES}
        out["total_usd"] = self.total_dollars
        return out


@dataclass
class CostMeter:
    """Accumulates GPU-seconds per node class from (start, stop) intervals.

    Times are seconds on any one clock (trace time, or wall time for a live run); only
    differences matter. Intervals are added, never merged: two intervals of one node that
    overlap are billed twice, because two instances were running.
    """

    prices: Prices = field(default_factory=Prices)
    _gpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(NODE_CLASSES, 0.0))

    def add_interval(
        self, node_class: str, start_s: float, stop_s: float, *, gpus: int = 1
    ) -> None:
        """Bill ``gpus`` GPUs of ``node_class`` from ``start_s`` to ``stop_s``."""
        if node_class not in NODE_CLASSES:
            raise ValueError(f"unknown node class {node_class!r}; valid: {NODE_CLASSES}")
        if not (math.isfinite(start_s) and math.isfinite(stop_s)) or stop_s < start_s:
            raise ValueError(f"interval must satisfy start <= stop, got ({start_s}, {stop_s})")
        if gpus < 0:
            raise ValueError(f"gpus must be >= 0, got {gpus}")
        self._gpu_s[node_class] += (stop_s - start_s) * gpus

    def add_intervals(
        self, node_class: str, intervals: Iterable[tuple[float, float]], *, gpus: int = 1
    ) -> None:
        for start, stop in intervals:
            self.add_interval(node_class, start, stop, gpus=gpus)

    def add_trace(
        self, trace: SpotTrace, *, gpus_per_node: int, until_s: float | None = None
    ) -> None:
        """Bill every spot node of ``trace`` for its lifetime, up to ``until_s``.

        ``until_s`` defaults to the trace's last event; nodes alive then are billed up to
        it, lifetimes starting after it are not billed.
        """
        end = trace.end_s if until_s is None else until_s
        for lt in trace.lifetimes():
            if lt.start_s < end:
                self.add_interval(
                    "spot", lt.start_s, lt.start_s + lt.duration_s(end), gpus=gpus_per_node
                )

    def gpu_hours(self, node_class: str) -> float:
        if node_class not in NODE_CLASSES:
            raise ValueError(f"unknown node class {node_class!r}; valid: {NODE_CLASSES}")
        return self._gpu_s[node_class] / 3600.0

    def dollars(self, node_class: str) -> float:
        return self.gpu_hours(node_class) * self.prices.per_gpu_hour(node_class)

    def summary(self) -> CostSummary:
        return CostSummary(
            gpu_hours={c: self.gpu_hours(c) for c in NODE_CLASSES},
            dollars={c: self.dollars(c) for c in NODE_CLASSES},
            prices=self.prices,
        )


def cost_table(rows: Mapping[str, CostSummary], *, title: str = "Cost") -> Table:
    """A rich table with one row per labelled summary (e.g. one per strategy)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("run")
    table.add_column("on-demand GPU-h", justify="right")
    table.add_column("spot GPU-h", justify="right")
    table.add_column("on-demand $", justify="right")
    table.add_column("spot $", justify="right")
    table.add_column("total $", justify="right")
    prices: Prices | None = None
    for label, s in rows.items():
        prices = s.prices
        table.add_row(
            label,
            f"{s.gpu_hours['ondemand']:.2f}",
            f"{s.gpu_hours['spot']:.2f}",
            f"{s.dollars['ondemand']:.2f}",
            f"{s.dollars['spot']:.2f}",
            f"{s.total_dollars:.2f}",
        )
    if prices is not None:
        table.caption = (
            f"prices ({prices.name}): on-demand ${prices.ondemand_usd_per_gpu_hour:.2f}, "
            f"spot ${prices.spot_usd_per_gpu_hour:.2f} per GPU-hour; {prices.source}"
        )
    return table
