"""One typed record per metric topic: what a publisher sends and what every reader reads.

Why: the view, the piped event lines and the trackers used to read topics by field name
while each publisher chose its own names, so the Exploration panel read ``budget_s`` while
the planner sent ``budget_gpu_s``, and the Scheduler panel waited for a topic nobody sent.
Now a topic is a dataclass here. A publisher builds it (``metrics.publish_record(rec)``)
and every reader parses with ``Rec.read(fields)``: a record that lacks a field or carries
the wrong type is refused at the publisher (``MetricsPublisher.publish`` checks every
registered topic, naming what is wrong) and shows as *unreadable* in the view, never as a
silent "—".

=============  =====================  ==================================================
topic          source                 record
=============  =====================  ==================================================
node           node id                :class:`NodeRecord` (coordinator, each period)
cost           coordinator            :class:`CostRecord` (bill + spot metrics)
runtime        node id                :class:`RuntimeRecord` (monitor, each period)
sp_group       ``sp/<node>``          :class:`SPGroupRecord` (spot node, each period)
scheduler      scheduler actor name   :class:`SchedulerRecord` (on-demand node relay)
trainer        ``trainer``            :class:`TrainerRecord` (rank 0, each iteration)
validation     ``trainer``            :class:`ValidationRecord`
val_images     ``trainer``            :class:`ValImagesRecord` (image strip on disk)
exploration    ``trainer``            :class:`ExplorationRecord` (the seeds it trained on)
planner        ``planner``            :class:`PlannerRecord` (the budget it spent)
preemption     node id                :class:`PreemptionRecord` (one per event)
rewards        ``trainer``            :class:`RewardsRecord` (reward client)
rollouts       ``trainer``            :class:`RolloutsRecord` (pooled batch)
=============  =====================  ==================================================

Any other well-formed topic (e.g. ``reward_pool``, written once at the end) is kept and
written as it comes. Records are flat where they can be: only scalar fields reach the
monitor's histories (see ``actor.HISTORY_TOPICS``), so a required field of a history topic
is a scalar.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

__all__ = [
    "RECORDS",
    "CostRecord",
    "ExplorationRecord",
    "NodeRecord",
    "PlannerRecord",
    "PreemptionRecord",
    "Record",
    "RewardsRecord",
    "RolloutsRecord",
    "RuntimeRecord",
    "SPGroupRecord",
    "SchedulerRecord",
    "TrainerRecord",
    "ValImagesRecord",
    "ValidationRecord",
    "check_fields",
]

R = TypeVar("R", bound="Record")


@dataclass(frozen=True, kw_only=True)
class Record:
    """Base of every typed record; ``TOPIC`` names the topic it is published under."""

    TOPIC: ClassVar[str] = ""

    def fields(self) -> dict[str, Any]:
        """The record as the ``fields`` of a :class:`MetricRecord` (shallow copy)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def read(cls: type[R], fields: Mapping[str, Any]) -> R | None:
        """The record in ``fields``, or None when a field is missing or of the wrong type.

        Unknown extra fields are ignored (a newer publisher may add some)."""
        try:
            return cls.parse(fields)
        except ValueError:
            return None

    @classmethod
    def parse(cls: type[R], fields: Mapping[str, Any]) -> R:
        """Like :meth:`read`, but ``ValueError`` naming each bad field."""
        values, problems = {}, []
        for name, (tp, required) in _schema(cls).items():
            if name not in fields:
                if required:
                    problems.append(f"{name} missing")
                continue
            value = fields[name]
            if not _accepts(tp, value):
                problems.append(f"{name}={value!r:.40} is not {_type_name(tp)}")
                continue
            values[name] = float(value) if tp is float and isinstance(value, int) else value
        if problems:
            raise ValueError(f"{cls.TOPIC!r} record ({cls.__name__}): {'; '.join(problems)}")
        return cls(**values)


_SCHEMAS: dict[type, dict[str, tuple[Any, bool]]] = {}


