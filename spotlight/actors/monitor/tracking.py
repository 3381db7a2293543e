"""Experiment tracking: the monitor's records, relayed to TensorBoard and Weights & Biases.

``RUN_DIR/metrics.jsonl`` stays the source of truth; a tracker sees the same records, in
the same order, because the :class:`~spotlight.actors.monitor.actor.Monitor` hands each
batch to :meth:`Tracker.write` right after writing it to the file. The monitor lives on
rank 0's node only, so only rank 0 ever logs (no duplicate W&B runs under torchrun).

Map::

    Monitor._take(batch) ──► JsonlWriter (metrics.jsonl)
                        └──► Tracker.write(batch) ──► relay(): records -> scalars, images
                                                      ├─► TensorBoardBackend (tensorboardX)
                                                      └─► WandbBackend (wandb, offline/online)

What is relayed (``relay`` below; the step is the trainer iteration the record belongs to,
or the latest one for periodic records, which are logged once per iteration):

- ``trainer`` → ``train/*`` (reward mean/std, loss, zero-std fraction, timings);
  ``validation`` → ``val/score``, ``val/spread``; ``val_images`` → ``val/images`` with each
  image's prompt, reward and seed as its caption;
- ``exploration`` / ``planner`` → ``explore/*`` (explored and random seeds, budget used);
- ``cost`` → ``spot/*``: live spot nodes, preemptions, $ per hour, steps lost, $ so far;
- ``scheduler`` → ``sched/<name>/*``; ``rollouts`` → ``rollouts/*``.

A backend that raises is counted and logged once (``statistics``); it never breaks the
monitor. Backends are optional packages (``pip install -e '.[tracking]'``): the import
happens only when one is enabled, and :func:`check_installed` names the missing one.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from spotlight.actors.monitor.metrics import MetricRecord
from spotlight.actors.monitor.records import (
    CostRecord,
    ExplorationRecord,
    PlannerRecord,
    RolloutsRecord,
    SchedulerRecord,
    TrainerRecord,
    ValidationRecord,
    ValImagesRecord,
)

__all__ = [
    "WANDB_MODES",
    "Backend",
    "Images",
    "StepClock",
    "Tracker",
    "TrackingConfig",
    "check_installed",
    "relay",
    "wandb_run_id",
]

log = logging.getLogger("spotlight.actors.monitor.tracking")

WANDB_MODES = ("off", "offline", "online")
MIN_IMAGE_SIDE = 128
"""Validation images smaller than this are scaled up (nearest) so a tracker shows them."""
_WANDB_ID_BAD = re.compile(r"[/\\#?%:\s]")


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """Which backends the monitor relays to, and where."""

    run_dir: str
    """The run directory: image paths in ``val_images`` records are relative to it."""
    tensorboard_dir: str | None = None
    """Write TensorBoard event files here; None: no TensorBoard."""
    wandb: Literal["off", "offline", "online"] = "off"
    wandb_project: str = "spotlight"
    wandb_entity: str | None = None
    wandb_id: str = ""
    """The W&B run id: the run directory's name, so a resumed run continues the same run."""
    wandb_dir: str | None = None
    """Where W&B keeps its files (``wandb/`` is made inside); None: the run directory."""
    config: dict[str, Any] = field(default_factory=dict)
    """The run's resolved configuration, shown as the W&B run's config."""

    def __post_init__(self) -> None:
        if self.wandb not in WANDB_MODES:
            raise ValueError(f"wandb={self.wandb!r}; valid: {', '.join(WANDB_MODES)}")
        if self.wandb != "off" and not self.wandb_id:
            raise ValueError("wandb_id must name the run (the run directory's name)")

    @property
    def enabled(self) -> bool:
        return self.tensorboard_dir is not None or self.wandb != "off"


def wandb_run_id(run_dir: str | Path) -> str:
    """W&B's run id for ``run_dir``: its name, with the characters W&B refuses replaced."""
    name = Path(run_dir).resolve().name
    return _WANDB_ID_BAD.sub("-", name)[:64] or "run"


