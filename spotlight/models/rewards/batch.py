"""Input checks shared by every reward's batch API."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["check_batch"]


def check_batch(images: np.ndarray, prompts: Sequence[str]) -> None:
    """Refuse batches that are not uint8 B×H×W×3 with one prompt per image."""
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[-1] != 3
    ):
        got = f"{type(images).__name__} {getattr(images, 'dtype', '?')} {getattr(images, 'shape', '?')}"
        raise ValueError(f"rewards take uint8 images of shape B×H×W×3; got {got}")
    if len(prompts) != images.shape[0]:
        raise ValueError(
            f"got {images.shape[0]} images but {len(prompts)} prompts; give one prompt per image"
        )
