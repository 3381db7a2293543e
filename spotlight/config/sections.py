"""The sections of what the trainer does: ``run``, ``trainer``, ``planner``.

Every field is documented where it is declared; each section validates itself and builds
its component's config (``TrainerSection.algo``, ``PlannerSection.build``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

from spotlight.config.checks import ConfigError, _positive_float, _positive_int

if TYPE_CHECKING:
    from spotlight.actors.exploration.planner import PlannerConfig
    from spotlight.models.flow_grpo import FlowGrpoConfig
    from spotlight.models.lora_settings import LoraSettings

__all__ = ["RESUME_MODES", "SEED_MODES", "PlannerSection", "RunSection", "TrainerSection"]

RESUME_MODES = ("never", "auto")


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
    resume: Literal["never", "auto"] = "never"
    """What to do with a run directory that already holds a run. ``never``: refuse it (continue
    one explicitly with ``--resume DIR``). ``auto`` (``--resume auto``): continue it from its
    checkpoint, start fresh when it is empty or has no checkpoint yet, refuse one that holds
    another run or other files: what a cluster that re-runs the same command after every
    restart needs (docs/deploy.md)."""

    def __post_init__(self) -> None:
        for name in ("iterations", "val_every", "ckpt_every"):
            _positive_int("run", name, getattr(self, name))
        if self.time_budget_s is not None:
            _positive_float("run", "time_budget_s", self.time_budget_s)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"run.seed must be an integer >= 0, got {self.seed!r}")
        if self.resume not in RESUME_MODES:
            raise ConfigError(f"run.resume={self.resume!r}; valid: {', '.join(RESUME_MODES)}")


SEED_MODES = ("random", "explored")


@dataclass(frozen=True, kw_only=True)
class TrainerSection:
    """The Flow-GRPO trainer (see spotlight/models/flow_grpo.py for the algorithm)."""

    seeds: Literal["random", "explored"] = "explored"
    """``explored``: seeds chosen by the planner from what spot explorers measured;
    ``random``: plain Flow-GRPO with random seeds (the baseline; no exploration)."""
    base: str | None = None
    """Base checkpoint directory; None = the tiny latent base shipped in the package
    (spotlight/assets, rebuilt by `spotlight pretrain`)."""
    reward: str = "checks"
    """Reward: checks (GenEval-style binary checks, averaged), geneval (partial-credit
    count/colour/position) or ocr (quoted prompt text)."""
    prompts: str | None = None
    """A prompt file (UTF-8, one prompt per line, ``#`` comments; a seeded tenth is held out
    for validation); None = the procedural scene captions. ``reward: ocr`` needs one whose
    every prompt quotes the text to render (``a sign that says "OPEN"``)."""
    prompts_per_iter: int = 16
    """Prompts (groups) per iteration (16 x 8 = 128 samples: the batch size under which the
    tiny testbed learns steadily, benchmarks/results/learning_pilots.json)."""
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
    lr: float = 1e-4
    """AdamW learning rate (1e-4: NFT on the tiny testbed, learning.json; 3e-4 diverged)."""
    clip_range: float = 1e-2
    """GRPO ratio clip range."""
    adv_norm: str = "global"
    """Advantage scaling: global (÷ the batch's reward std, Flow-GRPO's configs), group
    (÷ each prompt's std, GRPO) or none (Dr. GRPO); see models/grpo.py."""
    kl_beta: float = 0.0
    """KL weight towards the base (0: no reference model)."""
    objective: str = "nft"
    """Gradient estimator: nft (DiffusionNFT; the tiny testbed's default, the one it learns
    under: learning.json) or flow_grpo (clipped SDE-step ratio; learning_pilots.json)."""
    nft_beta: float = 1.0
    """DiffusionNFT's β (objective: nft only)."""
    inner_epochs: int = 1
    """Passes of GRPO updates over each iteration's rollouts (1: strictly on-policy)."""
    micro_batch: int = 32
    """Samples per forward pass (rollout and training alike)."""
    chunks_per_update: int = 2
    """Micro-batches per optimizer step: 2 × 32 = 64 samples, two steps per 128-sample
    iteration (the setting learning.json measured). Data parallelism over several ranks makes
    one step over the global batch and refuses fewer chunks (models/data_parallel.py): set
    4 there (4 × 32 = 128)."""
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
        from spotlight.models.lora_settings import LoraSettings

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
            grpo=GrpoConfig(
                clip_range=self.clip_range, kl_beta=self.kl_beta, adv_norm=self.adv_norm
            ),
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
