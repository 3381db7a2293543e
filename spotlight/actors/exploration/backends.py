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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from torch import Tensor

from spotlight.models.dit import DiTPolicy
from spotlight.models.lora import load_tunable_state

if TYPE_CHECKING:
    from spotlight.actors.exploration.explorer import ExploreSettings

__all__ = ["RewardFn", "SamplingBackend", "SamplingFailed", "ThreadBackend"]

RewardFn = Callable[[np.ndarray, list[str]], np.ndarray]


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
        from spotlight.actors.exploration.explorer import explore_rewards

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
