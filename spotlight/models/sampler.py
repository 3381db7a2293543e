"""Flow-matching sampler: the Flow-GRPO SDE step with per-step log-probabilities, and the ODE.

Pure and stateless: no hidden step counter, no global RNG. Every piece of randomness of a
trajectory is a function of ``(seed, step)`` only, so a trajectory snapshotted at any step
(``TrajectoryState.to_dict``) resumes bit-for-bit on another process, and a sample's noise
does not depend on which other samples shared its batch.

Conventions (those of Flow-GRPO's public reference, so results compare):
    σ runs 1 → 0 over ``num_steps`` steps; x_σ = (1 − σ)·x0 + σ·noise.
    The model predicts the velocity v = noise − x0 (so dx/dσ = v).
    dt = σ_next − σ < 0.

Shape legend: B batch (one trajectory per seed), N tokens, C channels per token.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""``velocity_fn(x_BNC, sigma_B) -> v_BNC``; the caller closes over the text conditioning."""

Mode = Literal["sde", "ode"]
_MODES: tuple[str, ...] = ("sde", "ode")
_INITIAL_STEP = -1  # the (seed, step) key of the initial noise x_1


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """How a trajectory is denoised; validated on construction."""

    num_steps: int = 10
    """Denoising steps from σ = 1 to σ = 0."""
    noise_level: float = 0.7
    """Flow-GRPO's ``a``: the SDE diffusion is std_t = a·sqrt(σ / (1 − σ)). 0 makes every step
    a plain Euler (ODE) step, which has no log-probability."""
    sde_window: tuple[int, int] | None = None
    """Steps ``[start, stop)`` that inject noise (Flow-GRPO-Fast style); ``None`` = every step.
    Outside it steps are deterministic Euler steps with no log-probability, so only the
    window's steps are trained."""
    shift: float = 1.0
    """Time shift of the schedule, σ' = s·σ / (1 + (s − 1)·σ) (SD3 style); > 1 spends more
    steps at high noise, where layout, count and colour are decided."""

    def __post_init__(self) -> None:
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {self.num_steps!r}")
        if not math.isfinite(self.noise_level) or self.noise_level < 0:
            raise ValueError(f"noise_level must be finite and >= 0, got {self.noise_level!r}")
        if not math.isfinite(self.shift) or self.shift <= 0:
            raise ValueError(f"shift must be finite and > 0, got {self.shift!r}")
        if self.sde_window is not None:
            start, stop = self.sde_window
            if not (0 <= start < stop <= self.num_steps):
                raise ValueError(
                    f"sde_window {self.sde_window!r} must satisfy 0 <= start < stop <= "
                    f"num_steps ({self.num_steps})"
                )

    def is_sde_step(self, step: int) -> bool:
        """Whether ``step`` injects noise (and so has a log-probability) in SDE mode."""
        if self.noise_level == 0:
            return False
        if self.sde_window is None:
            return 0 <= step < self.num_steps
        return self.sde_window[0] <= step < self.sde_window[1]

    def sde_steps(self) -> list[int]:
        """The steps that carry a log-probability in SDE mode (the ones GRPO trains on)."""
        return [k for k in range(self.num_steps) if self.is_sde_step(k)]


def sigmas(config: SamplerConfig) -> Tensor:
    """The schedule σ_0 = 1 > σ_1 > … > σ_T = 0 (``num_steps + 1`` float32 entries)."""
    s = torch.linspace(1.0, 0.0, config.num_steps + 1, dtype=torch.float64)
    if config.shift != 1.0:
        s = config.shift * s / (1 + (config.shift - 1) * s)
    return s.to(torch.float32)


def keyed_generator(seed: int, key: str) -> torch.Generator:
    """A CPU generator that is a pure function of ``(seed, key)``.

    A cryptographic hash, not Python's hash(): stable across processes and versions, and
    neighbouring keys give unrelated streams.
    """
    digest = hashlib.blake2b(f"spotlight:{int(seed)}:{key}".encode(), digest_size=8)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int.from_bytes(digest.digest(), "little") & ((1 << 63) - 1))
    return gen


