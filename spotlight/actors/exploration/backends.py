"""How an explorer runs its sampling pass: the seam between the explorer and where it samples.

The :class:`~spotlight.actors.exploration.explorer.ExplorerActor` owns the contract with the scheduler and
the trainer (pull, leases, weight versions, drain, abandoned-steps accounting); a
:class:`SamplingBackend` owns only "turn (prompts, seeds, num_steps) into rewards with the
current weights". Two implementations:

- :class:`ThreadBackend` (SP degree 1, the default): the explorer's own policy, one batched
  pass in a worker thread (``asyncio.to_thread``), exactly the path explorers always had.
- :class:`~spotlight.actors.exploration.sp_backend.SPBackend` (SP degree > 1): the denoising steps run in
  the node's elastic SP group (member processes, Ulysses shards); the explorer's process only
  decodes and rewards the final latents.

Weights: the explorer calls :meth:`SamplingBackend.load` between batches, never while
:meth:`SamplingBackend.rewards` runs, so one batch never mixes weight versions.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from spotlight.actors.scheduling.work import PULL_BATCH
from spotlight.models.dit import DiTPolicy
from spotlight.models.flow_grpo import decode, generate
from spotlight.models.lora import load_tunable_state
from spotlight.models.sampler import SamplerConfig
from spotlight.runtime.codec import register_wire_type

__all__ = [
    "ExploreSettings",
    "RewardFn",
    "SamplingBackend",
    "SamplingFailed",
    "ThreadBackend",
    "explore_rewards",
    "sampler_for_steps",
]

RewardFn = Callable[[np.ndarray, list[str]], np.ndarray]

_MODES = ("sde", "ode")


_DEFAULT_NOISE_LEVEL = 0.7


def sampler_for_steps(base: SamplerConfig, num_steps: int) -> SamplerConfig:
    """``base`` with ``num_steps`` steps; the SDE window is scaled to the new step count.

    With ``num_steps == base.num_steps`` this is ``base`` itself, so an explored seed has
    exactly the trainer's noise. A cheaper exploration (fewer steps) keeps the initial noise
    (a function of the seed alone) and puts the window over the same fraction of the
    schedule, at least one step wide.
    """
    if num_steps == base.num_steps:
        return base
    window = base.sde_window
    if window is not None:
        start = min(num_steps - 1, (window[0] * num_steps) // base.num_steps)
        stop = -((-window[1] * num_steps) // base.num_steps)  # ceil
        window = (start, max(start + 1, min(num_steps, stop)))
    return replace(base, num_steps=num_steps, sde_window=window)


@register_wire_type(name="spotlight.ExploreSettings")
@dataclass(frozen=True, kw_only=True)
class ExploreSettings:
    """How an explorer samples and how it talks to the scheduler."""

    mode: Literal["sde", "ode"] = "sde"
    """Sampler for exploration; ``ode`` is deterministic given the seed (see the bench)."""
    noise_level: float | None = None
    """SDE noise level; None: ``trainer_sampler``'s, else 0.7. Must match the trainer's."""
    trainer_sampler: SamplerConfig | None = None
    """The trainer's rollout sampler (noise level, SDE window, shift): explored seeds then
    mean the same noise as in the trainer's rollouts. Requests still set ``num_steps``."""
    drain_margin_s: float = 0.5
    """On a notice, time kept free before the deadline for the lease release and exit."""
    micro_batch: int = 32
    """Samples per forward pass."""
    pull_batch: int = PULL_BATCH
    """Requests pulled (and sampled together) at once."""
    idle_pull_s: float = 0.2
    """An idle explorer asks again this often (or as soon as new weights arrive)."""
    heartbeat_s: float = 2.0
    """Held leases are renewed this often (must be < the scheduler's lease_ttl_s / 2)."""
    call_timeout_s: float = 10.0
    """Deadline of every ask to the scheduler."""
    reward: str = "geneval"
    """Reward name for ``build_reward``."""

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"mode={self.mode!r}; valid: {_MODES}")
        if self.noise_level is not None and not (
            math.isfinite(self.noise_level) and self.noise_level >= 0
        ):
            raise ValueError(f"noise_level={self.noise_level} must be finite and >= 0")
        base = self.trainer_sampler
        if base is not None and not isinstance(base, SamplerConfig):
            raise ValueError(f"trainer_sampler must be a SamplerConfig, got {base!r}")
        if base is not None and self.noise_level not in (None, base.noise_level):
            raise ValueError(
                f"noise_level={self.noise_level} contradicts trainer_sampler.noise_level="
                f"{base.noise_level}; leave noise_level unset to use the trainer's"
            )
        if not (math.isfinite(self.drain_margin_s) and self.drain_margin_s >= 0):
            raise ValueError(f"drain_margin_s={self.drain_margin_s} must be >= 0 seconds")
        for name in ("micro_batch", "pull_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("idle_pull_s", "heartbeat_s", "call_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value} must be a finite number of seconds > 0")

    def sampler(self, num_steps: int) -> SamplerConfig:
        """The sampler for a request of ``num_steps`` steps (see :func:`sampler_for_steps`)."""
        if self.trainer_sampler is not None:
            return sampler_for_steps(self.trainer_sampler, num_steps)
        noise = _DEFAULT_NOISE_LEVEL if self.noise_level is None else self.noise_level
        return SamplerConfig(num_steps=num_steps, noise_level=noise)


