"""The DiffusionNFT objective: its gradient at the rollout policy is advantage-weighted flow
matching, its points are pure functions of the sample, and one update moves the velocity
towards good samples' clean images and away from bad ones'."""

from __future__ import annotations

import pytest
import torch

from spotlight.models.dit import DiTPolicy, build_policy
from spotlight.models.flow_grpo import FlowGrpoConfig, flow_grpo_iteration
from spotlight.models.grpo import group_advantages
from spotlight.models.nft import NftConfig, forward_points, nft_loss, reward_probability
from spotlight.models.sampler import SamplerConfig
from tests.micro import MICRO, micro_algo, micro_pairs, redness


def _config(**kw: object) -> FlowGrpoConfig:
    return micro_algo(**{"objective": "nft", **kw})


def test_points_depend_on_the_sample_not_on_the_batch() -> None:
    config = NftConfig(t_min=0.2, t_max=0.9)
    x0 = torch.randn(3, 4, 6)
    xt, t = forward_points(x0, [7, 8, 9], "k", config)
    xt1, t1 = forward_points(x0[1:2], [8], "k", config)
    assert torch.equal(xt[1:2], xt1) and torch.equal(t[1:2], t1)
    assert bool(((t >= 0.2) & (t <= 0.9)).all())
    _, t_other = forward_points(x0, [7, 8, 9], "other", config)
    assert not torch.equal(t, t_other)
    # x_t lies on the straight line from x0 (t = 0) to the noise (t = 1).
    eps = (xt - (1 - t.view(-1, 1, 1)) * x0) / t.view(-1, 1, 1)
    assert float(eps.std()) == pytest.approx(1.0, abs=0.35)


def test_gradient_at_the_old_policy_is_advantage_weighted_flow_matching() -> None:
    torch.manual_seed(0)
    b, n, c = 4, 5, 3
    x0, eps = torch.randn(b, n, c), torch.randn(b, n, c)
    t = torch.tensor([0.3, 0.5, 0.7, 0.9])
    xt = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * eps
    v = torch.randn(b, n, c, requires_grad=True)
    adv = torch.tensor([2.0, -1.0, 0.0, 7.0])  # 7 is clipped to A_max = 5
    config = NftConfig(beta=0.7, adv_clip_max=5.0)
    out = nft_loss(v, v.detach(), xt, t, x0, adv, config)
    (grad,) = torch.autograd.grad(out.loss, v)
    # d/dv at v = v_old: 2·t²·(2r − 1)·(v − u) / (M·w·B), u = ε − x0, w = t·mean|u − v|.
    u = eps - x0
    r = reward_probability(adv, 5.0)
    w = (t.view(-1, 1, 1) * (u - v.detach())).abs().mean(dim=(1, 2), keepdim=True)
    expected = (
        2 * t.view(-1, 1, 1) ** 2 * (2 * r - 1).view(-1, 1, 1) * (v.detach() - u) / (w * n * c * b)
    )
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    # Advantage 0: no push either way (the two branches cancel up to rounding).
    assert float(grad[2].abs().max()) < 1e-6 * float(grad.abs().max())
    assert r[3] == 1.0 and out.old_deviation == 0.0


def test_one_update_pulls_good_samples_closer_than_bad_ones() -> None:
    config = _config(micro_batch=12, nft=NftConfig(timesteps_per_sample=4))
    initial = build_policy(MICRO, seed=2)
    policy = build_policy(MICRO, seed=2)
    opt = torch.optim.SGD(policy.parameters(), lr=0.05)  # plain gradient step: first order
    stats, batch = flow_grpo_iteration(policy, opt, *micro_pairs(config), redness, config)
    state, prompts = batch.chunks[0], batch.chunk_prompts[0]

    def fm_error(model: DiTPolicy) -> torch.Tensor:
        """Per-sample flow-matching error at the points iteration 0 trained on."""
        errs = []
        with torch.no_grad():
            text = model.encode_prompts(prompts)
            for j in range(4):
                xt, t = forward_points(state.x_BNC, state.seeds, f"iteration:0:{j}", config.nft)
                eps = (xt - (1 - t.view(-1, 1, 1)) * state.x_BNC) / t.view(-1, 1, 1)
                errs.append(((model(xt, t, text) - (eps - state.x_BNC)) ** 2).mean(dim=(1, 2)))
        return torch.stack(errs).mean(0)

    delta = fm_error(policy) - fm_error(initial)
    adv = group_advantages(batch.rewards_B, batch.prompts)
    # Positive advantages lower a sample's flow-matching error, negative ones raise it.
    assert float((adv * delta).sum()) < 0
    assert stats.first_ratio_dev == 0.0 and stats.optimizer_steps == 1


def test_nft_iteration_is_deterministic_and_needs_no_sde_step() -> None:
    config = _config(
        sampler=SamplerConfig(num_steps=3, noise_level=0.0), inner_epochs=2, chunks_per_update=2
    )
    results = []
    for _ in range(2):
        policy = build_policy(MICRO, seed=4)
        opt = torch.optim.AdamW(policy.parameters(), lr=config.lr)
        stats, _ = flow_grpo_iteration(policy, opt, *micro_pairs(config), redness, config)
        results.append((stats, torch.cat([p.detach().flatten() for p in policy.parameters()])))
    assert torch.equal(results[0][1], results[1][1])
    assert results[0][0].optimizer_steps == 4  # 3 chunks in updates of 2 → 2 per epoch × 2
    assert results[0][0].loss.approx_kl > 0  # the later updates saw a moved policy
    with pytest.raises(ValueError, match="objective='nft'"):
        FlowGrpoConfig(sampler=SamplerConfig(num_steps=3, noise_level=0.0))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"beta": 0.0}, "beta"),
        ({"adv_clip_max": -1.0}, "adv_clip_max"),
        ({"timesteps_per_sample": 0}, "timesteps_per_sample"),
        ({"t_min": 0.5, "t_max": 0.5}, "t_min"),
    ],
)
def test_bad_nft_settings_are_refused(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NftConfig(**kw)  # type: ignore[arg-type]


def test_unknown_objective_is_refused() -> None:
    with pytest.raises(ValueError, match="flow_grpo, nft"):
        FlowGrpoConfig(objective="ppo")  # type: ignore[arg-type]