def keyed_noise(seeds: Sequence[int], key: str, shape: Sequence[int]) -> Tensor:
    """Standard normal ``[len(seeds), *shape]`` float32, one generator per sample: the bits
    depend on (seed, key) only, not on the batch, the device or the process."""
    return torch.stack(
        [
            torch.randn(tuple(shape), generator=keyed_generator(s, key), dtype=torch.float32)
            for s in seeds
        ]
    )


def _noise(seeds: Sequence[int], step: int, shape: Sequence[int]) -> Tensor:
    return keyed_noise(seeds, str(int(step)), shape)


def initial_noise(seeds: Sequence[int], shape: Sequence[int]) -> Tensor:
    """x at σ = 1 for each seed: ``[len(seeds), *shape]`` float32, a pure function of the seed."""
    return _noise(seeds, _INITIAL_STEP, shape)


def step_noise(seeds: Sequence[int], step: int, shape: Sequence[int]) -> Tensor:
    """The SDE noise ε of ``step`` for each seed: a pure function of ``(seed, step)``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return _noise(seeds, step, shape)


def _per_sample(value: Tensor, ndim: int) -> Tensor:
    return value.reshape(-1, *([1] * (ndim - 1)))


def sde_std(sigma_B: Tensor, *, noise_level: float, sigma_max: float) -> Tensor:
    """Flow-GRPO's diffusion coefficient std_t = a·sqrt(σ / (1 − σ̃)), σ̃ = σ_max where σ = 1.

    At σ = 1 the formula divides by zero; the reference substitutes σ_max, the schedule's
    second entry (the first σ below 1), and so do we.
    """
    sigma_B = sigma_B.to(torch.float32)
    safe = torch.where(sigma_B == 1, torch.full_like(sigma_B, sigma_max), sigma_B)
    return noise_level * torch.sqrt(sigma_B / (1 - safe))


@dataclass(frozen=True)
class SdeStep:
    """One SDE step: the sample and the Gaussian it was drawn from (all float32)."""

    x_next_BNC: Tensor
    """The sample, detached: gradients never flow through the noise."""
    mean_BNC: Tensor
    """μ_θ, differentiable with respect to the velocity."""
    std_B: Tensor
    """The step's standard deviation std_t·sqrt(−dt), per sample."""


def sde_step(
    v_BNC: Tensor,
    x_BNC: Tensor,
    sigma_B: Tensor,
    sigma_next_B: Tensor,
    *,
    noise_level: float,
    sigma_max: float,
    noise_BNC: Tensor | None = None,
    x_next_BNC: Tensor | None = None,
) -> SdeStep:
    """The Flow-GRPO SDE step (its ``sde_step_with_logprob``), in float32.

    With dt = σ_next − σ < 0 and std_t = :func:`sde_std`::

        μ      = x·(1 + std_t²/(2σ)·dt) + v·(1 + std_t²·(1 − σ)/(2σ))·dt
        x_next = μ + std_t·sqrt(−dt)·ε,           ε ~ N(0, I)

    i.e. Euler–Maruyama on the reverse-time SDE whose marginals equal the flow ODE's (the
    score is recovered from v as −(x + (1 − σ)·v)/σ). Give ``noise_BNC`` to draw a sample,
    or ``x_next_BNC`` to re-evaluate the Gaussian of a recorded one (training); exactly one.
    ``sigma_B``/``sigma_next_B`` are per sample, so one batch may mix steps.
    """
    if (noise_BNC is None) == (x_next_BNC is None):
        raise ValueError("give exactly one of noise_BNC (sample) or x_next_BNC (re-evaluate)")
    v = v_BNC.to(torch.float32)
    x = x_BNC.to(torch.float32)
    sigma = _per_sample(sigma_B.to(torch.float32), x.ndim)
    sigma_next = _per_sample(sigma_next_B.to(torch.float32), x.ndim)
    dt = sigma_next - sigma
    std_t = _per_sample(sde_std(sigma_B, noise_level=noise_level, sigma_max=sigma_max), x.ndim)
    mean = (
        x * (1 + std_t**2 / (2 * sigma) * dt) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    )
    std = std_t * torch.sqrt(-dt)
    if x_next_BNC is None:
        assert noise_BNC is not None
        x_next = mean + std * noise_BNC.to(torch.float32)
    else:
        x_next = x_next_BNC.to(torch.float32)
    return SdeStep(x_next_BNC=x_next.detach(), mean_BNC=mean, std_B=std.reshape(-1))


