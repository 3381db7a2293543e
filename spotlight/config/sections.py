"""The configuration tree of `spotlight run`: one frozen, validated object built from a file.

Why one tree: the trainer, the planner, the spot pool and the bill are set together (the
planner's group size is the trainer's, the pool's time scale is the bill's clock), so they
are validated together, once, before any process starts. A run directory stores the
resolved tree (``config.json``) and ``--resume`` continues with exactly it.

Sources, later ones win::

    defaults (the dataclasses below)  <  --config FILE (YAML or TOML)  <  plain flags
    (--iterations, --run-dir, --no-spot)  <  --set section.key=value (repeatable)

A file or ``--set`` naming a key that does not exist is an error naming the key and the
valid ones (a setting that is silently ignored is a bug). ``--set`` values are parsed by
the field's type: ``--set trainer.lr=2e-5``, ``--set spot.trace=none``,
``--set trainer.sde_window=0:3``.

Sections (every field is documented where it is declared):

- ``run``: iterations, time budget, validation and checkpoint periods, run seed, run dir.
- ``trainer``: the Flow-GRPO algorithm, reward, base checkpoint, ``seeds: random|explored``.
- ``planner``: the exploration planner's knobs (used when ``trainer.seeds: explored``).
- ``spot``: the simulated spot pool (trace, time scale, notice lead, node command).
- ``prices``: GPU-hour prices (a preset, optionally overridden).
- ``rewards``: reward worker processes the trainer scores through (0: in process).
- ``rollout``: where the trainer's own rollouts are sampled (pull-scheduled workers or the
  trainer's thread) and the timing of their leases.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

if TYPE_CHECKING:
    from spotlight.actors.exploration.planner import PlannerConfig
    from spotlight.actors.spot.prices import Prices
    from spotlight.models.flow_grpo import FlowGrpoConfig
    from spotlight.models.lora import LoraSettings

__all__ = [
    "ConfigError",
    "PlannerSection",
    "PricesSection",
    "RewardsSection",
    "RolloutSection",
    "RunSection",
    "SpotSection",
    "SystemConfig",
    "TrainerSection",
    "apply_overrides",
    "load_config",
]


class ConfigError(ValueError):
    """A bad configuration: the message names the key (dotted) and what is valid."""


def _positive_int(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{owner}.{name} must be an integer >= 1, got {value!r}")


def _positive_float(owner: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{owner}.{name} must be a finite number {bound}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class RunSection:
    """How long the run is and how often it validates and checkpoints."""

    iterations: int = 400
    """Trainer iterations (the time budget may stop earlier)."""
    time_budget_s: float | None = 420.0
    """Stop after the iteration that crosses this many wall seconds (then checkpoint);
    None: no budget. The default keeps the embedded run near 10 minutes on a CPU."""
    val_every: int = 4
    """Validate (ODE sampler, held-out prompts, fixed seeds) every this many iterations,
    and at iteration 0 and at the end."""
    ckpt_every: int = 2
    """Checkpoint (weights, optimizer, iteration) every this many iterations and at the end."""
    seed: int = 0
    """Run seed: prompts, random seeds, SDE noise and minibatch order derive from it."""
    run_dir: str | None = None
    """Where everything is written; None = runs/run-<date-time>."""

    def __post_init__(self) -> None:
        for name in ("iterations", "val_every", "ckpt_every"):
            _positive_int("run", name, getattr(self, name))
        if self.time_budget_s is not None:
            _positive_float("run", "time_budget_s", self.time_budget_s)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"run.seed must be an integer >= 0, got {self.seed!r}")


SEED_MODES = ("random", "explored")


@dataclass(frozen=True, kw_only=True)
class TrainerSection:
    """The Flow-GRPO trainer (see spotlight/models/flow_grpo.py for the algorithm)."""

    seeds: Literal["random", "explored"] = "explored"
    """``explored``: seeds chosen by the planner from what spot explorers measured;
    ``random``: plain Flow-GRPO with random seeds (the baseline; no exploration)."""
    base: str | None = None
    """Base checkpoint directory; None = the cached tiny base (built on first use)."""
    reward: str = "geneval"
    """Reward: geneval (programmatic count/colour/position) or ocr (quoted prompt text)."""
    prompts: str | None = None
    """A prompt file (UTF-8, one prompt per line, ``#`` comments; a seeded tenth is held out
    for validation); None = the procedural scene captions. ``reward: ocr`` needs one whose
    every prompt quotes the text to render (``a sign that says "OPEN"``)."""
    prompts_per_iter: int = 8
    """Prompts (groups) per iteration."""
    group_size: int = 8
    """Seeds per prompt (the planner's group size too)."""
    num_steps: int = 6
    """Denoising steps of a rollout (and of an explore request)."""
    noise_level: float = 1.0
    """Flow-GRPO SDE noise level a."""
    sde_window: str = "0:2"
    """'start:stop' denoising steps that are SDE (trained) steps, or 'all'."""
    shift: float = 1.0
    """Sigma schedule shift."""
    lr: float = 2e-5
    """AdamW learning rate."""
    clip_range: float = 1e-2
    """GRPO ratio clip range."""
    kl_beta: float = 0.0
    """KL weight towards the base (0: no reference model)."""
    objective: str = "flow_grpo"
    """Gradient estimator: flow_grpo (clipped SDE-step ratio) or nft (DiffusionNFT)."""
    nft_beta: float = 1.0
    """DiffusionNFT's β (objective: nft only)."""
    inner_epochs: int = 1
    micro_batch: int = 32
    """Samples per forward pass (rollout and training alike)."""
    chunks_per_update: int = 2
    """Micro-batches per optimizer step: 2 × 32 = the whole 64-sample batch in one step,
    which data parallelism over several ranks requires (models/data_parallel.py)."""
    val_per_kind: int = 4
    """Held-out validation prompts per caption kind."""
    val_seeds: int = 4
    """Fixed seeds per validation prompt."""
    resolution: int = 512
    """Pixel side of the images with a Qwen-Image pipeline as ``base`` (a multiple of 16; 512
    and 1024 as in the paper); a tiny-format checkpoint has its own size (32)."""
    lora_rank: int = 0
    """0 trains every weight; r >= 1 trains rank-r LoRA adapters on the attention projections
    and freezes the rest (spotlight/models/lora.py; needs the ``lora`` extra, peft). What the
    20B model needs to fit a GPU, and each weight version then carries the adapters only
    (spot nodes load the frozen base from their own disk, ``launch_spot.sh --base``)."""
    lora_alpha: int = 0
    """LoRA scale numerator (adapter output × alpha/rank); 0: 2 × rank, as Flow-GRPO's recipes."""

    def __post_init__(self) -> None:
        if self.seeds not in SEED_MODES:
            raise ConfigError(f"trainer.seeds={self.seeds!r}; valid: {', '.join(SEED_MODES)}")
        for name in (
            "prompts_per_iter",
            "group_size",
            "num_steps",
            "inner_epochs",
            "micro_batch",
            "chunks_per_update",
            "val_per_kind",
            "val_seeds",
        ):
            _positive_int("trainer", name, getattr(self, name))
        self.window()  # validates the text
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ConfigError(f"trainer.lora_rank must be an integer >= 0, got {self.lora_rank!r}")
        if not isinstance(self.lora_alpha, int) or self.lora_alpha < 0:
            raise ConfigError(
                f"trainer.lora_alpha must be an integer >= 0, got {self.lora_alpha!r}"
            )
        self._check_prompts()
        self.latent_side()  # validates the resolution
        if self.base is not None and self.lora_rank == 0:
            from spotlight.models.bases import is_pipeline

            if is_pipeline(self.base):
                raise ConfigError(
                    f"trainer.base={self.base} is a Qwen-Image pipeline, which trains with LoRA "
                    "only (full fine-tuning of the 20B transformer needs FSDP, not built): set "
                    "trainer.lora_rank, e.g. 32"
                )
        from spotlight.models.flow_grpo import OBJECTIVES

        if self.objective not in OBJECTIVES:
            raise ConfigError(
                f"trainer.objective={self.objective!r}; valid: {', '.join(OBJECTIVES)}"
            )

    def window(self) -> tuple[int, int] | None:
        if self.sde_window == "all":
            return None
        try:
            a, b = (int(x) for x in self.sde_window.split(":"))
        except ValueError:
            raise ConfigError(
                f"trainer.sde_window={self.sde_window!r}: expected 'start:stop' (e.g. 0:3) or 'all'"
            ) from None
        return a, b

    def _check_prompts(self) -> None:
        """The prompt file can serve the reward, checked before anything starts."""
        if self.prompts is None:
            if self.reward == "ocr":
                raise ConfigError(
                    "trainer.reward=ocr scores the quoted text of a prompt, and the scene "
                    "captions quote none: give trainer.prompts=FILE of text-rendering prompts "
                    '(e.g. a sign that says "OPEN")'
                )
            return
        from spotlight.models.batches import read_prompt_file

        try:
            prompts = read_prompt_file(self.prompts)
        except ValueError as e:
            raise ConfigError(f"trainer.prompts: {e}") from None
        if self.reward == "ocr":
            from spotlight.models.rewards.ocr import target_text

            for i, prompt in enumerate(prompts):
                try:
                    target_text(prompt)
                except ValueError as e:
                    raise ConfigError(
                        f"trainer.prompts={self.prompts}, prompt {i + 1}: {e}"
                    ) from None

    def latent_side(self) -> int:
        """Latent cells per side of a pipeline base at ``resolution``."""
        from spotlight.models.bases import latent_side

        try:
            return latent_side(self.resolution)
        except ValueError as e:
            raise ConfigError(f"trainer.resolution: {e}") from None

    def lora(self) -> LoraSettings | None:
        """The adapters to train (None: every weight)."""
        if self.lora_rank == 0:
            return None
        from spotlight.models.lora import LoraSettings

        return LoraSettings(rank=self.lora_rank, alpha=self.lora_alpha or 2 * self.lora_rank)

    def algo(self) -> FlowGrpoConfig:
        """The algorithm config (validated by FlowGrpoConfig itself)."""
        from spotlight.models.flow_grpo import FlowGrpoConfig, Objective
        from spotlight.models.grpo import GrpoConfig
        from spotlight.models.nft import NftConfig
        from spotlight.models.sampler import SamplerConfig

        return FlowGrpoConfig(
            objective=cast("Objective", self.objective),
            nft=NftConfig(beta=self.nft_beta),
            prompts_per_iter=self.prompts_per_iter,
            group_size=self.group_size,
            sampler=SamplerConfig(
                num_steps=self.num_steps,
                noise_level=self.noise_level,
                sde_window=self.window(),
                shift=self.shift,
            ),
            grpo=GrpoConfig(clip_range=self.clip_range, kl_beta=self.kl_beta),
            lr=self.lr,
            inner_epochs=self.inner_epochs,
            micro_batch=self.micro_batch,
            chunks_per_update=self.chunks_per_update,
        )


@dataclass(frozen=True, kw_only=True)
class PlannerSection:
    """The exploration planner (spotlight/actors/exploration/planner.py); used with seeds: explored."""

    initial_seeds: int = 2
    """Seeds every prompt gets in the first exploration round."""
    round_fraction: float = 0.5
    """Each round spends this fraction of the budget still unspent."""
    safety: float = 0.8
    """Fraction of the predicted iteration window exploration may plan to use."""
    default_iteration_s: float = 30.0
    """Assumed trainer iteration time until one has been measured."""
    plan_timeout_s: float = 5.0
    """Deadline of the trainer's ask for its seeds; past it the batch uses random seeds."""

    def __post_init__(self) -> None:
        if not isinstance(self.initial_seeds, int) or self.initial_seeds < 0:
            raise ConfigError(
                f"planner.initial_seeds must be an int >= 0, got {self.initial_seeds!r}"
            )
        for name in ("round_fraction", "safety"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value <= 1):
                raise ConfigError(f"planner.{name} must be in (0, 1], got {value!r}")
        _positive_float("planner", "default_iteration_s", self.default_iteration_s)
        _positive_float("planner", "plan_timeout_s", self.plan_timeout_s)

    def build(self, *, group_size: int, explore_steps: int) -> PlannerConfig:
        from spotlight.actors.exploration.bandit import BanditConfig
        from spotlight.actors.exploration.planner import PlannerConfig

        return PlannerConfig(
            bandit=BanditConfig(group_size=group_size),
            explore_steps=explore_steps,
            initial_seeds=self.initial_seeds,
            round_fraction=self.round_fraction,
            safety=self.safety,
            default_iteration_s=self.default_iteration_s,
        )


FAULT_MODES = ("elastic", "restart")

DEFAULT_NODE_COMMAND = (
    "{python} -m spotlight.nodes.spot --coordinator {address} --node-id {node} "
    "--notice-grace {grace} --gpus {gpus} --sp-degree {sp_degree}"
)


@dataclass(frozen=True, kw_only=True)
class SpotSection:
    """The simulated spot pool: node processes started and stopped by a trace."""

    enabled: bool = True
    """False: on-demand only (no spot processes; ``--no-spot``)."""
    pool: Literal["trace", "external"] = "trace"
    """Where spot nodes come from. ``trace``: node processes this run starts and stops by
    ``trace``. ``external``: nodes join from outside (``scripts/launch_spot.sh``) and the
    coordinator only accepts their registrations; ``trace``, ``time_scale``, ``notice_s``
    and ``node_command`` are then unused and the bill's clock is wall time."""
    trace: str = "traces/steady_1h.csv"
    """CSV trace ``t_s,event,node`` (see traces/README.md); relative paths are tried
    against the current directory, then the repository root."""
    time_scale: float = 8.0
    """Trace seconds played per wall second; also the bill's clock (GPU-hours are in trace
    time, so a 1 h trace at 6x bills an hour in 10 wall minutes)."""
    notice_s: float = 30.0
    """Synthesise a notice this many trace seconds before each silent removal (0: none,
    removals stay silent). GCP/Azure give 30 s, AWS 120 s."""
    notice_grace_s: float = 1.0
    """Wall seconds a node keeps free before its deadline to leave cleanly."""
    gpus_per_node: int = 1
    """GPUs billed per spot node; with ``sp_degree`` > 1 also its SP member processes (one
    per simulated GPU)."""
    sp_degree: int = 1
    """Sequence-parallel degree of each spot node's explorer. 1 (default): the node samples
    in one process, a worker thread (fastest on a 2-core CPU box, see README). D > 1: the
    node runs ``gpus_per_node`` SP member processes as one elastic group at degree D (D <=
    gpus_per_node; D must divide the base model's attention heads and image tokens, checked
    against the base when the run starts); a lost member re-forms the group smaller."""
    ondemand_gpus: int | None = None
    """On-demand GPUs billed for the whole run (trainer + coordinator). None (default): the
    trainer's world size, i.e. one GPU per data-parallel rank (torchrun's WORLD_SIZE; 1 for
    a plain ``spotlight run``), resolved when the run starts (:meth:`ondemand_gpu_count`).
    Set it when ranks and GPUs differ, e.g. one process on a node with 8 GPUs."""
    node_command: str = DEFAULT_NODE_COMMAND
    """Command of one spot node; {python}, {address}, {node}, {grace}, {gpus} are
    substituted ({node} by the launcher, per node)."""
    fault_mode: Literal["elastic", "restart"] = "elastic"
    """How the pool reacts to a preemption. ``elastic`` (Spotlight): a noticed node drains
    and leaves, the others go on. ``restart`` (the TorchElastic-style baseline of the
    benchmark, spotlight/actors/spot/restart_pool.py): a notice or loss of any node kills every
    running spot node and starts them again (they reload weights; in-flight work is lost)."""

    def __post_init__(self) -> None:
        if self.fault_mode not in FAULT_MODES:
            raise ConfigError(
                f"spot.fault_mode={self.fault_mode!r}; valid: {', '.join(FAULT_MODES)}"
            )
        _positive_float("spot", "time_scale", self.time_scale)
        _positive_float("spot", "notice_s", self.notice_s, allow_zero=True)
        _positive_float("spot", "notice_grace_s", self.notice_grace_s, allow_zero=True)
        _positive_int("spot", "gpus_per_node", self.gpus_per_node)
        _positive_int("spot", "sp_degree", self.sp_degree)
        if self.sp_degree > self.gpus_per_node:
            raise ConfigError(
                f"spot.sp_degree={self.sp_degree} needs {self.sp_degree} GPUs per node (one SP "
                f"member each), spot.gpus_per_node={self.gpus_per_node}; valid degrees: "
                + ", ".join(str(d) for d in range(1, self.gpus_per_node + 1))
            )
        if self.ondemand_gpus is not None:
            _positive_int("spot", "ondemand_gpus", self.ondemand_gpus)
        if "{node}" not in self.node_command:
            raise ConfigError(f"spot.node_command must contain {{node}}, got {self.node_command!r}")
        if self.sp_degree > 1 and "{sp_degree}" not in self.node_command:
            raise ConfigError(
                f"spot.sp_degree={self.sp_degree} would be ignored: spot.node_command has no "
                f"{{sp_degree}} (pass it as --sp-degree {{sp_degree}}), got {self.node_command!r}"
            )

    def check_sp_degree(self, num_heads: int, num_tokens: int) -> None:
        """ConfigError unless ``sp_degree`` divides the base model's heads and image tokens
        (the message lists the valid degrees); called once the base is known."""
        from spotlight.models.ulysses import validate_degree

        try:
            validate_degree(self.sp_degree, num_heads, num_tokens)
        except ValueError as exc:
            raise ConfigError(f"spot.sp_degree={self.sp_degree}: {exc}") from None

    def ondemand_gpu_count(self, world_size: int) -> int:
        """GPUs to bill on demand: ``ondemand_gpus`` if set, else ``world_size`` (DP ranks)."""
        if self.ondemand_gpus is not None:
            return self.ondemand_gpus
        if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
            raise ValueError(f"world_size must be an int >= 1 (DP ranks), got {world_size!r}")
        return world_size

    def trace_path(self) -> Path:
        """The trace file; ConfigError naming the places tried if it is nowhere."""
        p = Path(self.trace)
        tried = [p]
        if not p.is_absolute():
            tried.append(Path(__file__).resolve().parent.parent / p)
        for candidate in tried:
            if candidate.is_file():
                return candidate
        raise ConfigError(
            f"spot.trace={self.trace!r}: no such file (tried {', '.join(map(str, tried))}); "
            "shipped traces are in traces/ (steady_1h.csv, bursty_1h.csv, diurnal_2h.csv)"
        )


@dataclass(frozen=True, kw_only=True)
class PricesSection:
    """USD per GPU-hour: a preset (spotlight/actors/spot/prices.py cites the sources), overridable."""

    preset: str = "aws-p5"
    """aws-p5 or gcp-a3-high-2026."""
    ondemand_usd_per_gpu_hour: float | None = None
    """Override the preset's on-demand price."""
    spot_usd_per_gpu_hour: float | None = None
    """Override the preset's spot price."""

    def __post_init__(self) -> None:
        self.build()

    def build(self) -> Prices:
        from spotlight.actors.spot.prices import Prices

        try:
            base = Prices.preset(self.preset)
        except ValueError as exc:
            raise ConfigError(f"prices.preset: {exc}") from None
        if self.ondemand_usd_per_gpu_hour is None and self.spot_usd_per_gpu_hour is None:
            return base
        od, spot = self.ondemand_usd_per_gpu_hour, self.spot_usd_per_gpu_hour
        try:
            return Prices(
                ondemand_usd_per_gpu_hour=base.ondemand_usd_per_gpu_hour if od is None else od,
                spot_usd_per_gpu_hour=base.spot_usd_per_gpu_hour if spot is None else spot,
                name=f"{base.name} (overridden)",
                source=f"config override of {base.name}",
            )
        except ValueError as exc:
            raise ConfigError(f"prices: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class RewardsSection:
    """Reward actors (spotlight/actors/reward_*.py): worker processes the trainer's rollouts
    and validation are scored by, so a slow reward runs beside the trainer, not inside it.

    Only the trainer's rank 0 uses them; data-parallel followers and spot-node explorers
    score in process (a spot node is its own machine: a node-local reward is right there).
    Scores are bit-identical either way, so this changes speed, never results."""

    workers: int = 1
    """Reward worker processes `spotlight run` starts (and kills by PID at the end); 0: the
    trainer scores in process, in its torch thread, exactly as without reward actors."""
    actors_per_worker: int = 1
    """RewardActors per worker process (each scores one chunk at a time, in a thread)."""
    chunk_images: int = 16
    """Images per ask; a batch is split into chunks that free actors pull. A lost worker
    costs one chunk's recomputation."""
    timeout_s: float = 30.0
    """Deadline of each ask; past it (or on a lost worker) the chunk goes to another actor,
    and with none left it is scored in process (counted in the report)."""
    start_timeout_s: float = 60.0
    """How long reward calls wait for launched workers to register at the start of a run
    (then they score in process until the workers are up)."""

    def __post_init__(self) -> None:
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 0:
            raise ConfigError(f"rewards.workers must be an integer >= 0, got {self.workers!r}")
        _positive_int("rewards", "actors_per_worker", self.actors_per_worker)
        _positive_int("rewards", "chunk_images", self.chunk_images)
        _positive_float("rewards", "timeout_s", self.timeout_s)
        _positive_float("rewards", "start_timeout_s", self.start_timeout_s)


RolloutWorkers = Literal["auto", "pool", "trainer"]
ROLLOUT_WORKERS: tuple[str, ...] = get_args(RolloutWorkers)


@dataclass(frozen=True, kw_only=True)
class RolloutSection:
    """Where the trainer's rollouts of θ_k (on-policy, the samples it trains on) are drawn.

    ``pool``: each sample is a request on the rollout scheduler (spotlight/actors/
    rollout/pool.py); the trainer's own rollout worker and every spot node's pull them,
    commit their denoising state every ``commit_interval`` steps and hand it back on a
    notice, so a preempted spot GPU loses at most the step it was running. ``trainer``: the
    trainer rank samples its own batch in its torch thread (no scheduler; the log-probs are
    recorded in the training chunks, so the first ratio is exactly 1 instead of 1 ± 1e-7).
    """

    workers: RolloutWorkers = "auto"
    """``auto``: ``pool`` with one trainer rank, ``trainer`` with several (each data-parallel
    rank samples its own shard; the pool serves a single rank)."""
    pull_batch: int = 16
    """Requests a worker holds at once, advanced together in one forward pass."""
    commit_interval: int = 2
    """A worker commits a trajectory's state every this many denoising steps; a silent loss
    (SIGKILL) recomputes at most this many steps per request, a notice none."""
    lease_ttl_s: float = 30.0
    """A lease not renewed for this long (a worker lost without notice) is resumed elsewhere
    from its last commit; workers renew every third of it."""
    timeout_s: float = 600.0
    """An iteration whose rollouts are not all back after this long ends the run with an
    error naming the queue (the trainer's own worker pulls too, so only a bug gets here)."""

    def __post_init__(self) -> None:
        if self.workers not in ROLLOUT_WORKERS:
            raise ConfigError(
                f"rollout.workers={self.workers!r}; valid: {', '.join(ROLLOUT_WORKERS)}"
            )
        _positive_int("rollout", "pull_batch", self.pull_batch)
        _positive_int("rollout", "commit_interval", self.commit_interval)
        _positive_float("rollout", "lease_ttl_s", self.lease_ttl_s)
        _positive_float("rollout", "timeout_s", self.timeout_s)

    def pooled(self, world_size: int) -> bool:
        """Whether a trainer of ``world_size`` ranks samples through the pool."""
        if self.workers == "pool" and world_size > 1:
            raise ConfigError(
                f"rollout.workers=pool serves a single trainer rank, this run has {world_size}; "
                "use rollout.workers=auto or trainer (each rank then samples its own shard)"
            )
        return self.workers == "pool" or (self.workers == "auto" and world_size == 1)


@dataclass(frozen=True, kw_only=True)
class SystemConfig:
    """Everything `spotlight run` needs; see the module docstring."""

    run: RunSection = field(default_factory=RunSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    planner: PlannerSection = field(default_factory=PlannerSection)
    spot: SpotSection = field(default_factory=SpotSection)
    prices: PricesSection = field(default_factory=PricesSection)
    rewards: RewardsSection = field(default_factory=RewardsSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)

    def __post_init__(self) -> None:
        try:
            self.trainer.algo()
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"trainer: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SystemConfig:
        """Build from nested plain data; unknown keys and wrong types are ConfigErrors."""
        return _build(cls, data, "")


# ---------------------------------------------------------------------------- building


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, globalns=globals())


def _coerce(value: Any, hint: Any, key: str, *, from_text: bool) -> Any:
    """``value`` as type ``hint``; text (from --set) is parsed by the type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if type(None) in args and (value is None or (from_text and value in ("none", "null"))):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, from_text=from_text)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}={value!r}; valid: {', '.join(map(str, choices))}")
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} is a section; give a mapping of its keys, got {value!r}")
        return _build(hint, value, key + ".")
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if from_text and str(value).lower() in (
                "true",
                "yes",
                "on",
                "1",
                "false",
                "no",
                "off",
                "0",
            ):
                return str(value).lower() in ("true", "yes", "on", "1")
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                return value
            if from_text:
                return int(str(value))
            raise ValueError
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int | float):
                return float(value)
            if from_text:
                return float(str(value))
            raise ValueError
        if hint is str:
            if isinstance(value, str):
                return value
            if from_text or (isinstance(value, int | float) and not isinstance(value, bool)):
                return str(value)
            raise ValueError
    except ValueError:
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{key}={value!r} is not a valid {name}") from None
    raise AssertionError(f"unsupported config type {hint!r} for {key}")


def _build(cls: type, data: Mapping[str, Any], prefix: str, *, from_text: bool = False) -> Any:
    hints = _hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in valid]
    if unknown:
        where = f"section {prefix[:-1]!r}" if prefix else "the top level"
        raise ConfigError(
            f"unknown config key {prefix + str(unknown[0])!r} in {where}; "
            f"valid keys: {', '.join(valid)}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k, from_text=from_text) for k, v in data.items()}
    return cls(**kwargs)


def apply_overrides(config: SystemConfig, overrides: Sequence[str]) -> SystemConfig:
    """``section.key=value`` strings applied in order (values parsed by the field type)."""
    data = config.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. trainer.lr=2e-5")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(
                f"--set {item!r}: expected section.key=value with one dot; sections: "
                f"{', '.join(f.name for f in dataclasses.fields(SystemConfig))}"
            )
        section, name = parts
        if section not in data:
            raise ConfigError(
                f"unknown config section {section!r} in --set {item!r}; valid sections: "
                f"{', '.join(f.name for f in dataclasses.fields(SystemConfig))}"
            )
        sec_cls = _hints(SystemConfig)[section]
        valid = [f.name for f in dataclasses.fields(sec_cls)]
        if name not in valid:
            raise ConfigError(
                f"unknown config key {key!r} in --set; valid keys of {section!r}: "
                f"{', '.join(valid)}"
            )
        data[section][name] = _coerce(text.strip(), _hints(sec_cls)[name], key, from_text=True)
    return SystemConfig.from_dict(data)


def read_file(path: str | Path) -> dict[str, Any]:
    """A YAML (.yaml/.yml) or TOML (.toml) config file as nested plain data."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {p}: no such file")
    text = p.read_text()
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"--config {p}: unknown format {suffix!r}; use .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--config {p}: {exc}") from None
    except Exception as exc:  # yaml.YAMLError; yaml is imported lazily
        if isinstance(exc, ConfigError) or type(exc).__module__.split(".")[0] != "yaml":
            raise
        raise ConfigError(f"--config {p}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {p}: the top level must be a mapping of sections")
    return data


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> SystemConfig:
    """Defaults < file < ``flags`` ({"section.key": value}, already typed) < ``overrides``."""
    data: dict[str, Any] = read_file(path) if path is not None else {}
    config = SystemConfig.from_dict(data)
    if flags:
        merged = config.to_dict()
        for key, value in flags.items():
            section, name = key.split(".")
            merged[section][name] = value
        config = SystemConfig.from_dict(merged)
    return apply_overrides(config, overrides)
