"""The sampler's contract: pure noise, bit-exact resume, batch independence, correct maths."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import Tensor, nn

from spotlight.models.sampler import (
    SamplerConfig,
    TrajectoryState,
    advance,
    gaussian_log_prob,
    initial_noise,
    sample,
    sde_std,
    sde_step,
    sigmas,
    step_noise,
)

SHAPE = (16, 6)  # N tokens × C channels


class _TinyVelocity(nn.Module):
    """A small deterministic network standing in for the DiT (depends on x and σ)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(SHAPE[1] + 1, 32, generator=gen) * 0.3)
        self.w2 = nn.Parameter(torch.randn(32, SHAPE[1], generator=gen) * 0.3)

    def forward(self, x_BNC: Tensor, sigma_B: Tensor) -> Tensor:
        s = sigma_B.reshape(-1, 1, 1).expand(-1, x_BNC.shape[1], 1)
        return torch.tanh(torch.cat([x_BNC, s], dim=-1) @ self.w1) @ self.w2


def _assert_states_equal(a: TrajectoryState, b: TrajectoryState) -> None:
    assert a.seeds == b.seeds and a.step == b.step and a.timesteps == b.timesteps
    assert torch.equal(a.x_BNC, b.x_BNC)
    assert len(a.latents) == len(b.latents)
    for x, y in zip(a.latents, b.latents, strict=True):
        assert torch.equal(x, y)
    for x, y in zip(a.log_probs, b.log_probs, strict=True):
        assert torch.equal(x, y) or (torch.isnan(x).all() and torch.isnan(y).all())


