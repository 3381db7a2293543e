"""LoRA adapters on the DiT policy: what trains, what a version holds, the reference, files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spotlight.models.bases import load_checkpoint
from spotlight.models.checkpoint import CheckpointCard, save_checkpoint
from spotlight.models.dit import DiTPolicy, build_policy
from spotlight.models.flow_grpo import FlowGrpoConfig, flow_grpo_iteration
from spotlight.models.grpo import GrpoConfig
from spotlight.models.lora import (
    AdapterFreeReference,
    adapters_disabled,
    attach_lora,
    load_tunable_state,
    save_diffusers_lora,
    tunable_state,
)
from spotlight.models.lora_settings import LoraSettings
from spotlight.models.sampler import SamplerConfig
from tests.micro import nudge_adapters

LORA = LoraSettings(rank=4, alpha=8)
PROMPTS = ["a red circle", "two blue squares"]


def _inputs(policy: DiTPolicy) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    gen = torch.Generator().manual_seed(0)
    cfg = policy.config
    x = torch.randn(2, cfg.num_tokens, cfg.token_dim, generator=gen)
    return x, torch.tensor([0.9, 0.4]), PROMPTS


@torch.no_grad()
def _velocity(policy: DiTPolicy) -> torch.Tensor:
    x, sigma, prompts = _inputs(policy)
    return policy(x, sigma, policy.encode_prompts(prompts))


def _redness(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    img = images.astype(np.float32) / 255.0
    return np.clip(0.5 + 0.5 * (img[..., 0] - img[..., 1:].mean(-1)).mean(axis=(1, 2)), 0, 1)


def test_adapters_start_at_the_base_and_only_they_train() -> None:
    base = build_policy("tiny", seed=1)
    policy = attach_lora(build_policy("tiny", seed=1), LORA)
    torch.testing.assert_close(_velocity(policy), _velocity(base), atol=1e-5, rtol=0)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    state = tunable_state(policy)
    assert state.keys() == trainable  # a version is the adapters, nothing else
    assert all(t.dtype == torch.float32 for t in state.values())
    # 8 projections x 4 blocks of the tiny config, each A (4 x 128) and B (128 x 4)
    assert sum(t.numel() for t in state.values()) == 8 * 4 * 2 * 4 * 128
    assert sum(t.numel() for t in state.values()) < 0.05 * sum(
        p.numel() for p in policy.parameters()
    )


def test_a_flow_grpo_update_moves_the_adapters_and_leaves_the_base_bit_equal() -> None:
    policy = attach_lora(build_policy("tiny", seed=2), LORA)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    config = FlowGrpoConfig(
        prompts_per_iter=2,
        group_size=2,
        micro_batch=4,
        sampler=SamplerConfig(num_steps=3, noise_level=0.9, sde_window=(0, 2)),
        grpo=GrpoConfig(clip_range=1e-2),
        lr=1e-3,
    )
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=config.lr)
    prompts = [p for p in PROMPTS for _ in range(2)]
    stats, _ = flow_grpo_iteration(policy, opt, prompts, [1, 2, 3, 4], _redness, config)
    assert stats.first_ratio_dev == 0.0  # on-policy first pass: ratio exactly 1
    after = policy.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all("lora_" in k for k in moved)
    assert any("lora_B" in k for k in moved)


def test_a_version_loads_into_a_receiver_with_the_same_adapters_and_nothing_else() -> None:
    trainer = attach_lora(build_policy("tiny", seed=3), LORA)
    nudge_adapters(trainer)
    receiver = attach_lora(build_policy("tiny", seed=3), LORA)  # the same base, from disk
    assert not torch.equal(_velocity(receiver), _velocity(trainer))
    load_tunable_state(receiver, tunable_state(trainer))
    torch.testing.assert_close(_velocity(receiver), _velocity(trainer), atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="do not match the policy's adapters"):
        load_tunable_state(receiver, trainer.state_dict())  # a full state is not a version
    with pytest.raises(RuntimeError, match="missing"):
        load_tunable_state(receiver, dict(list(tunable_state(trainer).items())[1:]))
    full = build_policy("tiny", seed=3)  # without LoRA a version is the whole state_dict
    load_tunable_state(full, tunable_state(build_policy("tiny", seed=4)))
    torch.testing.assert_close(_velocity(full), _velocity(build_policy("tiny", seed=4)))


def test_the_kl_reference_is_the_base_without_a_copy() -> None:
    base = build_policy("tiny", seed=5)
    policy = attach_lora(build_policy("tiny", seed=5), LORA)
    nudge_adapters(policy)
    adapted = _velocity(policy)
    assert (adapted - _velocity(base)).abs().max() > 1e-3
    reference = AdapterFreeReference(policy)
    x, sigma, prompts = _inputs(policy)
    torch.testing.assert_close(
        reference(x, sigma, reference.encode_prompts(prompts)), _velocity(base), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(_velocity(policy), adapted)  # adapters back on afterwards
    with pytest.raises(ValueError, match="no LoRA adapters"), adapters_disabled(base):
        pass


def test_checkpoints_record_the_adapters_and_load_them_back(tmp_path: Path) -> None:
    policy = attach_lora(build_policy("tiny", seed=6), LORA)
    nudge_adapters(policy)
    save_checkpoint(policy, tmp_path / "ckpt", CheckpointCard(config=policy.config, steps=3))
    loaded, card = load_checkpoint(tmp_path / "ckpt")
    assert card.lora == LORA.to_dict() and loaded.lora == LORA
    torch.testing.assert_close(_velocity(loaded), _velocity(policy), atol=0, rtol=0)


def test_the_diffusers_lora_file_loads_into_the_plain_transformer(tmp_path: Path) -> None:
    """What users take away: QwenImagePipeline.load_lora_weights reads this format."""
    policy = attach_lora(build_policy("tiny", seed=7), LORA)
    nudge_adapters(policy)
    out = save_diffusers_lora(policy, tmp_path / "lora")
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    fresh = build_policy("tiny", seed=7)
    from diffusers import QwenImagePipeline

    # exactly what QwenImagePipeline.load_lora_weights(out) does with the pipeline's transformer
    lora_state, metadata = QwenImagePipeline.lora_state_dict(str(out), return_lora_metadata=True)
    assert lora_state and all(k.startswith("transformer.") for k in lora_state)
    QwenImagePipeline.load_lora_into_transformer(
        lora_state, transformer=fresh.transformer, metadata=metadata
    )
    torch.testing.assert_close(_velocity(fresh), _velocity(policy), atol=1e-6, rtol=0)


def test_bad_settings_and_a_second_attach_are_refused() -> None:
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        LoraSettings(rank=0, alpha=1)
    with pytest.raises(ValueError, match="alpha must be an int >= 1"):
        LoraSettings(rank=4, alpha=0)
    with pytest.raises(ValueError, match="unknown LoRA setting"):
        LoraSettings.from_dict({"rank": 4, "alpha": 8, "dropout": 0.1})
    with pytest.raises(ValueError, match=r"match no module.*valid targets"):
        attach_lora(build_policy("tiny"), LoraSettings(rank=4, alpha=8, targets=("nope",)))
    policy = attach_lora(build_policy("tiny"), LORA)
    with pytest.raises(ValueError, match="already has LoRA"):
        attach_lora(policy, LORA)
    assert LoraSettings.from_dict(LORA.to_dict()) == LORA
