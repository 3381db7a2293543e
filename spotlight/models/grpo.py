"""GRPO for flow models: per-prompt group advantages, the clipped ratio loss, the KL penalty.

Pure functions on tensors: no model, no optimiser, no I/O, so the trainer and any
distributed actor compute exactly the same numbers, and the tests check them by hand.

Conventions follow Flow-GRPO's public reference: the advantage of a sample is its reward
standardised within its prompt's group, (r − mean_g)/(std_g + ε) with the population std
and ε = 1e-4, optionally clipped to ±``adv_clip_max``; the loss is PPO's clipped surrogate
averaged over samples (and over the trained steps); the KL to a reference policy is the
closed form between two Gaussians with the same std, ‖μ_θ − μ_ref‖² / (2·std²), averaged
over non-batch elements like the log-prob.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

ADV_NORMS: tuple[str, ...] = ("group", "global", "none")


@dataclass(frozen=True, kw_only=True)
class GrpoConfig:
    """The loss's knobs; validated on construction."""

    clip_range: float = 1e-4
    """PPO's ε: the ratio is clipped to [1 − ε, 1 + ε]. Small, because the log-prob is an
    average over every latent element (see ``sampler.gaussian_log_prob``)."""
    adv_clip_max: float | None = 5.0
    """Advantages are clipped to ±this; ``None`` disables clipping."""
    std_eps: float = 1e-4
    """ε in (r − mean)/(std + ε): keeps zero-variance groups at advantage 0, not NaN."""
    kl_beta: float = 0.0
    """Weight of the KL to the reference policy; 0 = no reference (Flow-GRPO's default for
    Qwen-Image)."""
    adv_norm: str = "group"
    """How a group's centred rewards are scaled: ``group`` (÷ the group's std, GRPO), ``global``
    (÷ the std of the whole batch, Flow-GRPO's configs: a group whose rewards differ by one
    check is not inflated to ±1 — Pref-GRPO's "illusory advantages") or ``none`` (Dr. GRPO:
    centred only)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_range) and self.clip_range > 0):
            raise ValueError(f"clip_range must be > 0, got {self.clip_range!r}")
        if self.adv_clip_max is not None and not self.adv_clip_max > 0:
            raise ValueError(f"adv_clip_max must be > 0 or None, got {self.adv_clip_max!r}")
        if not self.std_eps > 0:
            raise ValueError(f"std_eps must be > 0, got {self.std_eps!r}")
        if not (math.isfinite(self.kl_beta) and self.kl_beta >= 0):
            raise ValueError(f"kl_beta must be >= 0, got {self.kl_beta!r}")
        if self.adv_norm not in ADV_NORMS:
            raise ValueError(f"adv_norm {self.adv_norm!r} unknown; valid: {', '.join(ADV_NORMS)}")


@dataclass(frozen=True)
class RewardStats:
    """What a batch of grouped rewards looked like."""

    mean: float
    std: float
    zero_std_group_frac: float
    """Fraction of groups whose rewards are all equal: they get advantage 0 and teach nothing."""


@dataclass(frozen=True)
class LossDiagnostics:
    """Detached scalars describing one loss evaluation."""

    loss: float
    policy_loss: float
    kl: float
    """Mean KL to the reference (0 without one)."""
    approx_kl: float
    """½·mean((log p_new − log p_old)²): how far the policy moved from the rollout policy."""
    clip_frac_high: float
    """Fraction of ratios above 1 + ε."""
    clip_frac_low: float
    """Fraction of ratios below 1 − ε."""
    ratio_mean: float
    ratio_max: float


def _group_index(groups: Sequence[Hashable]) -> Tensor:
    ids: dict[Hashable, int] = {}
    return torch.tensor([ids.setdefault(g, len(ids)) for g in groups], dtype=torch.long)


def _group_mean_std(rewards_B: Tensor, index_B: Tensor) -> tuple[Tensor, Tensor]:
    num = int(index_B.max()) + 1 if index_B.numel() else 0
    r = rewards_B.to(torch.float64)
    count = torch.zeros(num, dtype=torch.float64).index_add_(0, index_B, torch.ones_like(r))
    mean = torch.zeros(num, dtype=torch.float64).index_add_(0, index_B, r) / count
    dev = r - mean[index_B]
    var = torch.zeros(num, dtype=torch.float64).index_add_(0, index_B, dev * dev) / count
    return mean, var.sqrt()


def group_advantages(
    rewards_B: Tensor,
    groups: Sequence[Hashable],
    *,
    std_eps: float = 1e-4,
    clip: float | None = None,
    norm: str = "group",
) -> Tensor:
    """(r − mean_g)/(std + ε) per sample, g = the sample's group (its prompt), float32.

    ``norm`` picks the std (``GrpoConfig.adv_norm``): ``group`` the population std (ddof 0)
    of the sample's group, as in Flow-GRPO's default; ``global`` that of the whole batch;
    ``none`` no scaling (ε too is dropped). A group of one sample, or one whose rewards are
    equal, gets advantage 0 in every mode. ``clip`` clips to ±clip.
    """
    if rewards_B.ndim != 1 or len(groups) != rewards_B.shape[0]:
        raise ValueError(
            f"need one group label per reward: rewards shape {tuple(rewards_B.shape)}, "
            f"{len(groups)} labels"
        )
    if norm not in ADV_NORMS:
        raise ValueError(f"advantage norm {norm!r} unknown; valid: {', '.join(ADV_NORMS)}")
    index = _group_index(groups)
    mean, std = _group_mean_std(rewards_B, index)
    centred = rewards_B.to(torch.float64) - mean[index]
    if norm == "group":
        adv = centred / (std[index] + std_eps)
    elif norm == "global":
        adv = centred / (rewards_B.to(torch.float64).std(unbiased=False) + std_eps)
    else:
        adv = centred
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return adv.to(torch.float32)


def reward_stats(
    rewards_B: Tensor, groups: Sequence[Hashable], *, tol: float = 1e-8
) -> RewardStats:
    """Mean, std (population) and the fraction of groups with (near) zero reward spread."""
    index = _group_index(groups)
    _, std = _group_mean_std(rewards_B, index)
    r = rewards_B.to(torch.float64)
    return RewardStats(
        mean=float(r.mean()),
        std=float(r.std(unbiased=False)),
        zero_std_group_frac=float((std <= tol).to(torch.float64).mean()),
    )


def gaussian_mean_kl(mean_BNC: Tensor, ref_mean_BNC: Tensor, std_B: Tensor) -> Tensor:
    """KL(N(μ_θ, s²) ‖ N(μ_ref, s²)) per sample, averaged over non-batch elements, float32.

    Both policies share the step's std s (it depends on σ only), so the KL is
    ‖μ_θ − μ_ref‖² / (2·s²); averaged (not summed) like ``gaussian_log_prob``. Flow-GRPO's
    code divides by std_t² rather than (std_t·sqrt(−dt))²: the same up to a per-step
    constant |dt| that a different β absorbs; we use the exact KL.
    """
    diff = (mean_BNC.to(torch.float32) - ref_mean_BNC.to(torch.float32)) ** 2
    per = diff.mean(dim=tuple(range(1, diff.ndim)))
    return per / (2 * std_B.to(torch.float32) ** 2)


def grpo_loss(
    new_logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    *,
    config: GrpoConfig,
    kl: Tensor | None = None,
) -> tuple[Tensor, LossDiagnostics]:
    """PPO's clipped surrogate on per-step log-probs, plus β·KL.

    ``new_logp``/``old_logp`` have shape [B] (one step) or [S, B] (S trained steps);
    ``advantages`` is [B] (broadcast over steps). With ratio = exp(new − old)::

        loss = mean(max(−A·ratio, −A·clip(ratio, 1 − ε, 1 + ε))) + β·mean(kl)

    the mean running over samples and steps. On the first on-policy pass ratio == 1
    exactly, so the loss is −mean(A) (0 for exactly standardised groups) and its gradient is
    −mean(A·∇log p). ``kl`` (same shape as ``new_logp``) is required iff β > 0.
    """
    if new_logp.shape != old_logp.shape:
        raise ValueError(f"log-prob shapes differ: {new_logp.shape} vs {old_logp.shape}")
    if (kl is None) != (config.kl_beta == 0):
        raise ValueError(
            f"kl must be given exactly when kl_beta > 0 (kl_beta={config.kl_beta}, "
            f"kl {'missing' if kl is None else 'given'})"
        )
    adv = advantages.to(torch.float32)
    if config.adv_clip_max is not None:
        adv = adv.clamp(-config.adv_clip_max, config.adv_clip_max)
    adv = adv.expand_as(new_logp)
    log_ratio = new_logp.to(torch.float32) - old_logp.to(torch.float32).detach()
    ratio = torch.exp(log_ratio)
    eps = config.clip_range
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps, 1.0 + eps)
    policy_loss = torch.maximum(unclipped, clipped).mean()
    kl_mean = kl.to(torch.float32).mean() if kl is not None else torch.zeros(())
    loss = policy_loss + config.kl_beta * kl_mean if kl is not None else policy_loss
    with torch.no_grad():
        r = ratio.detach()
        diag = LossDiagnostics(
            loss=float(loss.detach()),
            policy_loss=float(policy_loss.detach()),
            kl=float(kl_mean.detach()),
            approx_kl=float(0.5 * (log_ratio.detach() ** 2).mean()),
            clip_frac_high=float((r - 1.0 > eps).to(torch.float32).mean()),
            clip_frac_low=float((1.0 - r > eps).to(torch.float32).mean()),
            ratio_mean=float(r.mean()),
            ratio_max=float(r.max()),
        )
    return loss, diag
