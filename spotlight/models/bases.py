"""What the policy at a base path is: a tiny-format checkpoint or a Qwen-Image pipeline.

One answer for everybody who needs it (the trainer, every spot node, the coordinator's offer,
checkpoints that sit on a base): a directory with ``card.json`` is our own checkpoint
(checkpoint.py); one with ``transformer/config.json`` is a Hugging Face ``Qwen/Qwen-Image``
layout, loaded from disk only (qwen_image.py) with its text encoder and VAE, in bfloat16 on a
GPU and float32 on a CPU. Only LoRA trains a pipeline base (lora.py): its checkpoints hold the
adapters and name the base they sit on.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from spotlight.models.dit import DiTConfig, DiTPolicy

__all__ = [
    "VAE_FACTOR",
    "base_config",
    "is_pipeline",
    "latent_side",
    "load_base",
    "same_shape",
]

VAE_FACTOR = 8
"""Pixels per latent cell of Qwen-Image's VAE."""


def is_pipeline(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a Qwen-Image pipeline directory (not one of our checkpoints)."""
    return (Path(path) / "transformer" / "config.json").is_file()


def latent_side(resolution: int) -> int:
    """Latent cells per side for ``resolution`` pixels (ValueError naming valid sizes)."""
    step = VAE_FACTOR * 2  # the VAE's factor times the transformer's 2×2 patch
    if not isinstance(resolution, int) or resolution < step or resolution % step:
        raise ValueError(
            f"resolution {resolution!r} must be a positive multiple of {step} pixels "
            f"(VAE factor {VAE_FACTOR} × patch 2), e.g. 512 or 1024"
        )
    return resolution // VAE_FACTOR


def _dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _latents(path: str | os.PathLike[str], image_size: int | None) -> int:
    if image_size is None:
        raise ValueError(f"the pipeline base {path} needs image_size (latent cells per side)")
    return image_size


def base_config(
    path: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
) -> DiTConfig:
    """The policy config of the base at ``path`` without loading its weights. ``image_size``
    (latent cells per side, :func:`latent_side`) sizes a pipeline; a checkpoint has its own."""
    if is_pipeline(path):
        from spotlight.models.qwen_image import read_transformer_config

        return read_transformer_config(
            path, image_size=_latents(path, image_size), dtype=_dtype(torch.device(device))
        )
    from spotlight.models.checkpoint import read_card

    return read_card(path).config


def load_base(
    path: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
) -> DiTPolicy:
    """The base policy at ``path`` on ``device`` (CheckpointError / ModelDirError naming what
    is missing); ``image_size`` as for :func:`base_config`."""
    dev = torch.device(device)
    if is_pipeline(path):
        from spotlight.models.qwen_image import load_qwen_image

        return load_qwen_image(
            path,
            dtype=_dtype(dev),
            device=dev,
            image_size=_latents(path, image_size),
            text_encoder=True,
            vae=True,
        )
    from spotlight.models.checkpoint import load_checkpoint

    policy, _card = load_checkpoint(path)
    return policy.to(dev)


def same_shape(a: DiTConfig, b: DiTConfig) -> bool:
    """Equal configs up to the parameter dtype (bf16 on a GPU node, float32 on a CPU one):
    the adapters a version carries fit either."""
    return dataclasses.replace(a, dtype=b.dtype) == b