def check_installed(*, tensorboard: bool, wandb: bool) -> None:
    """``ValueError`` naming the package an enabled backend needs and how to install it."""
    missing = [
        pkg
        for pkg, wanted in (("tensorboardX", tensorboard), ("wandb", wandb))
        if wanted and importlib.util.find_spec(pkg) is None
    ]
    if missing:
        raise ValueError(
            f"experiment tracking needs {' and '.join(missing)}, which is not installed; "
            "install it with `pip install -e '.[tracking]'` or turn the backend off "
            "(tracking.tensorboard=false, tracking.wandb=off)"
        )


# ============================================================================ the mapping


@dataclass(frozen=True)
class Images:
    """Validation images for one step, each with its caption."""

    key: str
    images: list[np.ndarray]
    """H×W×3 uint8 each."""
    captions: list[str]


def _put(out: dict[str, float], key: str, value: float | int | None) -> None:
    if value is not None and math.isfinite(value):
        out[key] = float(value)


def _trainer(t: TrainerRecord) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in ("reward_mean", "reward_std", "loss", "zero_std_fraction", "grad_norm",
                 "approx_kl", "iteration_s", "rollout_s", "reward_s", "train_s"):  # fmt: skip
        _put(out, f"train/{name}", getattr(t, name))
    return out


def _cost(c: CostRecord) -> dict[str, float]:
    out: dict[str, float] = {}
    _put(out, "spot/live_nodes", c.live_nodes)
    _put(out, "spot/preemptions", c.preemptions_notice + c.preemptions_silent)
    _put(out, "spot/preemptions_silent", c.preemptions_silent)
    _put(out, "spot/usd_per_hour", c.usd_per_hour)
    _put(out, "spot/steps_lost", c.work_lost_steps)
    _put(out, "spot/total_usd", c.total_usd)
    _put(out, "spot/spot_gpu_hours", c.spot_gpu_hours)
    _put(out, "spot/ondemand_gpu_hours", c.ondemand_gpu_hours)
    return out


def _per_record(rec: MetricRecord) -> tuple[int | None, dict[str, float]]:
    """(the iteration it belongs to or None, its scalars) for the relayed topics."""
    f = rec.fields
    out: dict[str, float] = {}
    if rec.topic == TrainerRecord.TOPIC and (t := TrainerRecord.read(f)) is not None:
        return t.iteration, _trainer(t)
    if rec.topic == ValidationRecord.TOPIC and (v := ValidationRecord.read(f)) is not None:
        _put(out, "val/score", v.score)
        _put(out, "val/spread", v.spread)
        return v.iteration, out
    if rec.topic == ExplorationRecord.TOPIC and (e := ExplorationRecord.read(f)) is not None:
        for key, value in (("explored_seeds", e.seeds), ("random_seeds", e.fallbacks),
                           ("explored_seeds_total", e.seeds_total), ("budget_s", e.budget_s),
                           ("budget_used_s", e.budget_used_s)):  # fmt: skip
            _put(out, f"explore/{key}", value)
        return e.iteration, out
    if rec.topic == RolloutsRecord.TOPIC and (r := RolloutsRecord.read(f)) is not None:
        _put(out, "rollouts/seconds", r.seconds)
        _put(out, "rollouts/spot_samples", r.spot_samples)
        _put(out, "rollouts/spot_workers", r.spot_workers)
        return r.iteration, out
    if rec.topic == CostRecord.TOPIC and (c := CostRecord.read(f)) is not None:
        return None, _cost(c)
    if rec.topic == SchedulerRecord.TOPIC and (s := SchedulerRecord.read(f)) is not None:
        for key in ("queue_depth", "active_leases", "re_leases", "steps_recomputed"):
            _put(out, f"sched/{rec.source}/{key}", getattr(s, key))
        return None, out
    if rec.topic == PlannerRecord.TOPIC and (p := PlannerRecord.read(f)) is not None:
        _put(out, "explore/explorers", p.explorers)
        _put(out, "explore/seconds_per_seed", p.seconds_per_seed)
        _put(out, "explore/mean_group_variance", p.mean_group_variance)
        return None, out
    return None, out


