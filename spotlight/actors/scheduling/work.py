"""The work units every worker kind shares, and their wire forms.

A :class:`SampleRequest` is one trajectory; a :class:`Lease` lets one worker run it (with a
fencing token) from its last committed :class:`Snapshot`; a submission group comes back as one
:class:`GroupResult`; a drained worker answers a :class:`DrainReport`. The scheduler, rollout
workers, explorers, SP groups, the preemption handler and nodes all speak these, so they live
here and not beside the first module that needed them. Pure data: no actors, no tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from spotlight.models.sampler import SamplerConfig
from spotlight.runtime.codec import register_wire_type

__all__ = [
    "KINDS",
    "PULL_BATCH",
    "DrainReport",
    "GroupResult",
    "Lease",
    "SampleRequest",
    "Snapshot",
    "sampler_from_dict",
]

PULL_BATCH = 16
"""Requests a sampling worker (explorer, rollout worker) pulls and samples together, unless
configured otherwise: one default for every kind of worker and the config."""

# The trainer's sampler travels to spot nodes (coordinator answer, ExploreSettings).
register_wire_type(SamplerConfig, name="spotlight.SamplerConfig")


KINDS: tuple[str, ...] = ("explore", "rollout")


@register_wire_type(name="spotlight.SampleRequest")
@dataclass(frozen=True, kw_only=True)
class SampleRequest:
    """One trajectory to sample; immutable, identified by ``request_id``."""

    request_id: str
    """Unique over the table's whole life (also after delivery)."""
    prompt: str
    seed: int
    """Initial noise seed; with the step index it fixes all noise of the trajectory."""
    num_steps: int
    """Denoising steps of the full trajectory (>= 1)."""
    priority: int = 0
    """Higher is served first."""
    deadline: float | None = None
    """Clock time by which the submitter wants it; orders work among equal priorities."""
    kind: Literal["explore", "rollout"]
    group_id: str
    """Submission group: results are delivered per group, once all of it is done."""
    weight_version: int | None = None
    """The policy version that must sample it (a trainer rollout is on-policy: θ_k exactly);
    None = whatever the worker holds (exploration tolerates stale weights)."""

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str) or not self.request_id:
            raise ValueError(f"request_id must be a non-empty str, got {self.request_id!r}")
        if not isinstance(self.group_id, str) or not self.group_id:
            raise ValueError(f"group_id must be a non-empty str, got {self.group_id!r}")
        if not isinstance(self.prompt, str):
            raise ValueError(f"prompt must be a str, got {type(self.prompt).__name__}")
        for name in ("seed", "num_steps", "priority"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.weight_version is not None and (
            not isinstance(self.weight_version, int)
            or isinstance(self.weight_version, bool)
            or self.weight_version < 0
        ):
            raise ValueError(
                f"weight_version must be an int >= 0 or None, got {self.weight_version!r}"
            )
        if self.deadline is not None and not math.isfinite(self.deadline):
            raise ValueError(f"deadline must be a finite clock time or None, got {self.deadline}")


@register_wire_type(name="spotlight.Snapshot")
@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """Committed progress of a trajectory at a step boundary.

    ``step`` is the number of denoising steps already done (1..num_steps): resuming runs
    steps ``step .. num_steps-1``. ``payload`` is opaque to the table (latent, log-probs
    and trajectory so far, noise-stream position); tensors are fine.
    """

    step: int
    payload: Any


@register_wire_type(name="spotlight.Lease")
@dataclass(frozen=True)
class Lease:
    """Permission for ``worker_id`` to run ``request`` until ``expires_at`` (renewable)."""

    request: SampleRequest
    worker_id: str
    token: int
    """Fencing token: pass it back with every commit and the result."""
    expires_at: float
    resume_from: Snapshot | None
    """Latest committed snapshot, or None to start from step 0."""


@register_wire_type(name="spotlight.GroupResult")
@dataclass(frozen=True, kw_only=True)
class GroupResult:
    """A completed submission group: its requests and results, in submission order."""

    group_id: str
    requests: list[SampleRequest]
    results: list[Any]


@register_wire_type(name="spotlight.DrainReport")
@dataclass(frozen=True, kw_only=True)
class DrainReport:
    """What a worker did when drained before a deadline."""

    worker_id: str
    released: int
    """Leases handed back (-1: the release ask failed; lease expiry takes over)."""
    snapshots: dict[str, int]
    """Request id -> step of the snapshot committed with the release."""
    finished_inflight: bool
    """The step running at the notice was finished (it fitted before the deadline)."""
    abandoned_steps: int
    """Sample-steps that were running and were given up (recomputed elsewhere): 0, or the
    requests of the step that was running (1 unless ``batch_held``)."""
    seconds: float


def sampler_from_dict(data: dict[str, Any]) -> SamplerConfig:
    """Inverse of the ``sampler`` entry of ``register_node``'s answer."""
    data = dict(data)
    if data.get("sde_window") is not None:
        data["sde_window"] = tuple(data["sde_window"])
    return SamplerConfig(**data)