def explore_rewards(
    policy: DiTPolicy,
    prompts: list[str],
    seeds: list[int],
    reward_fn: Callable[[np.ndarray, list[str]], np.ndarray],
    *,
    num_steps: int,
    settings: ExploreSettings,
) -> np.ndarray:
    """Rewards [B] of (prompt_i, seed_i) sampled with ``num_steps`` in ``settings.mode``.

    The same function serves the explorer actor and the bench, so what is measured is what
    runs. A seed fixes the same initial noise (and SDE noise per step) as in the trainer's
    rollout, which is what makes a seed's explored reward predictive.
    """
    with torch.no_grad():
        states, _ = generate(
            policy,
            prompts,
            seeds,
            settings.sampler(num_steps),
            micro_batch=settings.micro_batch,
            mode=settings.mode,
        )
        images = decode(policy, states)
    rewards = np.asarray(reward_fn(images, list(prompts)), dtype=np.float64)
    if rewards.shape != (len(prompts),):
        raise ValueError(f"reward returned shape {rewards.shape}, expected ({len(prompts)},)")
    return rewards


class SamplingFailed(RuntimeError):
    """A batch could not be sampled (e.g. the SP group lost every member): the explorer hands
    the batch's leases back and goes on; the backend may recover for the next one."""


class SamplingBackend(Protocol):
    """Where the explorer's sampling pass runs (see the module docstring)."""

    async def load(self, version: int, state: Mapping[str, Tensor]) -> None:
        """Apply weights ``version`` (called between batches only)."""
        ...

    async def rewards(
        self,
        prompts: list[str],
        seeds: list[int],
        *,
        num_steps: int,
        settings: ExploreSettings,
    ) -> np.ndarray:
        """Rewards [B] of (prompt_i, seed_i); raises :class:`SamplingFailed` on a lost batch.
        Cancelling it abandons the batch (drain)."""
        ...

    async def stop(self) -> None:
        """Stop sampling for good (drain, shutdown); bounded, idempotent."""
        ...

    async def statistics(self) -> dict[str, Any] | None:
        """Backend-specific state for ``ExplorerStats.sampling`` (None: nothing to say)."""
        ...


class ThreadBackend:
    """SP degree 1: the explorer's policy sampled in a worker thread."""

    def __init__(self, policy: DiTPolicy, reward_fn: RewardFn) -> None:
        self.policy = policy
        self.reward_fn = reward_fn

    async def load(self, version: int, state: Mapping[str, Tensor]) -> None:
        await asyncio.to_thread(load_tunable_state, self.policy, state)

    async def rewards(
        self,
        prompts: list[str],
        seeds: list[int],
        *,
        num_steps: int,
        settings: ExploreSettings,
    ) -> np.ndarray:
        return await asyncio.to_thread(
            explore_rewards,
            self.policy,
            prompts,
            seeds,
            self.reward_fn,
            num_steps=num_steps,
            settings=settings,
        )

    async def stop(self) -> None:
        return None

    async def statistics(self) -> dict[str, Any] | None:
        return {"backend": "thread", "degree": 1}


BackendFactory = Callable[[DiTPolicy, RewardFn], SamplingBackend]
"""Builds an explorer's backend from the policy and reward it built in ``on_start``."""
