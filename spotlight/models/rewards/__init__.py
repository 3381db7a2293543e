"""Rewards: uint8 B×H×W×3 images + one prompt each -> float32 [B] scores in [0, 1].

Every reward is a plain object, cheap to construct, with no global state, so each reward worker
process builds its own (``build_reward(name, **config)``) and scores whole batches.

    geneval  programmatic GenEval-style reward on the procedural scenes (default; geneval.py)
    ocr      OCR of quoted prompt text with RapidOCR on CPU (optional package; ocr.py)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from spotlight.models.rewards.geneval import (
    Detection,
    GenEvalConfig,
    GenEvalReward,
    RewardBreakdown,
)
from spotlight.models.rewards.ocr import OcrConfig, OcrReward, ocr_available, target_text

__all__ = [
    "REWARD_NAMES",
    "Detection",
    "GenEvalConfig",
    "GenEvalReward",
    "OcrConfig",
    "OcrReward",
    "Reward",
    "RewardBreakdown",
    "build_reward",
    "ocr_available",
    "target_text",
]


@runtime_checkable
class Reward(Protocol):
    name: str

    def __call__(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        """uint8 B×H×W×3 images and B prompts -> float32 [B] in [0, 1]."""
        ...


def _geneval(**kwargs: Any) -> Reward:
    return GenEvalReward(GenEvalConfig(**kwargs))


def _ocr(**kwargs: Any) -> Reward:
    return OcrReward(OcrConfig(**kwargs))


_BUILDERS: dict[str, tuple[Callable[..., Reward], type[Any]]] = {
    "geneval": (_geneval, GenEvalConfig),
    "ocr": (_ocr, OcrConfig),
}
REWARD_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_reward(name: str, **kwargs: Any) -> Reward:
    """The reward called ``name``, configured by ``kwargs`` (fields of its config dataclass)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown reward {name!r}; valid rewards: {', '.join(REWARD_NAMES)}")
    builder, config_cls = _BUILDERS[name]
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ValueError(
            f"reward {name!r} has no setting(s) {unknown}; valid settings: {', '.join(sorted(valid))}"
        )
    return builder(**kwargs)