def _tiles(path: Path, count: int) -> list[np.ndarray]:
    """The ``count`` images side by side in the PNG strip at ``path``, scaled up to show."""
    from PIL import Image

    with Image.open(path) as img:
        strip = np.asarray(img.convert("RGB"))
    height, width = strip.shape[:2]
    if count < 1 or width % count:
        raise ValueError(f"{path}: a strip {width} px wide does not hold {count} equal tiles")
    side = width // count
    scale = max(1, -(-MIN_IMAGE_SIDE // max(height, side)))
    return [
        strip[:, i * side : (i + 1) * side].repeat(scale, axis=0).repeat(scale, axis=1)
        for i in range(count)
    ]


def _images(rec: MetricRecord, run_dir: Path) -> tuple[int, Images] | None:
    v = ValImagesRecord.read(rec.fields)
    if v is None or rec.topic != ValImagesRecord.TOPIC:
        return None
    tiles = _tiles(run_dir / v.path, len(v.prompts))
    captions = [
        f"{prompt} · reward {'—' if r is None else f'{r:.3f}'} · seed {seed}"
        for prompt, r, seed in zip(v.prompts, v.rewards, v.seeds, strict=True)
    ]
    return v.iteration, Images("val/images", tiles, captions)


class StepClock:
    """The step of each record: its own iteration, else the latest trainer iteration; a
    periodic topic (cost, scheduler, planner) is logged once per (source, step)."""

    def __init__(self) -> None:
        self.step = 0
        self._periodic: dict[tuple[str, str], int] = {}

    def of(self, rec: MetricRecord, iteration: int | None) -> int | None:
        if iteration is not None:
            self.step = max(self.step, iteration)
            return iteration
        key = (rec.topic, rec.source)
        if self._periodic.get(key) == self.step:
            return None
        self._periodic[key] = self.step
        return self.step


def relay(
    records: Iterable[MetricRecord], steps: StepClock, run_dir: Path
) -> list[tuple[int, float, dict[str, float] | Images]]:
    """(step, wall time, scalars or images) for each record worth a tracker's log."""
    out: list[tuple[int, float, dict[str, float] | Images]] = []
    for rec in records:
        if rec.topic == ValImagesRecord.TOPIC:
            found = _images(rec, run_dir)
            if found is not None:
                out.append((found[0], rec.time, found[1]))
            continue
        iteration, scalars = _per_record(rec)
        if not scalars:
            continue
        step = steps.of(rec, iteration)
        if step is not None:
            out.append((step, rec.time, scalars))
    return out


# ============================================================================ the relay


class Backend(Protocol):
    """What a tracker backend does with relayed values (tracking_backends.py)."""

    name: str

    def scalars(self, values: dict[str, float], step: int, walltime: float) -> None: ...

    def images(self, batch: Images, step: int, walltime: float) -> None: ...

    def close(self) -> None: ...


class Tracker:
    """The backends of one run, fed by the monitor; see the module docstring.

    The monitor opens the backends (``tracking_backends.open_backends``, off the loop: W&B
    starts a service) and passes them here."""

    def __init__(self, config: TrackingConfig, backends: list[Backend] | None = None) -> None:
        self.config = config
        self.backends: list[Backend] = list(backends or [])
        self._steps = StepClock()
        self.logged = 0
        self.errors: dict[str, int] = {}
        self.last_error: str | None = None

    def write(self, records: Iterable[MetricRecord]) -> None:
        """Relay a batch of records; never raises (errors are counted per backend)."""
        try:
            items = relay(records, self._steps, Path(self.config.run_dir))
        except (OSError, ValueError) as exc:  # an unreadable image strip
            self._error("relay", exc)
            return
        for step, walltime, item in items:
            for backend in self.backends:
                try:
                    if isinstance(item, Images):
                        backend.images(item, step, walltime)
                    else:
                        backend.scalars(item, step, walltime)
                except Exception as exc:  # a tracker must never break the monitor
                    self._error(backend.name, exc)
            self.logged += 1

    def close(self) -> None:
        for backend in self.backends:
            try:
                backend.close()
            except Exception as exc:  # closing one must not keep the others open
                self._error(backend.name, exc)
        self.backends = []

    def statistics(self) -> dict[str, Any]:
        return {
            "backends": [b.name for b in self.backends],
            "logged": self.logged,
            "errors": dict(self.errors),
            "last_error": self.last_error,
        }

    def _error(self, name: str, exc: Exception) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1
        self.last_error = f"{name}: {type(exc).__name__}: {exc}"
        if self.errors[name] == 1:
            log.error("experiment tracking (%s) failed: %s", name, self.last_error)
