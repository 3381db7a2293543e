"""DiffusionNFT (Zheng et al. 2025, arXiv 2509.16117): policy improvement on the FORWARD
(noising) process with the flow-matching loss, as an alternative to Flow-GRPO's per-step
likelihood ratio. Same rollouts, same group advantages; a different gradient estimator.

Why it is here: on the tiny base, Flow-GRPO's gradient is mostly noise (``scripts/
diag_grad_snr.py``: the cosine between two independent 128-sample batches is ≈ 0 under the
GenEval reward). Its score-function estimator multiplies each advantage by the SDE step's
Gaussian noise, a 3,072-dimensional random vector per sample and step, of which the reward
explains a tiny part. NFT instead regresses the velocity towards (positive advantage) or
away from (negative advantage) each sample's own clean image x₀, a direction that is the
same for every noise draw: far less variance per sample, and it trains the ODE that the
validation score samples with, not only the SDE.

For one sample with clean image x₀ (the rollout's final latent), prompt c and advantage A,
draw t ~ U(t_min, t_max) and ε ~ N(0, I) (pure functions of (iteration key, seed, j)):

    x_t = (1 − t)·x₀ + t·ε          the forward process at noise level t (σ = t)
    v   = v_θ(x_t, t, c)            v_old = the same with the rollout's weights (detached)
    v⁺  = β·v + (1 − β)·v_old       implicit positive policy
    v⁻  = (1 + β)·v_old − β·v       implicit negative policy (v_old mirrored)
    x̂₀± = x_t − t·v±                their clean-image predictions
    r   = ½ + ½·clip(A / A_max, −1, 1)           "probability the sample is good", in [0, 1]
    L   = [ r·‖x̂₀⁺ − x₀‖²/w⁺ + (1 − r)·‖x̂₀⁻ − x₀‖²/w⁻ ] / β
          (‖·‖² a mean over elements; w± = mean|x̂₀± − x₀|, detached: adaptive weighting)

At θ = θ_old the gradient is 2·t·(2r − 1)·(v − u)/w·∂v/∂θ with u = ε − x₀ the flow-matching
target: advantage-weighted flow matching. As θ moves, the mirrored negative branch bounds
the step (an implicit trust region, no ratio and no clipping needed). An optional penalty
``kl_beta``·mean‖v − v_ref‖² keeps the velocity near a reference policy.

The update schedule (chunks, ``chunks_per_update``, epochs, gradient weighting,
``grad_sync``) is Flow-GRPO's (``flow_grpo.train_on_rollout``), so the data-parallel trainer
runs either objective unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from spotlight.models.dit import DiTPolicy, VelocityModel
from spotlight.models.sampler import TrajectoryState, keyed_generator, keyed_noise

__all__ = ["NftConfig", "NftLoss", "forward_points", "nft_loss", "nft_train", "reward_probability"]


@dataclass(frozen=True, kw_only=True)
class NftConfig:
    """The objective's knobs; validated on construction."""

    beta: float = 1.0
    """Mixing strength of the implicit positive/negative policies (DiffusionNFT's β)."""
    adv_clip_max: float = 5.0
    """Advantages are clipped to ±this and mapped to r = ½ + ½·A/A_max."""
    timesteps_per_sample: int = 2
    """Noise levels t drawn per sample per update (2 costs what Flow-GRPO's 2 SDE steps do)."""
    t_min: float = 0.0
    t_max: float = 1.0
    """t ~ U(t_min, t_max); the high-noise end is where count, colour and layout are decided."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"NftConfig.beta must be > 0, got {self.beta!r}")
        if not (math.isfinite(self.adv_clip_max) and self.adv_clip_max > 0):
            raise ValueError(f"NftConfig.adv_clip_max must be > 0, got {self.adv_clip_max!r}")
        if not isinstance(self.timesteps_per_sample, int) or self.timesteps_per_sample < 1:
            raise ValueError(
                f"NftConfig.timesteps_per_sample must be an integer >= 1, "
                f"got {self.timesteps_per_sample!r}"
            )
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(
                f"NftConfig needs 0 <= t_min < t_max <= 1, got t_min={self.t_min}, "
                f"t_max={self.t_max}"
            )


@dataclass(frozen=True)
class NftLoss:
    """One evaluation: the loss (with autograd) and detached diagnostics."""

    loss: Tensor
    policy_loss: float
    kl: float
    """mean‖v − v_ref‖² (0 without a reference)."""
    old_deviation: float
    """mean‖v − v_old‖²: how far the policy moved from the rollout policy at these points."""


def forward_points(
    x0_BNC: Tensor, seeds: Sequence[int], key: str, config: NftConfig
) -> tuple[Tensor, Tensor]:
    """(x_t, t_B) on the forward process for each sample: pure functions of (seed, key), so
    any rank of a data-parallel trainer draws the same points for the same sample."""
    lo, hi = config.t_min, config.t_max
    u = torch.stack(
        [torch.rand((), generator=keyed_generator(s, f"nft-t:{key}")) for s in seeds]
    ).to(torch.float32)
    t_B = lo + (hi - lo) * u
    eps = keyed_noise(seeds, f"nft-eps:{key}", x0_BNC.shape[1:])
    t = t_B.reshape(-1, *([1] * (x0_BNC.ndim - 1)))
    return (1 - t) * x0_BNC.to(torch.float32) + t * eps, t_B


def reward_probability(advantages_B: Tensor, adv_clip_max: float) -> Tensor:
    """r = ½ + ½·clip(A/A_max, −1, 1): advantage 0 → ½ (both branches equal: no push)."""
    return 0.5 + 0.5 * (advantages_B / adv_clip_max).clamp(-1.0, 1.0)


def nft_loss(
    v_BNC: Tensor,
    v_old_BNC: Tensor,
    x_t_BNC: Tensor,
    t_B: Tensor,
    x0_BNC: Tensor,
    advantages_B: Tensor,
    config: NftConfig,
    *,
    v_ref_BNC: Tensor | None = None,
    kl_beta: float = 0.0,
) -> NftLoss:
    """The DiffusionNFT loss of the module docstring, averaged over the batch."""
    dims = tuple(range(1, x0_BNC.ndim))
    t = t_B.reshape(-1, *([1] * (x0_BNC.ndim - 1)))
    beta = config.beta
    v_old = v_old_BNC.detach()
    v_pos = beta * v_BNC + (1 - beta) * v_old
    v_neg = (1 + beta) * v_old - beta * v_BNC
    err_pos = x_t_BNC - t * v_pos - x0_BNC
    err_neg = x_t_BNC - t * v_neg - x0_BNC
    with torch.no_grad():
        w_pos = err_pos.abs().mean(dim=dims).clamp_min(1e-5)
        w_neg = err_neg.abs().mean(dim=dims).clamp_min(1e-5)
    r = reward_probability(advantages_B.to(torch.float32), config.adv_clip_max)
    per_sample = (
        r * (err_pos**2).mean(dim=dims) / w_pos + (1 - r) * (err_neg**2).mean(dim=dims) / w_neg
    ) / beta
    policy_loss = per_sample.mean()
    loss = policy_loss
    kl = 0.0
    if v_ref_BNC is not None and kl_beta > 0:
        kl_t = ((v_BNC - v_ref_BNC.detach()) ** 2).mean()
        loss = loss + kl_beta * kl_t
        kl = float(kl_t.detach())
    return NftLoss(
        loss=loss,
        policy_loss=float(policy_loss.detach()),
        kl=kl,
        old_deviation=float(((v_BNC.detach() - v_old) ** 2).mean()),
    )


OptimizerStep = Callable[[], float]
"""Synchronise, clip and apply the accumulated gradients; returns the pre-clip norm."""


def nft_train(
    policy: DiTPolicy,
    chunks: Sequence[TrajectoryState],
    chunk_prompts: Sequence[Sequence[str]],
    advantages_B: Tensor,
    update_groups: Sequence[Sequence[int]],
    optimizer_step: OptimizerStep,
    zero_grad: Callable[[], None],
    config: NftConfig,
    *,
    key: str,
    ref_policy: VelocityModel | None = None,
    kl_beta: float = 0.0,
) -> tuple[list[NftLoss], list[float]]:
    """One pass of NFT updates over a rollout batch (``update_groups``: chunk indices per
    optimizer step, in order). Returns every loss evaluation and the pre-clip gradient norms.

    v_old is computed BEFORE the first optimizer step (the rollout's weights) for every chunk
    a later update visits; the first update uses v itself, detached (the same weights).
    """
    offsets = np.cumsum([0] + [s.x_BNC.shape[0] for s in chunks])
    n_t = config.timesteps_per_sample
    points: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
    for c, state in enumerate(chunks):
        for j in range(n_t):
            points[c, j] = forward_points(state.x_BNC, state.seeds, f"{key}:{j}", config)
    later = sorted({c for group in update_groups[1:] for c in group})
    v_old: dict[tuple[int, int], Tensor] = {}
    with torch.no_grad():
        for c in later:
            text = policy.encode_prompts(list(chunk_prompts[c]))
            for j in range(n_t):
                x_t, t_B = points[c, j]
                v_old[c, j] = policy(x_t, t_B, text)
    losses: list[NftLoss] = []
    norms: list[float] = []
    for g, group in enumerate(update_groups):
        n_update = sum(chunks[c].x_BNC.shape[0] for c in group)
        zero_grad()
        for c in group:
            state = chunks[c]
            adv = advantages_B[offsets[c] : offsets[c + 1]]
            weight = state.x_BNC.shape[0] / (n_update * n_t)
            prompts = list(chunk_prompts[c])
            text = policy.encode_prompts(prompts)
            ref_text = None
            if ref_policy is not None and kl_beta > 0:
                with torch.no_grad():
                    ref_text = ref_policy.encode_prompts(prompts)
            total: Tensor | None = None  # one backward per chunk: the text graph is shared
            for j in range(n_t):
                x_t, t_B = points[c, j]
                v = policy(x_t, t_B, text)
                old = v.detach() if g == 0 else v_old[c, j]
                v_ref = None
                if ref_text is not None:
                    assert ref_policy is not None
                    with torch.no_grad():
                        v_ref = ref_policy(x_t, t_B, ref_text)
                out = nft_loss(
                    v, old, x_t, t_B, state.x_BNC, adv, config, v_ref_BNC=v_ref, kl_beta=kl_beta
                )
                total = out.loss * weight if total is None else total + out.loss * weight
                losses.append(out)
            assert total is not None
            total.backward()
        norms.append(optimizer_step())
    return losses, norms