def gaussian_log_prob(x_next_BNC: Tensor, mean_BNC: Tensor, std_B: Tensor) -> Tensor:
    """log N(x_next; μ, std²) per sample, float32, **averaged** (mean over N and C).

    Averaged, not summed, as Flow-GRPO does: the ratio exp(Δ log p) then stays O(1) whatever
    the image size, which is why its clip ranges are as small as 1e-4. x_next is detached.
    """
    x_next = x_next_BNC.detach().to(torch.float32)
    mean = mean_BNC.to(torch.float32)
    std = _per_sample(std_B.to(torch.float32), mean.ndim)
    log_prob = (
        -((x_next - mean) ** 2) / (2 * std**2)
        - torch.log(std)
        - torch.log(torch.sqrt(torch.as_tensor(2 * math.pi)))
    )
    return log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


def ode_step(v_BNC: Tensor, x_BNC: Tensor, sigma_B: Tensor, sigma_next_B: Tensor) -> Tensor:
    """Euler step of dx/dσ = v: x_next = x + (σ_next − σ)·v, float32."""
    x = x_BNC.to(torch.float32)
    dt = _per_sample((sigma_next_B - sigma_B).to(torch.float32), x.ndim)
    return x + dt * v_BNC.to(torch.float32)


@dataclass
class TrajectoryState:
    """A trajectory after ``step`` steps: everything needed to resume it anywhere.

    ``latents[k]`` is x before step k (``latents[0]`` the initial noise, ``latents[step]``
    == ``x_BNC``), ``log_probs[k]`` the [B] log-prob of step k (NaN for a deterministic
    step), ``timesteps[k]`` the σ step k started from. Recording every latent is what lets
    GRPO re-evaluate each step's Gaussian with gradients later.
    """

    seeds: tuple[int, ...]
    step: int
    x_BNC: Tensor
    latents: list[Tensor] = field(default_factory=list)
    log_probs: list[Tensor] = field(default_factory=list)
    timesteps: list[float] = field(default_factory=list)

    @classmethod
    def start(cls, seeds: Sequence[int], shape: Sequence[int]) -> TrajectoryState:
        """Step 0: x = the seeds' initial noise, ``shape`` = (N, C) per sample."""
        x = initial_noise(seeds, shape)
        return cls(seeds=tuple(int(s) for s in seeds), step=0, x_BNC=x, latents=[x])

    def to_dict(self) -> dict[str, Any]:
        """Plain ints, lists and tensors (no pickle needed): snapshot, send, journal."""
        return {
            "seeds": list(self.seeds),
            "step": self.step,
            "x_BNC": self.x_BNC,
            "latents": list(self.latents),
            "log_probs": list(self.log_probs),
            "timesteps": list(self.timesteps),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrajectoryState:
        """Inverse of :meth:`to_dict`; checks the pieces agree with each other."""
        state = cls(
            seeds=tuple(int(s) for s in data["seeds"]),
            step=int(data["step"]),
            x_BNC=data["x_BNC"],
            latents=list(data["latents"]),
            log_probs=list(data["log_probs"]),
            timesteps=[float(t) for t in data["timesteps"]],
        )
        n = state.step
        if len(state.latents) != n + 1 or len(state.log_probs) != n or len(state.timesteps) != n:
            raise ValueError(
                f"inconsistent trajectory snapshot at step {n}: {len(state.latents)} latents "
                f"(want {n + 1}), {len(state.log_probs)} log-probs and {len(state.timesteps)} "
                f"timesteps (want {n})"
            )
        if state.x_BNC.shape[0] != len(state.seeds):
            raise ValueError(
                f"snapshot has {len(state.seeds)} seeds but a latent batch of {state.x_BNC.shape[0]}"
            )
        return state

    def log_probs_SB(self, steps: Sequence[int]) -> Tensor:
        """The recorded log-probs of ``steps`` stacked as [S, B]."""
        return torch.stack([self.log_probs[k] for k in steps])


def concat_states(states: Sequence[TrajectoryState]) -> TrajectoryState:
    """The states as one batch (in order); they must be at the same step.

    Why: rollouts sampled apart (one request per sample, on several workers) are trained in
    chunks; the trainer re-groups them without copying anything but the tensors.
    """
    if not states:
        raise ValueError("concat_states needs at least one state")
    step = states[0].step
    if any(s.step != step for s in states):
        raise ValueError(f"states are at different steps: {[s.step for s in states]}")
    first = states[0]
    if any(s.timesteps != first.timesteps for s in states):
        raise ValueError("states were sampled on different schedules (timesteps differ)")
    if len(states) == 1:
        return first
    return TrajectoryState(
        seeds=tuple(seed for s in states for seed in s.seeds),
        step=step,
        x_BNC=torch.cat([s.x_BNC for s in states]),
        latents=[torch.cat([s.latents[k] for s in states]) for k in range(step + 1)],
        log_probs=[torch.cat([s.log_probs[k] for s in states]) for k in range(step)],
        timesteps=list(first.timesteps),
    )


def split_state(state: TrajectoryState) -> list[TrajectoryState]:
    """One batch-1 state per sample of ``state`` (the inverse of :func:`concat_states`)."""
    return [
        TrajectoryState(
            seeds=(seed,),
            step=state.step,
            x_BNC=state.x_BNC[i : i + 1].clone(),
            latents=[x[i : i + 1].clone() for x in state.latents],
            log_probs=[lp[i : i + 1].clone() for lp in state.log_probs],
            timesteps=list(state.timesteps),
        )
        for i, seed in enumerate(state.seeds)
    ]


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"unknown sampler mode {mode!r}; valid modes: {', '.join(_MODES)}")