def test_schedule_runs_one_to_zero() -> None:
    s = sigmas(SamplerConfig(num_steps=4))
    assert s.dtype == torch.float32
    assert torch.allclose(s, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    shifted = sigmas(SamplerConfig(num_steps=4, shift=3.0))
    assert shifted[0] == 1 and shifted[-1] == 0 and bool((shifted[1:-1] > s[1:-1]).all())


def test_noise_is_a_pure_function_of_seed_and_step() -> None:
    both = step_noise([11, 22], 3, SHAPE)
    assert torch.equal(both[0], step_noise([11], 3, SHAPE)[0])
    assert torch.equal(both[1], step_noise([22], 3, SHAPE)[0])
    assert not torch.equal(step_noise([11], 3, SHAPE), step_noise([11], 4, SHAPE))
    assert not torch.equal(initial_noise([11], SHAPE), step_noise([11], 0, SHAPE))
    # The global RNG plays no part.
    torch.manual_seed(123)
    again = step_noise([11, 22], 3, SHAPE)
    assert torch.equal(both, again)


def test_noise_is_identical_in_another_process() -> None:
    code = (
        "import torch; from spotlight.models.sampler import step_noise;"
        "x = step_noise([7, 8], 5, (4, 3)); print(x.flatten().tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    theirs = torch.tensor(eval(out.stdout), dtype=torch.float32)
    assert torch.equal(theirs, step_noise([7, 8], 5, (4, 3)).flatten())


@pytest.mark.parametrize("window", [None, (1, 3)])
def test_resume_from_any_step_is_bit_exact(window: tuple[int, int] | None) -> None:
    model = _TinyVelocity()
    config = SamplerConfig(num_steps=5, noise_level=0.8, sde_window=window)
    seeds = [3, 1, 4]
    full = sample(model, seeds, SHAPE, config)
    for stop in range(config.num_steps + 1):
        state = TrajectoryState.start(seeds, SHAPE)
        for _ in range(stop):
            state = advance(model, state, config)
        # Through the plain dict a snapshot travels as (tensors cloned as if sent).
        snap = state.to_dict()
        snap = {
            k: (
                [t.clone() for t in v]
                if isinstance(v, list) and v and isinstance(v[0], Tensor)
                else v
            )
            for k, v in snap.items()
        }
        resumed = TrajectoryState.from_dict(snap)
        while resumed.step < config.num_steps:
            resumed = advance(model, resumed, config)
        _assert_states_equal(resumed, full)


def test_advance_does_not_modify_its_input() -> None:
    model = _TinyVelocity()
    config = SamplerConfig(num_steps=3)
    state = TrajectoryState.start([1], SHAPE)
    before = state.x_BNC.clone()
    nxt = advance(model, state, config)
    assert state.step == 0 and len(state.latents) == 1 and torch.equal(state.x_BNC, before)
    assert nxt.step == 1 and len(nxt.latents) == 2


def test_batching_does_not_change_a_sample() -> None:
    model = _TinyVelocity()
    config = SamplerConfig(num_steps=4, noise_level=0.7)
    both = sample(model, [5, 9], SHAPE, config)
    alone = [sample(model, [s], SHAPE, config) for s in (5, 9)]
    # The noise is bitwise the same; the network's matmuls may block differently for batch 1
    # and 2, so values agree to float32 rounding (a few ulps per step, compounding over steps).
    assert torch.equal(both.latents[0][1], alone[1].latents[0][0])
    for i, single in enumerate(alone):
        assert torch.allclose(both.x_BNC[i], single.x_BNC[0], atol=1e-5, rtol=1e-5)
        for k in range(config.num_steps):
            assert torch.allclose(both.log_probs[k][i], single.log_probs[k][0], atol=1e-5)


def test_ode_matches_the_closed_form_of_a_point_mass() -> None:
    # Data = a single point x0: the exact velocity is v(x, σ) = (x − x0)/σ and the flow is
    # x_σ = x0 + σ·(noise − x0). Euler is exact on this linear field, so every latent matches.
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(SHAPE, generator=gen)
    config = SamplerConfig(num_steps=6, shift=2.0)

    def velocity(x_BNC: Tensor, sigma_B: Tensor) -> Tensor:
        return (x_BNC - x0) / sigma_B.reshape(-1, 1, 1)

    seeds = [0, 1]
    traj = sample(velocity, seeds, SHAPE, config, mode="ode")
    noise = initial_noise(seeds, SHAPE)
    for k, sigma in enumerate(sigmas(config).tolist()):
        expected = x0 + sigma * (noise - x0)
        assert torch.allclose(traj.latents[k], expected, atol=1e-5), k
    assert torch.allclose(traj.x_BNC, x0.expand_as(traj.x_BNC), atol=1e-5)
    assert all(math.isnan(v) for lp in traj.log_probs for v in lp.tolist())


def test_log_prob_matches_torch_normal() -> None:
    gen = torch.Generator().manual_seed(2)
    x, v = torch.randn(3, *SHAPE, generator=gen), torch.randn(3, *SHAPE, generator=gen)
    sigma, sigma_next = torch.full((3,), 0.6), torch.full((3,), 0.45)
    out = sde_step(
        v,
        x,
        sigma,
        sigma_next,
        noise_level=0.7,
        sigma_max=0.9,
        noise_BNC=torch.randn(3, *SHAPE, generator=gen),
    )
    ours = gaussian_log_prob(out.x_next_BNC, out.mean_BNC, out.std_B)
    ref = torch.distributions.Normal(out.mean_BNC, out.std_B.reshape(-1, 1, 1)).log_prob(
        out.x_next_BNC
    )
    assert ours.dtype == torch.float32
    assert torch.allclose(ours, ref.mean(dim=(1, 2)), atol=1e-5)
    # std = a·sqrt(σ/(1−σ))·sqrt(−dt)
    expected_std = 0.7 * math.sqrt(0.6 / 0.4) * math.sqrt(0.15)
    assert torch.allclose(out.std_B, torch.full((3,), expected_std), atol=1e-6)


def test_sde_step_equations_and_gradients() -> None:
    x = torch.randn(2, *SHAPE)
    v = torch.randn(2, *SHAPE, requires_grad=True)
    sigma, sigma_next = torch.tensor([1.0, 0.5]), torch.tensor([0.8, 0.3])
    noise = torch.randn(2, *SHAPE)
    out = sde_step(v, x, sigma, sigma_next, noise_level=0.7, sigma_max=0.8, noise_BNC=noise)
    std_t = sde_std(sigma, noise_level=0.7, sigma_max=0.8)
    # σ = 1 uses σ_max in the denominator instead of dividing by zero.
    assert torch.allclose(std_t[0], torch.tensor(0.7 * math.sqrt(1 / 0.2)))
    s, dt, st = (
        sigma.reshape(-1, 1, 1),
        (sigma_next - sigma).reshape(-1, 1, 1),
        std_t.reshape(-1, 1, 1),
    )
    mean = x * (1 + st**2 / (2 * s) * dt) + v * (1 + st**2 * (1 - s) / (2 * s)) * dt
    assert torch.allclose(out.mean_BNC, mean)
    assert torch.allclose(out.x_next_BNC, mean + st * torch.sqrt(-dt) * noise)
    assert not out.x_next_BNC.requires_grad and out.mean_BNC.requires_grad
    gaussian_log_prob(out.x_next_BNC, out.mean_BNC, out.std_B).sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all()


def test_sde_window_makes_other_steps_deterministic() -> None:
    model = _TinyVelocity()
    config = SamplerConfig(num_steps=4, sde_window=(1, 2))
    assert config.sde_steps() == [1]
    traj = sample(model, [0], SHAPE, config)
    ode = sample(model, [0], SHAPE, config, mode="ode")
    assert torch.equal(traj.latents[1], ode.latents[1])  # step 0 is Euler in both
    assert not torch.equal(traj.latents[2], ode.latents[2])  # step 1 injected noise
    assert torch.isnan(traj.log_probs[0]).all() and torch.isfinite(traj.log_probs[1]).all()
    assert SamplerConfig(noise_level=0.0).sde_steps() == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_steps": 0},
        {"noise_level": -1.0},
        {"shift": 0.0},
        {"num_steps": 4, "sde_window": (2, 5)},
        {"sde_window": (3, 3)},
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SamplerConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_mode_and_snapshot_are_refused() -> None:
    with pytest.raises(ValueError, match="valid modes"):
        sample(_TinyVelocity(), [0], SHAPE, SamplerConfig(num_steps=1), mode="euler")  # type: ignore[arg-type]
    snap = TrajectoryState.start([0], SHAPE).to_dict()
    snap["step"] = 2
    with pytest.raises(ValueError, match="inconsistent"):
        TrajectoryState.from_dict(snap)
