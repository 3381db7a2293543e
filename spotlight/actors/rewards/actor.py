"""RewardActor: one reward (``build_reward(name)``) behind an ``ask`` endpoint.

Why an actor: DESIGN.md wants rewards in their own actors so that a slow reward (OCR, a
learned scorer) runs beside sampling instead of inside it, and so that a reward process can
die without taking the trainer with it. The actor is a thin shell: the scoring itself is the
pure ``spotlight.models.rewards`` object, run in a worker thread (``asyncio.to_thread``) so
the runtime keeps answering heartbeats and other actors while it works.

Map::

    caller ──score.ask(images_BHWC uint8, prompts)──► mailbox (one batch at a time)
                                                       │ check shape/dtype/prompts (loop)
                                                       ▼
                                            asyncio.to_thread(reward, images, prompts)
                                                       │
    caller ◄──────────── float32 [B] ──────────────────┘

Arrays arrive as zero-copy frames (``spotlight.runtime.codec``): the decoded ``images`` share
the received buffer; nothing is copied before the reward reads it.

Errors (the runtime's contract, ``spotlight/runtime/actor.py``): bad input raises
:class:`RewardInputError` in the handler, which reaches the caller as a ``RemoteError`` whose
``type_name`` is ``"RewardInputError"``; the actor keeps serving. A reward that returns the
wrong shape is a bug of the reward and raises ``RuntimeError`` (also a ``RemoteError``).
Every failed call is counted in :meth:`RewardActor.statistics`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from spotlight.models.rewards import Reward, build_reward
from spotlight.models.rewards.batch import check_batch
from spotlight.runtime import Actor, endpoint
from spotlight.runtime.codec import register_wire_type

__all__ = ["INPUT_ERROR", "RewardActor", "RewardActorStats", "RewardInputError"]


class RewardInputError(ValueError):
    """The batch is not uint8 B×H×W×3 with one prompt (in the caption grammar) per image."""


INPUT_ERROR = f"{RewardInputError.__module__}.{RewardInputError.__qualname__}"
"""``RemoteError.type_name`` of a refused batch: the caller's input, not the worker, is bad."""


@register_wire_type(name="spotlight.RewardActorStats")
@dataclass(frozen=True)
class RewardActorStats:
    """What one RewardActor has done since it started."""

    reward: str
    calls: int
    """Batches scored successfully."""
    images: int
    """Images in those batches."""
    seconds: float
    """Wall seconds inside the reward (thread time of successful calls)."""
    errors: int
    """Calls that raised (bad input or a reward failure)."""
    bad_inputs: int
    """The part of ``errors`` that was bad input (RewardInputError)."""


class RewardActor(Actor):
    """Scores batches with one reward; see the module map."""

    def __init__(self, reward: str = "geneval", settings: dict[str, Any] | None = None) -> None:
        self.reward_name = reward
        self._reward: Reward = build_reward(reward, **(settings or {}))
        self._calls = 0
        self._images = 0
        self._seconds = 0.0
        self._errors = 0
        self._bad_inputs = 0

    def _run(self, images: np.ndarray, prompts: list[str]) -> tuple[np.ndarray, float]:
        """The reward call (in a worker thread) and its seconds; a ValueError is bad input."""
        t0 = time.perf_counter()
        try:
            out = np.asarray(self._reward(images, prompts))
        except ValueError as exc:  # check_batch / parse_prompt: the caller's input
            raise RewardInputError(str(exc)) from None
        if out.shape != (len(prompts),):
            raise RuntimeError(
                f"reward {self.reward_name!r} returned shape {out.shape} for {len(prompts)} "
                "images; a reward must return one score per image"
            )
        return out.astype(np.float32, copy=False), time.perf_counter() - t0

    @endpoint
    async def score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        """float32 [B] scores of uint8 B×H×W×3 ``images``, one caption each, in order."""
        try:
            if not isinstance(prompts, list | tuple) or not all(
                isinstance(p, str) for p in prompts
            ):
                raise RewardInputError(
                    f"prompts must be a list of strings, got {type(prompts).__name__}"
                )
            try:
                check_batch(images, prompts)
            except ValueError as exc:
                raise RewardInputError(str(exc)) from None
            out, seconds = await asyncio.to_thread(self._run, images, list(prompts))
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self._errors += 1
                self._bad_inputs += isinstance(exc, RewardInputError)
            raise
        self._calls += 1
        self._images += len(out)
        self._seconds += seconds
        return out

    @endpoint
    async def statistics(self) -> RewardActorStats:
        return RewardActorStats(
            reward=self.reward_name,
            calls=self._calls,
            images=self._images,
            seconds=self._seconds,
            errors=self._errors,
            bad_inputs=self._bad_inputs,
        )
