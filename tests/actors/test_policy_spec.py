"""What a spot node builds from the coordinator's answer, with and without LoRA."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from spotlight.actors.weights.policy_spec import PolicySpec
from spotlight.actors.weights.slot import weights_fit
from spotlight.models.bases import load_checkpoint
from spotlight.models.lora import attach_lora, load_tunable_state, tunable_state
from spotlight.models.lora_settings import LoraSettings
from tests.micro import MICRO, nudge_adapters

LORA = LoraSettings(rank=2, alpha=4)


def _trained(base: Path) -> torch.nn.Module:
    """The trainer's policy: the base with adapters that have moved."""
    policy, _ = load_checkpoint(base)
    attach_lora(policy, LORA)
    nudge_adapters(policy, 0.1)
    return policy


def _velocity(policy: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(
        2, MICRO.num_tokens, MICRO.token_dim, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        return policy(x, torch.tensor([0.8, 0.3]), policy.encode_prompts(["a red circle"] * 2))


def test_full_fine_tuning_nodes_build_the_config_and_await_every_tensor() -> None:
    wire = {**MICRO.to_dict(), "axes_dims_rope": list(MICRO.axes_dims_rope)}  # as msgpack has it
    spec = PolicySpec.from_answer(wire, None, base_override="/ignored/without/lora")
    assert spec == PolicySpec(config=MICRO) and spec.lora_offer() is None
    policy = spec.build()
    assert policy.lora is None and tunable_state(policy).keys() == policy.state_dict().keys()


def test_lora_nodes_load_the_base_themselves_and_take_adapter_versions(
    micro_base: Path, tmp_path: Path
) -> None:
    base = Path(shutil.copytree(micro_base, tmp_path / "base"))
    trainer = _trained(base)
    offer = PolicySpec(config=MICRO, lora=LORA, base=str(base)).lora_offer()
    assert offer == {"settings": LORA.to_dict(), "base": str(base)}
    node = PolicySpec.from_answer(MICRO.to_dict(), offer).build()
    version = tunable_state(trainer)
    assert all("lora_" in k for k in version)
    weights_fit(node, version, version=1)
    load_tunable_state(node, version)
    torch.testing.assert_close(_velocity(node), _velocity(trainer), atol=0, rtol=0)
    # A full state (a full-fine-tuning trainer) is refused on arrival, naming the mismatch.
    with pytest.raises(ValueError, match=r"does not fit.*LoRA adapters"):
        weights_fit(node, trainer.state_dict(), version=2)
    # A node that keeps the base elsewhere says so with --base; a missing base is named.
    moved = base.rename(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"cannot load the LoRA base.*launch_spot.sh --base"):
        PolicySpec.from_answer(MICRO, offer).build()
    node2 = PolicySpec.from_answer(MICRO, offer, base_override=moved).build()
    load_tunable_state(node2, version)
    torch.testing.assert_close(_velocity(node2), _velocity(trainer), atol=0, rtol=0)


def test_bad_offers_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="unusable LoRA offer"):
        PolicySpec.from_answer(MICRO, {"settings": {"rank": 0, "alpha": 1}, "base": "/b"})
    with pytest.raises(ValueError, match="needs the base checkpoint"):
        PolicySpec.from_answer(MICRO, {"settings": LORA.to_dict()})
    with pytest.raises(ValueError, match="model must be"):
        PolicySpec.from_answer(3)  # type: ignore[arg-type]


def test_a_node_builds_the_trainers_lora_policy_on_a_pipeline_base(tmp_path: Path) -> None:
    """A spot node of a Qwen-Image run: the config from transformer/config.json alone (what the
    coordinator sends), the base from the pipeline directory, adapters from a version."""
    from spotlight.models.bases import base_config, load_base
    from tests.qwen_fixture import LATENT_SIDE, save_tiny_qwen_pipeline

    base = save_tiny_qwen_pipeline(tmp_path / "qwen")
    config = base_config(base, image_size=LATENT_SIDE)
    assert config.name == "qwen-image" and config.image_size == LATENT_SIDE
    trainer = attach_lora(load_base(base, image_size=LATENT_SIDE), LORA)
    assert trainer.config == config
    nudge_adapters(trainer, 0.1)
    spec = PolicySpec.from_answer(
        config.to_dict(), PolicySpec(config=config, lora=LORA, base=str(base)).lora_offer()
    )
    node = spec.build(device="cpu")
    load_tunable_state(node, tunable_state(trainer))
    x = torch.randn(
        2, config.num_tokens, config.token_dim, generator=torch.Generator().manual_seed(0)
    )
    sigma = torch.tensor([0.9, 0.5])
    with torch.no_grad():
        want = trainer(x, sigma, trainer.encode_prompts(["a cat", "a red sign"]))
        got = node(x, sigma, node.encode_prompts(["a cat", "a red sign"]))
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert node.images(x).shape == (2, LATENT_SIDE * 8, LATENT_SIDE * 8, 3)
    other = dataclasses.replace(config, num_layers=config.num_layers + 1)
    with pytest.raises(ValueError, match="give this node the trainer's base"):
        PolicySpec(config=other, lora=LORA, base=str(base)).build(device="cpu")
