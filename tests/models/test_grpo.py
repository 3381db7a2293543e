"""GRPO maths on hand-computed numbers, and the on-policy ratio being exactly 1."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from spotlight.models.grpo import (
    GrpoConfig,
    gaussian_mean_kl,
    group_advantages,
    grpo_loss,
    reward_stats,
)
from spotlight.models.sampler import SamplerConfig, gaussian_log_prob, sample, sde_step, sigmas


def test_group_advantages_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.2])
    groups = ["a", "a", "a", "a", "b", "b", "c"]
    adv = group_advantages(rewards, groups)
    # group a: mean 0.5, population std 0.5 -> ±0.5/(0.5 + 1e-4); b: equal rewards -> 0;
    # c: a single sample -> 0.
    unit = 0.5 / (0.5 + 1e-4)
    expected = torch.tensor([unit, -unit, unit, -unit, 0.0, 0.0, 0.0])
    assert adv.dtype == torch.float32
    assert torch.allclose(adv, expected, atol=1e-7)
    clipped = group_advantages(torch.tensor([0.0, 0.0, 0.0, 1.0]), ["x"] * 4, clip=1.0)
    # mean 0.25, std sqrt(3)/4: raw advantages -0.577 (×3) and 1.732, clipped to 1.
    assert torch.allclose(clipped[:3], torch.full((3,), -0.25 / (math.sqrt(3) / 4 + 1e-4)))
    assert clipped[3] == 1.0


def test_groups_are_keyed_by_label_not_position() -> None:
    a = group_advantages(torch.tensor([1.0, 5.0, 0.0, 5.0]), ["p", "q", "p", "q"])
    assert torch.allclose(a, torch.tensor([1.0, 0.0, -1.0, 0.0]), atol=1e-3)


def test_reward_stats() -> None:
    stats = reward_stats(
        torch.tensor([1.0, 0.0, 0.3, 0.3, 0.7, 0.7]), ["a", "a", "b", "b", "c", "c"]
    )
    assert stats.mean == pytest.approx(0.5)
    assert stats.std == pytest.approx(
        float(torch.tensor([1.0, 0.0, 0.3, 0.3, 0.7, 0.7]).std(unbiased=False))
    )
    assert stats.zero_std_group_frac == pytest.approx(2 / 3)


def test_clip_fractions_on_crafted_ratios() -> None:
    config = GrpoConfig(clip_range=0.1, adv_clip_max=None)
    ratios = torch.tensor([0.5, 0.95, 1.0, 1.05, 1.2, 1.3])
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, 1.0, -1.0])
    loss, diag = grpo_loss(ratios.log(), torch.zeros(6), adv, config=config)
    assert diag.clip_frac_low == pytest.approx(1 / 6)
    assert diag.clip_frac_high == pytest.approx(2 / 6)
    assert diag.ratio_max == pytest.approx(1.3)
    assert diag.ratio_mean == pytest.approx(float(ratios.mean()))
    # max(−A·r, −A·clip(r)) elementwise, by hand:
    per = [-0.5, -0.95, -1.0, 1.05, -1.1, 1.3]
    assert loss.item() == pytest.approx(sum(per) / 6, abs=1e-6)
    assert diag.approx_kl == pytest.approx(float(0.5 * (ratios.log() ** 2).mean()), rel=1e-5)


def test_loss_on_policy_is_minus_mean_advantage_and_clips_advantages() -> None:
    config = GrpoConfig(clip_range=1e-4, adv_clip_max=2.0)
    logp = torch.randn(3, 4)  # [S steps, B samples]
    adv = torch.tensor([3.0, -1.0, 0.5, 0.0])
    loss, diag = grpo_loss(logp, logp.clone(), adv, config=config)
    assert loss.item() == pytest.approx(-float(adv.clamp(-2, 2).mean()))
    assert diag.ratio_mean == 1.0 and diag.ratio_max == 1.0
    assert diag.clip_frac_high == 0.0 and diag.clip_frac_low == 0.0 and diag.approx_kl == 0.0


def test_kl_is_the_gaussian_kl() -> None:
    gen = torch.Generator().manual_seed(0)
    mu, ref = torch.randn(2, 5, 3, generator=gen), torch.randn(2, 5, 3, generator=gen)
    std = torch.tensor([0.3, 0.7])
    ours = gaussian_mean_kl(mu, ref, std)
    s = std.reshape(-1, 1, 1).expand_as(mu)
    exact = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, s), torch.distributions.Normal(ref, s)
    ).mean(dim=(1, 2))
    assert torch.allclose(ours, exact, atol=1e-6)
    config = GrpoConfig(kl_beta=0.5)
    logp = torch.zeros(2)
    loss, diag = grpo_loss(logp, logp, torch.zeros(2), config=config, kl=ours)
    assert loss.item() == pytest.approx(0.5 * float(ours.mean()))
    assert diag.kl == pytest.approx(float(ours.mean()))
    with pytest.raises(ValueError, match="kl must be given"):
        grpo_loss(logp, logp, torch.zeros(2), config=config)


class _Velocity(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(5, 4, generator=gen) * 0.3)

    def forward(self, x_BNC: Tensor, sigma_B: Tensor) -> Tensor:
        s = sigma_B.reshape(-1, 1, 1).expand(-1, x_BNC.shape[1], 1)
        return torch.tanh(torch.cat([x_BNC, s], -1) @ self.w)


def test_first_on_policy_ratio_is_exactly_one() -> None:
    """The ratio-drift bug: recomputing with the same weights must give the same bits."""
    model = _Velocity()
    config = SamplerConfig(num_steps=4, noise_level=0.9, sde_window=(0, 2))
    seeds = [1, 2, 3, 4]
    traj = sample(model, seeds, (6, 4), config)
    sched = sigmas(config)
    steps = config.sde_steps()
    new = []
    for k in steps:
        sigma = sched[k].expand(len(seeds)).clone()
        sigma_next = sched[k + 1].expand(len(seeds)).clone()
        v = model(traj.latents[k], sigma)  # with autograd this time
        out = sde_step(
            v,
            traj.latents[k],
            sigma,
            sigma_next,
            noise_level=config.noise_level,
            sigma_max=float(sched[1]),
            x_next_BNC=traj.latents[k + 1],
        )
        new.append(gaussian_log_prob(out.x_next_BNC, out.mean_BNC, out.std_B))
    new_logp = torch.stack(new)
    old_logp = traj.log_probs_SB(steps)
    assert torch.equal(new_logp.detach(), old_logp)
    adv = group_advantages(torch.tensor([0.1, 0.9, 0.4, 0.6]), ["a", "a", "b", "b"])
    loss, diag = grpo_loss(new_logp, old_logp, adv, config=GrpoConfig())
    assert torch.equal(torch.exp(new_logp - old_logp).detach(), torch.ones_like(old_logp))
    assert diag.ratio_mean == 1.0 and diag.ratio_max == 1.0
    assert loss.item() == pytest.approx(-float(adv.mean()), abs=1e-7)
    loss.backward()
    assert model.w.grad is not None and model.w.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs", [{"clip_range": 0.0}, {"adv_clip_max": -1.0}, {"std_eps": 0.0}, {"kl_beta": -0.1}]
)
def test_bad_config_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        GrpoConfig(**kwargs)  # type: ignore[arg-type]


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="one group label"):
        group_advantages(torch.zeros(3), ["a", "b"])
    with pytest.raises(ValueError, match="shapes differ"):
        grpo_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), config=GrpoConfig())
