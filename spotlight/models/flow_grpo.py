"""One Flow-GRPO iteration and the validation score, as pure functions of a policy.

No files, no progress bars, no processes: the local trainer (``spotlight train --local``)
and, later, distributed actors call the same functions, so a single-process run and a
distributed one compute the same update.

One iteration (``flow_grpo_iteration``)::

    prompts (P) × seeds (G each) ── rollout (SDE, no grad, chunks of ``micro_batch``)
        │   records every latent and each SDE step's log-prob (sampler.TrajectoryState)
        ▼
    decode → reward_fn → group advantages (grpo.group_advantages, one group per prompt)
        ▼
    for each inner epoch, for each chunk (the SAME chunks as the rollout), for each SDE step:
        re-evaluate the step's Gaussian with gradients → grpo_loss → backward
        (every ``chunks_per_update`` chunks: grad_sync if data parallel → clip → optimizer step)

Why the same chunks: the first pass must reproduce the recorded log-probs bit for bit
(ratio == 1 exactly). A different batch composition or dtype changes the matmul blocking and
the rounding, the ratio drifts from 1 before any update, and the clip range (1e-4 scale)
is eaten by noise — the known ratio-drift bug of public Flow-GRPO code. We check it on every
iteration and report the largest deviation (``first_ratio_dev``, expected 0.0).

The policy is kept in train mode while sampling: torch's TransformerEncoderLayer takes a
different ("fast path") kernel in eval mode without autograd, which would break that
equality for the tiny model's text encoder. Nothing in it is stochastic (no dropout).

Shape legend: B samples, N tokens, C channels, S trained (SDE) steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from spotlight.models.dit import DiTPolicy, TextEmbedding, VelocityModel
from spotlight.models.grpo import (
    GrpoConfig,
    LossDiagnostics,
    RewardStats,
    gaussian_mean_kl,
    group_advantages,
    grpo_loss,
    reward_stats,
)
from spotlight.models.nft import NftConfig, nft_train
from spotlight.models.sampler import (
    Mode,
    SamplerConfig,
    TrajectoryState,
    concat_states,
    gaussian_log_prob,
    sample,
    sde_step,
    sigmas,
)

RewardFn = Callable[[np.ndarray, list[str]], np.ndarray]
"""``reward_fn(images_uint8_BHWC, prompts) -> float32 [B]`` in [0, 1]."""

Objective = Literal["flow_grpo", "nft"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)

GradSync = Callable[[list[Tensor]], None]
"""``grad_sync(grads)``: makes the accumulated gradients (parameter order) the global ones,
in place, before clipping and the optimizer step (e.g. a data-parallel all-reduce)."""


@dataclass(frozen=True, kw_only=True)
class FlowGrpoConfig:
    """One iteration's algorithm; validated on construction."""

    prompts_per_iter: int = 8
    """P: prompts (groups) per iteration."""
    group_size: int = 8
    """G: seeds per prompt; the advantage compares a prompt's G samples with each other."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Rollout sampler; only its SDE-window steps are trained."""
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    lr: float = 1e-4
    """AdamW learning rate."""
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    """Gradient clipping by global norm; ``None`` = no clipping."""
    inner_epochs: int = 1
    """Passes over one rollout batch (the first is on-policy, later ones reuse it)."""
    micro_batch: int = 16
    """Samples per forward pass, in rollouts and training alike (see module docstring)."""
    chunks_per_update: int = 1
    """Micro-batches whose gradients are accumulated into one optimizer step."""
    objective: Objective = "flow_grpo"
    """The gradient estimator on the same rollouts and advantages: ``flow_grpo`` (clipped
    likelihood ratio of the SDE steps) or ``nft`` (DiffusionNFT on the forward process,
    ``spotlight.models.nft``; lower variance, needs no SDE step)."""
    nft: NftConfig = field(default_factory=NftConfig)
    """The ``nft`` objective's knobs (unused by ``flow_grpo``)."""

    def __post_init__(self) -> None:
        ints = {
            "prompts_per_iter": self.prompts_per_iter,
            "group_size": self.group_size,
            "inner_epochs": self.inner_epochs,
            "micro_batch": self.micro_batch,
            "chunks_per_update": self.chunks_per_update,
        }
        for name, value in ints.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"FlowGrpoConfig.{name} must be an integer >= 1, got {value!r}")
        if self.group_size < 2:
            raise ValueError(
                f"group_size must be >= 2 (a group of one has no spread to learn from), "
                f"got {self.group_size}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )
        if self.objective == "flow_grpo" and not self.sampler.sde_steps():
            raise ValueError(
                f"the sampler has no SDE step to train (noise_level={self.sampler.noise_level}, "
                f"sde_window={self.sampler.sde_window}); set noise_level > 0, or use "
                f"objective='nft' (it trains on the forward process, no SDE step needed)"
            )

    @property
    def batch_size(self) -> int:
        return self.prompts_per_iter * self.group_size


@dataclass(frozen=True)
class IterationStats:
    """What one iteration did."""

    reward: RewardStats
    loss: LossDiagnostics
    """Averaged over every (chunk, step, epoch) evaluation; ``ratio_max`` is the max."""
    first_ratio_dev: float
    """max |ratio − 1| on the first (on-policy) pass: 0.0 unless log-probs drifted."""
    grad_norm: float
    """Mean pre-clipping gradient norm over the optimizer steps."""
    optimizer_steps: int
    rollout_s: float
    reward_s: float
    train_s: float


@dataclass(frozen=True)
class ValidationResult:
    """Mean reward over held-out prompts × fixed seeds with the ODE sampler."""

    score: float
    spread: float
    """Std over evaluation seeds of the per-seed mean reward (how much the score depends on
    which seeds were drawn)."""
    per_prompt: dict[str, float]
    rewards_PS: np.ndarray
    """Raw rewards, prompts × seeds."""
    images_uint8: np.ndarray | None = None
    """With ``keep_images=N``: the first N prompts' images at the first seed, N×H×W×3."""


@dataclass
class Rollout:
    """A rollout batch, kept in the chunks it was sampled in."""

    chunks: list[TrajectoryState]
    chunk_prompts: list[list[str]]
    rewards_B: Tensor
    prompts: list[str]
    images_uint8: np.ndarray
    sample_s: float
    reward_s: float


def _velocity(policy: DiTPolicy, text: TextEmbedding) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda x_BNC, sigma_B: policy(x_BNC, sigma_B, text)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def generate(
    policy: DiTPolicy,
    prompts: Sequence[str],
    seeds: Sequence[int],
    sampler: SamplerConfig,
    *,
    micro_batch: int,
    mode: Mode = "sde",
) -> tuple[list[TrajectoryState], list[list[str]]]:
    """Trajectories for (prompt_i, seed_i) pairs, sampled in chunks of ``micro_batch``."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    shape = (policy.config.num_tokens, policy.config.token_dim)
    was_training = policy.training
    policy.train()  # see module docstring: the same kernels as the gradient pass
    states, chunk_prompts = [], []
    try:
        for sl in _chunks(len(prompts), micro_batch):
            ps = list(prompts[sl])
            with torch.no_grad():
                text = policy.encode_prompts(ps)
            states.append(sample(_velocity(policy, text), seeds[sl], shape, sampler, mode=mode))
            chunk_prompts.append(ps)
    finally:
        policy.train(was_training)
    return states, chunk_prompts


def decode(policy: DiTPolicy, states: Sequence[TrajectoryState]) -> np.ndarray:
    """Final latents of ``states`` as uint8 B×H×W×3 images (what rewards read; VAE-decoded
    for a latent-space policy, see :meth:`DiTPolicy.images`)."""
    return policy.images(torch.cat([s.x_BNC for s in states]))


def regroup(
    trajectories: Sequence[TrajectoryState],
    prompts: Sequence[str],
    seeds: Sequence[int],
    sampler: SamplerConfig,
    *,
    micro_batch: int,
) -> tuple[list[TrajectoryState], list[list[str]]]:
    """Finished trajectories sampled elsewhere (one per (prompt_i, seed_i), in order) as the
    chunks of ``micro_batch`` that :func:`generate` would have made.

    Checked, since a misplaced sample would silently train on another prompt's reward: each
    trajectory must hold exactly ``seeds[i]`` and have run all ``sampler.num_steps`` steps.
    """
    if not (len(trajectories) == len(prompts) == len(seeds)):
        raise ValueError(
            f"{len(trajectories)} trajectories for {len(prompts)} prompts and {len(seeds)} seeds"
        )
    for i, (state, seed) in enumerate(zip(trajectories, seeds, strict=True)):
        if state.seeds != (int(seed),) or state.step != sampler.num_steps:
            raise ValueError(
                f"trajectory {i} holds seeds {state.seeds} at step {state.step}; expected "
                f"seed {seed} after {sampler.num_steps} steps"
            )
    parts = _chunks(len(prompts), micro_batch)
    states = [concat_states(trajectories[sl]) for sl in parts]
    return states, [list(prompts[sl]) for sl in parts]


def rollout(
    policy: DiTPolicy,
    prompts: Sequence[str],
    seeds: Sequence[int],
    reward_fn: RewardFn,
    config: FlowGrpoConfig,
    *,
    trajectories: Sequence[TrajectoryState] | None = None,
) -> Rollout:
    """SDE rollouts with log-probs for each (prompt, seed), decoded and rewarded.

    ``trajectories``: the samples were already drawn elsewhere (rollout workers; see
    :func:`regroup`); only the rewards are computed here. Their log-probs were recorded in
    other batches than the training chunks, so the first ratio is 1 within float rounding
    (≈1e-7), not exactly.
    """
    t0 = time.perf_counter()
    if trajectories is None:
        states, chunk_prompts = generate(
            policy, prompts, seeds, config.sampler, micro_batch=config.micro_batch
        )
    else:
        states, chunk_prompts = regroup(
            trajectories, prompts, seeds, config.sampler, micro_batch=config.micro_batch
        )
    t1 = time.perf_counter()
    images = decode(policy, states)
    rewards = np.asarray(reward_fn(images, list(prompts)), dtype=np.float32)
    if rewards.shape != (len(prompts),):
        raise ValueError(f"reward_fn returned shape {rewards.shape}, expected ({len(prompts)},)")
    t2 = time.perf_counter()
    return Rollout(
        states, chunk_prompts, torch.from_numpy(rewards), list(prompts), images, t1 - t0, t2 - t1
    )


def step_log_probs(
    policy: DiTPolicy,
    state: TrajectoryState,
    prompts: Sequence[str],
    step: int,
    sampler: SamplerConfig,
    *,
    ref_policy: VelocityModel | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Re-evaluated log-prob [B] of recorded step ``step`` (with autograd), and the KL to
    ``ref_policy``'s Gaussian at the same point if one is given."""
    sched = sigmas(sampler)
    b = state.x_BNC.shape[0]
    sigma_B = sched[step].expand(b).clone()
    sigma_next_B = sched[step + 1].expand(b).clone()
    x_BNC, x_next_BNC = state.latents[step], state.latents[step + 1]
    text = policy.encode_prompts(list(prompts))
    v_BNC = policy(x_BNC, sigma_B, text)
    noise_level, sigma_max = sampler.noise_level, float(sched[1])
    out = sde_step(
        v_BNC,
        x_BNC,
        sigma_B,
        sigma_next_B,
        x_next_BNC=x_next_BNC,
        noise_level=noise_level,
        sigma_max=sigma_max,
    )
    logp = gaussian_log_prob(out.x_next_BNC, out.mean_BNC, out.std_B)
    kl = None
    if ref_policy is not None:
        with torch.no_grad():
            ref_text = ref_policy.encode_prompts(list(prompts))
            v_ref = ref_policy(x_BNC, sigma_B, ref_text)
            ref = sde_step(
                v_ref,
                x_BNC,
                sigma_B,
                sigma_next_B,
                x_next_BNC=x_next_BNC,
                noise_level=noise_level,
                sigma_max=sigma_max,
            )
        kl = gaussian_mean_kl(out.mean_BNC, ref.mean_BNC, out.std_B)
    return logp, kl


def _average(diags: Sequence[LossDiagnostics]) -> LossDiagnostics:
    values = {
        f.name: float(np.mean([getattr(d, f.name) for d in diags])) for f in fields(LossDiagnostics)
    }
    values["ratio_max"] = max(d.ratio_max for d in diags)
    return LossDiagnostics(**values)


def train_on_rollout(
    policy: DiTPolicy,
    optimizer: torch.optim.Optimizer,
    batch: Rollout,
    advantages_B: Tensor,
    config: FlowGrpoConfig,
    *,
    shuffle_seed: int = 0,
    ref_policy: VelocityModel | None = None,
    grad_sync: GradSync | None = None,
) -> tuple[LossDiagnostics, float, float, int]:
    """The clipped GRPO update(s) on one rollout batch.

    Returns (diagnostics averaged over evaluations, max |ratio − 1| of the first pass, mean
    gradient norm, optimizer steps). Gradients are accumulated as the mean over the samples
    and SDE steps of each update, so the scale does not depend on ``micro_batch``.

    ``grad_sync`` (data parallelism) is called once per update with the accumulated
    gradients, in parameter order, after the last backward and BEFORE clipping and the
    optimizer step, so both see the synchronised gradient; it must modify them in place.
    The caller owns the collective (models never import torch.distributed users).
    """
    policy.train()

    def optimizer_step() -> float:
        params = [p for p in policy.parameters() if p.grad is not None]
        if grad_sync is not None:
            grad_sync([p.grad for p in params if p.grad is not None])
        norm = torch.nn.utils.clip_grad_norm_(
            params, config.max_grad_norm if config.max_grad_norm is not None else float("inf")
        )
        optimizer.step()
        return float(norm)

    def zero_grad() -> None:
        optimizer.zero_grad(set_to_none=True)

    # Epoch 0 keeps the rollout's chunk order (on-policy pass); later epochs shuffle the chunk
    # order only, never the chunks' composition.
    order_rng = np.random.default_rng(shuffle_seed)
    epochs: list[list[list[int]]] = []
    for epoch in range(config.inner_epochs):
        order = list(range(len(batch.chunks)))
        if epoch > 0:
            order = order_rng.permutation(len(order)).tolist()
        epochs.append(
            [
                order[i : i + config.chunks_per_update]
                for i in range(0, len(order), config.chunks_per_update)
            ]
        )
    if config.objective == "nft":
        groups = [g for epoch_groups in epochs for g in epoch_groups]
        losses, norms = nft_train(
            policy,
            batch.chunks,
            batch.chunk_prompts,
            advantages_B,
            groups,
            optimizer_step,
            zero_grad,
            config.nft,
            key=f"iteration:{shuffle_seed}",
            ref_policy=ref_policy,
            kl_beta=config.grpo.kl_beta,
        )
        diag = LossDiagnostics(
            loss=float(np.mean([float(x.loss.detach()) for x in losses])),
            policy_loss=float(np.mean([x.policy_loss for x in losses])),
            kl=float(np.mean([x.kl for x in losses])),
            approx_kl=float(np.mean([x.old_deviation for x in losses])),
            clip_frac_high=0.0,
            clip_frac_low=0.0,
            ratio_mean=1.0,
            ratio_max=1.0,
        )
        return diag, 0.0, float(np.mean(norms)), len(norms)

    steps = config.sampler.sde_steps()
    offsets = np.cumsum([0] + [s.x_BNC.shape[0] for s in batch.chunks])
    diags: list[LossDiagnostics] = []
    grad_norms: list[float] = []
    first_dev = 0.0
    n_opt = 0
    for epoch, groups in enumerate(epochs):
        for group in groups:
            n_update = sum(batch.chunks[c].x_BNC.shape[0] for c in group)
            zero_grad()
            for c in group:
                state = batch.chunks[c]
                adv = advantages_B[offsets[c] : offsets[c + 1]]
                weight = state.x_BNC.shape[0] / (n_update * len(steps))
                for k in steps:
                    new_logp, kl = step_log_probs(
                        policy,
                        state,
                        batch.chunk_prompts[c],
                        k,
                        config.sampler,
                        ref_policy=ref_policy,
                    )
                    old_logp = state.log_probs[k]
                    loss, diag = grpo_loss(new_logp, old_logp, adv, config=config.grpo, kl=kl)
                    (loss * weight).backward()
                    diags.append(diag)
                    if epoch == 0 and n_opt == 0:
                        dev = (torch.exp(new_logp.detach() - old_logp) - 1).abs().max()
                        first_dev = max(first_dev, float(dev))
            grad_norms.append(optimizer_step())
            n_opt += 1
    return _average(diags), first_dev, float(np.mean(grad_norms)), n_opt


def flow_grpo_iteration(
    policy: DiTPolicy,
    optimizer: torch.optim.Optimizer,
    prompts: Sequence[str],
    seeds: Sequence[int],
    reward_fn: RewardFn,
    config: FlowGrpoConfig,
    *,
    shuffle_seed: int = 0,
    ref_policy: VelocityModel | None = None,
    grad_sync: GradSync | None = None,
    trajectories: Sequence[TrajectoryState] | None = None,
) -> tuple[IterationStats, Rollout]:
    """Rollout → rewards → advantages → clipped update. ``prompts`` has one entry per sample
    (each prompt repeated ``group_size`` times), ``seeds`` one seed per sample. ``grad_sync``:
    see ``train_on_rollout`` (the data-parallel trainer uses it with its own sharding).
    ``trajectories``: samples drawn by rollout workers instead of here (see ``rollout``)."""
    if len(prompts) != config.batch_size or len(seeds) != config.batch_size:
        raise ValueError(
            f"expected {config.batch_size} (prompt, seed) pairs "
            f"({config.prompts_per_iter} prompts × {config.group_size}), got "
            f"{len(prompts)} prompts and {len(seeds)} seeds"
        )
    batch = rollout(policy, prompts, seeds, reward_fn, config, trajectories=trajectories)
    advantages = group_advantages(
        batch.rewards_B,
        batch.prompts,
        std_eps=config.grpo.std_eps,
        clip=None,
        norm=config.grpo.adv_norm,
    )
    t_train = time.perf_counter()
    diag, first_dev, grad_norm, n_opt = train_on_rollout(
        policy,
        optimizer,
        batch,
        advantages,
        config,
        shuffle_seed=shuffle_seed,
        ref_policy=ref_policy,
        grad_sync=grad_sync,
    )
    train_s = time.perf_counter() - t_train
    stats = IterationStats(
        reward=reward_stats(batch.rewards_B, batch.prompts),
        loss=diag,
        first_ratio_dev=first_dev,
        grad_norm=grad_norm,
        optimizer_steps=n_opt,
        rollout_s=batch.sample_s,
        reward_s=batch.reward_s,
        train_s=train_s,
    )
    return stats, batch


def validate(
    policy: DiTPolicy,
    prompts: Sequence[str],
    seeds: Sequence[int],
    reward_fn: RewardFn,
    sampler: SamplerConfig,
    *,
    micro_batch: int = 64,
    keep_images: int = 0,
) -> ValidationResult:
    """The validation score: every prompt × every seed, ODE sampler, mean reward.

    ``keep_images=N`` also returns the images of the first N prompts at the first seed (for
    experiment trackers); the score does not depend on it."""
    if not prompts or not seeds:
        raise ValueError("validation needs at least one prompt and one seed")
    pairs_p = [p for p in prompts for _ in seeds]
    pairs_s = [s for _ in prompts for s in seeds]
    states, _ = generate(policy, pairs_p, pairs_s, sampler, micro_batch=micro_batch, mode="ode")
    images = decode(policy, states)
    rewards = np.asarray(reward_fn(images, pairs_p), dtype=np.float64)
    rewards_PS = rewards.reshape(len(prompts), len(seeds))
    kept = images[: keep_images * len(seeds) : len(seeds)] if keep_images > 0 else None
    per_seed = rewards_PS.mean(axis=0)
    return ValidationResult(
        score=float(rewards_PS.mean()),
        spread=float(per_seed.std()) if len(seeds) > 1 else 0.0,
        per_prompt={p: float(r) for p, r in zip(prompts, rewards_PS.mean(axis=1), strict=True)},
        rewards_PS=rewards_PS,
        images_uint8=None if kept is None else np.ascontiguousarray(kept),
    )
