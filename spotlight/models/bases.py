"""What the policy at a base path is: a tiny-format checkpoint or a Qwen-Image pipeline.

One answer for everybody who needs it (the trainer, every spot node, the coordinator's offer,
checkpoints that sit on a base): a directory with ``card.json`` is our own checkpoint
(checkpoint.py); one with ``transformer/config.json`` is a Hugging Face ``Qwen/Qwen-Image``
layout, loaded from disk only (qwen_image.py) with its text encoder and VAE, in bfloat16 on a
GPU and float32 on a CPU. Only LoRA trains a pipeline base (lora.py): its checkpoints hold the
adapters and name the base they sit on.

Loading lives here, not in checkpoint.py (the format: card, weights file, save): a checkpoint
on a base loads that base, which may itself be a checkpoint, so :func:`load_checkpoint` and
:func:`load_base` recurse into each other and belong to one module.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from spotlight.models.checkpoint import (
    WEIGHTS_FILE,
    CheckpointCard,
    CheckpointError,
    read_card,
)
from spotlight.models.dit import DiTConfig, DiTPolicy, build_policy, get_config
from spotlight.models.lora import attach_lora, load_tunable_state
from spotlight.models.lora_settings import LoraSettings

__all__ = [
    "VAE_FACTOR",
    "base_config",
    "is_pipeline",
    "latent_side",
    "load_base",
    "load_checkpoint",
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
    policy, _card = load_checkpoint(path)
    return policy.to(dev)


def same_shape(a: DiTConfig, b: DiTConfig) -> bool:
    """Equal configs up to the parameter dtype (bf16 on a GPU node, float32 on a CPU one):
    the adapters a version carries fit either."""
    return dataclasses.replace(a, dtype=b.dtype) == b


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    config: DiTConfig | str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[DiTPolicy, CheckpointCard]:
    """The policy and card stored in ``path``; ``config`` (optional) is what the caller expects.
    ``device``: where a checkpoint on a pipeline base loads that base (tiny ones load on the
    CPU; move them).

    Raises CheckpointError for a missing directory or file, a corrupt file, or a checkpoint
    made for another config ("checkpoint is for config X, asked for Y").
    """
    card = read_card(path)
    if config is not None:
        want = get_config(config) if isinstance(config, str) else config
        if want.name != card.config.name:
            raise CheckpointError(
                f"checkpoint {path} is for config {card.config.name!r}, asked for {want.name!r}"
            )
        if want != card.config:
            raise CheckpointError(
                f"checkpoint {path} is for a different shape of config {want.name!r}: "
                f"stored {card.config}, asked for {want}"
            )
    weights_path = Path(path) / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint {path} has no {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint weights {weights_path} are corrupt: {e}") from e
    if card.base is not None:
        return _load_on_base(path, card, state, torch.device(device)), card
    policy = build_policy(card.config)
    if card.lora is not None:
        try:
            settings = LoraSettings.from_dict(card.lora)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint card {path} has unusable LoRA settings: {e}") from e
        attach_lora(policy, settings)
    try:
        policy.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint weights {weights_path} do not match config {card.config.name!r}: {e}"
        ) from e
    return policy, card


def _load_on_base(
    path: str | os.PathLike[str], card: CheckpointCard, state: dict[str, Any], device: torch.device
) -> DiTPolicy:
    """An adapter checkpoint: the base it names, the adapters of its card, then its weights."""
    from spotlight.models.bases import load_base, same_shape

    assert card.base is not None
    if card.lora is None:
        raise CheckpointError(f"checkpoint {path} names the base {card.base} but no LoRA settings")
    policy = load_base(card.base, image_size=card.config.image_size, device=device)
    if not same_shape(policy.config, card.config):
        raise CheckpointError(
            f"checkpoint {path} was trained on a base of config {card.config}, but {card.base} "
            f"now holds {policy.config}"
        )
    attach_lora(policy, LoraSettings.from_dict(card.lora))
    try:
        load_tunable_state(policy, state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} adapters do not fit: {e}") from e
    return policy
