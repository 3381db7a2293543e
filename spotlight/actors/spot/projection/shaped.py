"""A trace that says what its nodes are: GPUs per node and price per GPU-hour.

A projection bills every spot node, so it must know what one node *is*. That is a fact of
the trace (the AWS Bamboo trace recorded one-V100 ``p3.2xlarge`` instances), not a global
default: billing a one-GPU trace as eight-GPU nodes made spot look 3.9x dearer than it is.
The shape lives in the trace file as ``#@ key: value`` lines (the trace parser treats them
as comments, so the file stays a valid trace everywhere else)::

    #@ cloud: aws
    #@ instance: p3.2xlarge
    #@ gpu: V100-16GB
    #@ gpus_per_node: 1
    #@ ondemand_usd_per_gpu_hour: 3.06
    #@ spot_usd_per_gpu_hour: 0.826
    #@ price_source: AWS P3 list price, us-east-1; spot = on-demand x 0.27
    #@ notice_s: 120
    t_s,event,node
    ...

Required: ``gpus_per_node``, ``ondemand_usd_per_gpu_hour``, ``spot_usd_per_gpu_hour``.
Known optional keys are listed in :data:`OPTIONAL_KEYS`; an unknown key is an error (a
typo must not silently drop a setting). :func:`window` cuts a trace at a start offset, so a
run can start at any point of a long trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from spotlight.actors.spot.prices import Prices
from spotlight.actors.spot.trace import SpotTrace, TraceError, TraceEvent, parse_trace

__all__ = [
    "OPTIONAL_KEYS",
    "REQUIRED_KEYS",
    "InstanceShape",
    "ShapedTrace",
    "load_shaped",
    "parse_shaped",
    "window",
]

REQUIRED_KEYS = ("gpus_per_node", "ondemand_usd_per_gpu_hour", "spot_usd_per_gpu_hour")
OPTIONAL_KEYS = (
    "cloud",
    "instance",
    "gpu",
    "price_source",
    "notice_s",
    "source",
    "commit",
    "licence",
)
_EXAMPLE = (
    "#@ gpus_per_node: 1\n#@ ondemand_usd_per_gpu_hour: 3.06\n#@ spot_usd_per_gpu_hour: 0.826"
)


@dataclass(frozen=True, kw_only=True)
class InstanceShape:
    """What one node of a trace is, and what its GPU-hour costs."""

    gpus_per_node: int
    ondemand_usd_per_gpu_hour: float
    spot_usd_per_gpu_hour: float
    cloud: str = "unknown"
    instance: str = "unknown"
    gpu: str = "unknown"
    price_source: str = "trace metadata"
    notice_s: float = 0.0
    """The notice lead this cloud gives before a removal (AWS 120 s, GCP 30 s): used to
    synthesise notices, because neither public trace recorded them."""

    def __post_init__(self) -> None:
        if not (isinstance(self.gpus_per_node, int) and self.gpus_per_node >= 1):
            raise ValueError(f"gpus_per_node must be an int >= 1, got {self.gpus_per_node!r}")
        if not (math.isfinite(self.notice_s) and self.notice_s >= 0):
            raise ValueError(f"notice_s must be a finite number >= 0, got {self.notice_s!r}")
        self.prices()  # validates both prices

    def prices(self) -> Prices:
        """The trace's prices as a :class:`Prices` (per GPU-hour)."""
        return Prices(
            ondemand_usd_per_gpu_hour=self.ondemand_usd_per_gpu_hour,
            spot_usd_per_gpu_hour=self.spot_usd_per_gpu_hour,
            name=f"{self.cloud} {self.instance}",
            source=self.price_source,
        )


