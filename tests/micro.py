"""The micro DiT every fast test trains: 8×8 images, one layer, built in milliseconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from spotlight.models.dit import DiTConfig
from spotlight.models.flow_grpo import FlowGrpoConfig
from spotlight.models.grpo import GrpoConfig
from spotlight.models.sampler import SamplerConfig

MICRO = DiTConfig(
    name="micro",
    image_size=8,
    channels=3,
    patch=2,
    num_layers=1,
    num_attention_heads=2,
    attention_head_dim=16,
    joint_attention_dim=32,
    axes_dims_rope=(4, 6, 6),
    text_max_tokens=16,
    text_encoder_layers=1,
    text_encoder_heads=2,
)


def save_micro_base(path: Path, *, seed: int = 2) -> Path:
    """A randomly initialised micro checkpoint at ``path`` (what tests pass as ``base``)."""
    from spotlight.models.checkpoint import CheckpointCard, save_checkpoint
    from spotlight.models.dit import build_policy

    save_checkpoint(build_policy(MICRO, seed=seed), path, CheckpointCard(config=MICRO, steps=0))
    return path


def nudge_adapters(policy: torch.nn.Module, by: float = 0.05) -> None:
    """LoRA adapters as after some training: every B matrix moved by ``by`` (B starts at zero,
    so fresh adapters change nothing and a test of them could not fail)."""
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(by)


def redness(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """A reward with a clear direction and spread between seeds: how red the image is, [0, 1]."""
    img = images.astype(np.float32) / 255.0
    return np.clip(0.5 + 0.5 * (img[..., 0] - img[..., 1:].mean(-1)).mean(axis=(1, 2)), 0, 1)


def redness_reward() -> object:
    """``redness`` by name, for processes that build their reward from a config string
    (``trainer.reward=tests.micro:redness_reward``: reward workers, `spotlight run`)."""
    return redness


PROMPTS = ["a red circle", "two blue squares", "a green triangle"]


def micro_algo(**kw: object) -> FlowGrpoConfig:
    """A one-iteration algorithm the micro DiT runs in a blink: 3 prompts × 4 seeds in chunks
    of 5, 5, 2 (``micro_batch`` does not divide the batch, on purpose); ``kw`` overrides."""
    base: dict[str, object] = {
        "prompts_per_iter": 3,
        "group_size": 4,
        "micro_batch": 5,
        "sampler": SamplerConfig(num_steps=4, noise_level=0.9, sde_window=(0, 2)),
        "grpo": GrpoConfig(clip_range=1e-2),
        "lr": 1e-3,
    }
    base.update(kw)
    return FlowGrpoConfig(**base)  # type: ignore[arg-type]


def micro_pairs(config: FlowGrpoConfig) -> tuple[list[str], list[int]]:
    """Per-sample (prompts, seeds) for ``config``: each of PROMPTS ``group_size`` times."""
    prompts = [p for p in PROMPTS for _ in range(config.group_size)]
    return prompts, list(range(100, 100 + len(prompts)))
