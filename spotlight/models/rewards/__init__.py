"""Rewards: uint8 B×H×W×3 images + one prompt each -> float32 [B] scores in [0, 1].

Every reward is a plain object, cheap to construct, with no global state, so each reward worker
process builds its own (``build_reward(name, **config)``) and scores whole batches.

    checks   GenEval-style binary checks on the procedural scenes, averaged (default; checks.py)
    geneval  programmatic GenEval-style partial-credit reward on the same scenes (geneval.py)
    ocr      OCR of quoted prompt text with RapidOCR on CPU (optional package; ocr.py)

A name of the form ``package.module:factory`` is a reward of your own: ``factory(**config)``
must return a callable with the ``Reward`` call signature. It is imported by name in every
process that scores (the trainer, reward workers, explorers), so it must be importable there.
Every reward must score each image on its own (no batch statistics): reward workers split
batches into chunks and rely on the scores not depending on the split.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

from spotlight.models.rewards.checks import ChecksConfig, GenEvalChecks, strict_accuracy
from spotlight.models.rewards.geneval import (
    Detection,
    GenEvalConfig,
    GenEvalReward,
    RewardBreakdown,
)
from spotlight.models.rewards.ocr import OcrConfig, OcrReward, ocr_available, target_text

__all__ = [
    "REWARD_NAMES",
    "ChecksConfig",
    "Detection",
    "GenEvalChecks",
    "GenEvalConfig",
    "GenEvalReward",
    "OcrConfig",
    "OcrReward",
    "Reward",
    "RewardBreakdown",
    "build_reward",
    "ocr_available",
    "strict_accuracy",
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


def _checks(**kwargs: Any) -> Reward:
    return GenEvalChecks(ChecksConfig(**kwargs))


def _ocr(**kwargs: Any) -> Reward:
    return OcrReward(OcrConfig(**kwargs))


_BUILDERS: dict[str, tuple[Callable[..., Reward], type[Any]]] = {
    "checks": (_checks, ChecksConfig),
    "geneval": (_geneval, GenEvalConfig),
    "ocr": (_ocr, OcrConfig),
}
REWARD_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_reward(name: str, **kwargs: Any) -> Reward:
    """The reward called ``name``, configured by ``kwargs`` (fields of its config dataclass),
    or the reward ``package.module:factory(**kwargs)`` returns (see the module docstring)."""
    if ":" in name and name not in _BUILDERS:
        return _custom(name, kwargs)
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


def _custom(name: str, kwargs: dict[str, Any]) -> Reward:
    module_name, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"reward {name!r}: cannot import {attr!r} from {module_name!r} ({exc}); give "
            f"package.module:factory, or one of: {', '.join(REWARD_NAMES)}"
        ) from None
    reward = factory(**kwargs)
    if not callable(reward):
        raise ValueError(f"reward {name!r}: {attr}(...) returned {reward!r}, not a callable")
    return cast("Reward", reward)