@torch.no_grad()
def advance(
    velocity_fn: VelocityFn, state: TrajectoryState, config: SamplerConfig, *, mode: Mode = "sde"
) -> TrajectoryState:
    """One denoising step; returns a new state (``state`` is not modified).

    In ``"sde"`` mode, steps inside the SDE window draw x_next by :func:`sde_step` with
    ε = ``step_noise(seeds, step)`` and record its log-prob; every other step (and every step
    in ``"ode"`` mode) is an Euler step with a NaN log-prob. Runs without autograd: rollouts
    never need gradients, GRPO re-evaluates the recorded steps itself.
    """
    _check_mode(mode)
    k = state.step
    if k >= config.num_steps:
        raise ValueError(f"trajectory already finished ({k} of {config.num_steps} steps)")
    sched = sigmas(config)
    b = state.x_BNC.shape[0]
    sigma_B = sched[k].expand(b).clone()
    sigma_next_B = sched[k + 1].expand(b).clone()
    v_BNC = velocity_fn(state.x_BNC, sigma_B)
    if mode == "sde" and config.is_sde_step(k):
        noise = step_noise(state.seeds, k, state.x_BNC.shape[1:])
        out = sde_step(
            v_BNC,
            state.x_BNC,
            sigma_B,
            sigma_next_B,
            noise_level=config.noise_level,
            sigma_max=float(sched[1]),
            noise_BNC=noise,
        )
        x_next = out.x_next_BNC
        log_prob = gaussian_log_prob(x_next, out.mean_BNC, out.std_B)
    else:
        x_next = ode_step(v_BNC, state.x_BNC, sigma_B, sigma_next_B)
        log_prob = torch.full((b,), float("nan"), dtype=torch.float32)
    return TrajectoryState(
        seeds=state.seeds,
        step=k + 1,
        x_BNC=x_next,
        latents=[*state.latents, x_next],
        log_probs=[*state.log_probs, log_prob],
        timesteps=[*state.timesteps, float(sched[k])],
    )


def sample(
    velocity_fn: VelocityFn,
    seeds: Sequence[int],
    shape: Sequence[int],
    config: SamplerConfig,
    *,
    mode: Mode = "sde",
) -> TrajectoryState:
    """A whole trajectory from σ = 1 to 0 for each seed; ``shape`` = (N, C) per sample."""
    _check_mode(mode)
    state = TrajectoryState.start(seeds, shape)
    while state.step < config.num_steps:
        state = advance(velocity_fn, state, config, mode=mode)
    return state
