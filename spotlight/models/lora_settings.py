"""The shape of LoRA adapters (:class:`LoraSettings`): plain data, no torch, no diffusers.

Its own module so that :mod:`spotlight.models.dit` (a policy records the adapters it carries)
and :mod:`spotlight.models.lora` (which attaches them to a policy) do not import each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_TARGETS", "LoraSettings"]

DEFAULT_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)
"""The attention projections of both streams (image and text) of every dual-stream block,
the set Flow-GRPO's public Qwen-Image/SD3.5 LoRA recipes adapt."""


@dataclass(frozen=True, kw_only=True)
class LoraSettings:
    """Shape of the adapters; everything a receiver needs to build the same tensors."""

    rank: int
    """Rank r of each adapter (A: r × in, B: out × r)."""
    alpha: int
    """Scale numerator: the adapter's output is multiplied by alpha / rank."""
    targets: tuple[str, ...] = DEFAULT_TARGETS
    """Module name suffixes of the transformer's Linear layers that get an adapter."""
    init_seed: int = 0
    """Seed of the A matrices' random init (B starts at zero, so the adapted model starts at
    the base); every rank and every resume draws the same adapters from it."""

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"LoRA rank must be an int >= 1, got {self.rank!r}")
        if not isinstance(self.alpha, int) or isinstance(self.alpha, bool) or self.alpha < 1:
            raise ValueError(f"LoRA alpha must be an int >= 1, got {self.alpha!r}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"LoRA targets must be non-empty module names, got {self.targets!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "targets": list(self.targets),
            "init_seed": self.init_seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoraSettings:
        unknown = set(data) - {"rank", "alpha", "targets", "init_seed"}
        if unknown:
            raise ValueError(f"unknown LoRA setting(s) {sorted(unknown)}")
        return cls(
            rank=int(data["rank"]),
            alpha=int(data["alpha"]),
            targets=tuple(data.get("targets", DEFAULT_TARGETS)),
            init_seed=int(data.get("init_seed", 0)),
        )