def _schema(cls: type) -> dict[str, tuple[Any, bool]]:
    """field name -> (annotation, required) of a record class (computed once per class)."""
    known = _SCHEMAS.get(cls)
    if known is not None:
        return known
    hints = typing.get_type_hints(cls)
    schema = _SCHEMAS[cls] = {
        f.name: (
            hints[f.name],
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
    }
    return schema


def _accepts(tp: Any, value: Any) -> bool:
    """Whether ``value`` (plain data) fits annotation ``tp`` (scalars, unions, list, dict)."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is list or tp is list:
        args = typing.get_args(tp)
        return isinstance(value, list) and (not args or all(_accepts(args[0], v) for v in value))
    if origin is dict or tp is dict:
        args = typing.get_args(tp)
        return isinstance(value, dict) and (
            not args or all(_accepts(args[1], v) for v in value.values())
        )
    raise TypeError(f"records.py: unsupported field annotation {tp!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# ============================================================================ the records


@dataclass(frozen=True, kw_only=True)
class NodeRecord(Record):
    """One node's membership and bill so far (source: the node id)."""

    TOPIC: ClassVar[str] = "node"
    kind: str
    """``ondemand`` or ``spot``."""
    status: str
    """``alive``, ``notice`` or ``gone``."""
    gpus: int
    gpu_hours: float
    cost_usd: float


@dataclass(frozen=True, kw_only=True)
class CostRecord(Record):
    """The metered bill and the spot metrics no other tool shows (source: coordinator).

    GPU-hours and dollars are on the pool's clock (a trace played at 6× bills 6 s per wall
    second); ``usd_per_hour`` is the rate the nodes alive now are billed at."""

    TOPIC: ClassVar[str] = "cost"
    ondemand_gpu_hours: float
    spot_gpu_hours: float
    ondemand_usd: float
    spot_usd: float
    total_usd: float
    usd_per_hour: float
    live_nodes: int
    """Spot nodes alive now (a noticed node still counts until it leaves)."""
    alive_spot_gpus: int
    preemptions_notice: int
    preemptions_silent: int
    rejoined: int
    """Nodes found gone that came back from the same process (not preemptions)."""
    work_lost_steps: int
    """Denoising steps abandoned by preempted nodes (what a resumed request recomputes)."""


@dataclass(frozen=True, kw_only=True)
class RuntimeRecord(Record):
    """One runtime's actors (source: its node id; from ``runtime_fields``)."""

    TOPIC: ClassVar[str] = "runtime"
    address: str | None
    actors: list[dict[str, Any]]
    peers: int
    pending_calls: int | None = None
    queued_messages: int | None = None
    restarts: int | None = None


@dataclass(frozen=True, kw_only=True)
class SPGroupRecord(Record):
    """A spot node's elastic SP group (source: ``sp/<node>``)."""

    TOPIC: ClassVar[str] = "sp_group"
    node: str
    group: str | None
    epoch: int
    degree: int
    members: int
    active: int
    status: str | None
    request: list[Any] | None = None
    reforms: int | None = None
    reform_last_s: float | None = None
    lost: int | None = None
    weights_version: int | None = None


@dataclass(frozen=True, kw_only=True)
class SchedulerRecord(Record):
    """One pull scheduler's queue and leases (source: the scheduler actor's name)."""

    TOPIC: ClassVar[str] = "scheduler"
    queue_depth: int
    active_leases: int
    submitted: int
    completed: int
    re_leases: int
    """Requests leased again after a lease expired or was handed back."""
    expired: int
    stale_results: int
    """Results of old leases (a fencing token that lost), discarded."""
    steps_recomputed: int
    workers: int
    """Workers that have pulled from it."""


@dataclass(frozen=True, kw_only=True)
class TrainerRecord(Record):
    """One trainer iteration (source: ``trainer``, rank 0 only)."""

    TOPIC: ClassVar[str] = "trainer"
    iteration: int
    loss: float | None
    reward_mean: float | None
    reward_std: float | None
    zero_std_fraction: float | None
    iteration_s: float
    weight_version: int
    world: int
    grad_norm: float | None = None
    first_ratio_dev: float | None = None
    approx_kl: float | None = None
    rollout_s: float | None = None
    reward_s: float | None = None
    train_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class ValidationRecord(Record):
    """A validation score (ODE sampler, held-out prompts, fixed seeds)."""

    TOPIC: ClassVar[str] = "validation"
    iteration: int
    score: float | None
    spread: float | None
    val_s: float


@dataclass(frozen=True, kw_only=True)
class ValImagesRecord(Record):
    """Validation images: one seed per prompt, drawn side by side in one PNG strip.

    The strip lives in the run directory (``path`` is relative to it), so metrics.jsonl
    stays small and the trackers read the pixels where the monitor runs (rank 0's node)."""

    TOPIC: ClassVar[str] = "val_images"
    iteration: int
    path: str
    prompts: list[str]
    rewards: list[float | None]
    seeds: list[int]


@dataclass(frozen=True, kw_only=True)
class ExplorationRecord(Record):
    """The seeds one trainer iteration trained on (source: ``trainer``)."""

    TOPIC: ClassVar[str] = "exploration"
    iteration: int
    batch_id: str
    mode: str
    """``explored`` (planner seeds) or ``random`` (the baseline)."""
    seeds: int
    """Seeds of this batch chosen from exploration."""
    fallbacks: int
    """Seeds of this batch drawn at random because nothing was explored for them."""
    fallback_prompts: int
    budget_s: float
    """Spot GPU-seconds the planner had for this batch."""
    budget_used_s: float
    seeds_total: int
    """Explored seeds trained on since the run (or resume) started."""
    fallbacks_total: int


@dataclass(frozen=True, kw_only=True)
class PlannerRecord(Record):
    """The planner's answer for one batch (source: ``planner``)."""

    TOPIC: ClassVar[str] = "planner"
    batch_id: str
    budget_gpu_s: float
    used_gpu_s: float
    explored_seeds: int
    fallbacks: int
    fallback_prompts: int
    fallbacks_total: int
    explorers: int
    """Explorers registered with the planner when it answered."""
    seconds_per_seed: float | None = None
    mean_group_variance: float | None = None


@dataclass(frozen=True, kw_only=True)
class PreemptionRecord(Record):
    """One preemption event (source: the node id)."""

    TOPIC: ClassVar[str] = "preemption"
    node: str
    kind: str
    """``notice``, ``silent`` or ``rejoined`` (a loss taken back)."""
    lead_s: float | None
    steps_lost: int | None
    late: bool | None = None
    released: int | None = None
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class RewardsRecord(Record):
    """The trainer's reward client (cumulative, ``RemoteRewardStats``)."""

    TOPIC: ClassVar[str] = "rewards"
    workers: int
    calls: int
    images: int
    chunks: int
    remote_images: int
    local_images: int
    retries: int
    seconds: float
    last_call_s: float
    by_worker: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RolloutsRecord(Record):
    """The trainer's last batch through the rollout pool."""

    TOPIC: ClassVar[str] = "rollouts"
    iteration: int
    seconds: float
    samples: int
    spot_samples: int
    spot_workers: int
    by_worker: dict[str, int] = field(default_factory=dict)


RECORDS: dict[str, type[Record]] = {
    cls.TOPIC: cls
    for cls in (
        NodeRecord,
        CostRecord,
        RuntimeRecord,
        SPGroupRecord,
        SchedulerRecord,
        TrainerRecord,
        ValidationRecord,
        ValImagesRecord,
        ExplorationRecord,
        PlannerRecord,
        PreemptionRecord,
        RewardsRecord,
        RolloutsRecord,
    )
}
"""topic -> its record class: the topics the view, the event lines and the trackers read."""


def check_fields(topic: str, fields: Mapping[str, Any]) -> None:
    """``ValueError`` when ``topic`` has a record class and ``fields`` do not parse as it."""
    cls = RECORDS.get(topic)
    if cls is not None:
        cls.parse(fields)