@dataclass(frozen=True)
class ShapedTrace:
    """A validated trace with its instance shape and where it came from."""

    trace: SpotTrace
    shape: InstanceShape
    name: str

    def max_gpus(self) -> int:
        """The most spot GPUs the trace ever has alive at once."""
        peak = max((n for _, n in self.trace.capacity_steps()), default=0)
        return peak * self.shape.gpus_per_node

    def check_cap(self, cap_gpus: int) -> None:
        """Refuse a spot cap the trace never offers (the run would silently get less)."""
        if cap_gpus > self.max_gpus():
            raise ValueError(
                f"spot cap {cap_gpus} GPUs is more than trace {self.name} ever offers "
                f"({self.max_gpus()} GPUs at its peak, {self.shape.gpus_per_node} per node); "
                f"lower --spot-gpus to at most {self.max_gpus()}"
            )
        if cap_gpus % self.shape.gpus_per_node:
            raise ValueError(
                f"spot cap {cap_gpus} GPUs is not a whole number of {self.name}'s "
                f"{self.shape.gpus_per_node}-GPU nodes; use a multiple of "
                f"{self.shape.gpus_per_node}"
            )


def parse_shaped(text: str, *, source: str) -> ShapedTrace:
    """Parse trace text with its ``#@`` instance metadata (see the module docstring)."""
    meta: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line.startswith("#@"):
            continue
        key, sep, value = line[2:].partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise TraceError(source, lineno, f"metadata line must be '#@ key: value', got {line!r}")
        if key not in REQUIRED_KEYS + OPTIONAL_KEYS:
            valid = ", ".join(REQUIRED_KEYS + OPTIONAL_KEYS)
            raise TraceError(source, lineno, f"unknown metadata key {key!r}; valid keys: {valid}")
        meta[key] = value
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise TraceError(
            source,
            None,
            f"no instance metadata {missing}: a projection must know what one node is and "
            f"what it costs. Add lines like these above the header:\n{_EXAMPLE}",
        )
    try:
        shape = InstanceShape(
            gpus_per_node=int(meta["gpus_per_node"]),
            ondemand_usd_per_gpu_hour=float(meta["ondemand_usd_per_gpu_hour"]),
            spot_usd_per_gpu_hour=float(meta["spot_usd_per_gpu_hour"]),
            notice_s=float(meta.get("notice_s", 0.0)),
            **{k: meta[k] for k in ("cloud", "instance", "gpu", "price_source") if k in meta},
        )
    except ValueError as exc:
        raise TraceError(source, None, f"bad instance metadata: {exc}") from None
    return ShapedTrace(parse_trace(text, source=source), shape, Path(source).stem)


def load_shaped(path: str | Path) -> ShapedTrace:
    """Read a trace file that carries its instance shape."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise TraceError(str(path), None, f"cannot read trace file: {exc}") from exc
    return parse_shaped(text, source=str(path))


def window(trace: SpotTrace, start_s: float) -> SpotTrace:
    """The trace as seen by a run that starts at ``start_s``: nodes alive then are added at
    0, later events are shifted by ``-start_s``, earlier ones dropped."""
    if not (math.isfinite(start_s) and start_s >= 0):
        raise ValueError(f"start offset must be a finite number >= 0, got {start_s!r}")
    if start_s == 0:
        return trace
    alive: dict[str, bool] = {}  # node -> noticed
    later: list[TraceEvent] = []
    for e in trace.events:
        if e.t_s <= start_s:
            if e.event == "add":
                alive[e.node] = False
            elif e.event == "notice":
                alive[e.node] = True
            else:
                alive.pop(e.node, None)
        else:
            later.append(TraceEvent(e.t_s - start_s, e.event, e.node, None, e.synthetic))
    head = [TraceEvent(0.0, "add", n, None) for n in alive]
    head += [TraceEvent(0.0, "notice", n, None, True) for n, noticed in alive.items() if noticed]
    if not head and not later:
        raise ValueError(f"start offset {start_s:g} s is past the trace's last event")
    return SpotTrace(head + later, source=f"{trace.source} (from {start_s:g}s)")
