"""The DiT policy: shapes, packing, prompt and config errors, the qwen-image load path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import QwenImageTransformer2DModel

from spotlight.models.dit import (
    DiTConfig,
    TextEmbedding,
    build_policy,
    get_config,
    images_to_uint8,
    uint8_to_images,
)
from spotlight.models.qwen_image import ModelDirError, load_qwen_image
from spotlight.models.vocab import PromptError

MICRO = dataclasses.replace(
    get_config("tiny"),
    num_layers=1,
    num_attention_heads=2,
    attention_head_dim=16,
    joint_attention_dim=32,
    axes_dims_rope=(4, 6, 6),
)


@pytest.fixture(scope="module")
def policy():
    return build_policy(MICRO, seed=0)


def test_tiny_config_suits_sequence_parallelism_and_cpu():
    cfg = get_config("tiny")
    assert cfg.num_attention_heads % 2 == 0 and cfg.num_attention_heads % 4 == 0
    assert cfg.num_tokens % 4 == 0
    assert (cfg.num_tokens, cfg.token_dim, cfg.grid) == (64, 48, (8, 8))


def test_forward_shapes_and_float32(policy):
    x = torch.randn(3, MICRO.num_tokens, MICRO.token_dim)
    text = policy.encode_prompts(
        ["a red circle", "two blue squares", "a red circle left of a green square"]
    )
    assert text.embeds_BLD.shape == (3, MICRO.text_max_tokens, MICRO.joint_attention_dim)
    assert text.mask_BL.tolist()[0] == [1, 1, 1] + [0] * (MICRO.text_max_tokens - 3)
    v = policy(x, torch.rand(3), text)
    assert v.shape == x.shape and v.dtype == torch.float32
    assert torch.isfinite(v).all()


def test_one_text_broadcasts_over_the_batch(policy):
    x = torch.randn(2, MICRO.num_tokens, MICRO.token_dim)
    sigma = torch.tensor([0.3, 0.7])
    one = policy.encode_prompts(["three yellow triangles"])
    both = policy.encode_prompts(["three yellow triangles"] * 2)
    with torch.no_grad():
        torch.testing.assert_close(policy(x, sigma, one), policy(x, sigma, both))


def test_prompt_changes_the_output(policy):
    x = torch.randn(1, MICRO.num_tokens, MICRO.token_dim)
    s = torch.tensor([0.5])
    with torch.no_grad():
        a = policy(x, s, policy.encode_prompts(["a red circle"]))
        b = policy(x, s, policy.encode_prompts(["a blue circle"]))
    assert not torch.allclose(a, b)


def test_pack_unpack_inverse(policy):
    images = torch.randn(2, 3, 32, 32)
    x = policy.pack(images)
    assert x.shape == (2, 64, 48)
    torch.testing.assert_close(policy.unpack(x), images, rtol=0, atol=0)
    # one token is one 4×4 patch, channel-major
    torch.testing.assert_close(x[0, 1].reshape(3, 4, 4), images[0, :, 0:4, 4:8], rtol=0, atol=0)


def test_bad_shapes_are_named(policy):
    with pytest.raises(ValueError, match=r"expects \(B, 64, 48\)"):
        policy(torch.randn(1, 16, 48), torch.rand(1), policy.encode_prompts(["a red circle"]))
    with pytest.raises(ValueError, match="expects"):
        policy.pack(torch.randn(1, 3, 16, 16))


def test_uint8_round_trip():
    arr = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(images_to_uint8(uint8_to_images(arr)), arr)
    with pytest.raises(ValueError, match="uint8"):
        uint8_to_images(arr.astype(np.float32))


def test_prompt_errors(policy):
    with pytest.raises(PromptError, match="purple"):
        policy.encode_prompts(["a purple circle"])
    with pytest.raises(PromptError, match="empty"):
        policy.encode_prompts([""])
    with pytest.raises(ValueError, match="at least one prompt"):
        policy.encode_prompts([])


def test_build_is_deterministic_in_seed():
    a, b, c = build_policy(MICRO, seed=1), build_policy(MICRO, seed=1), build_policy(MICRO, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_unknown_config_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown DiT config 'huge'.*qwen-image.*tiny"):
        get_config("huge")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"axes_dims_rope": (8, 8, 8)}, "sums to 24"),
        ({"axes_dims_rope": (7, 13, 12)}, "even"),
        ({"patch": 5}, "not a multiple of patch 5"),
        ({"num_layers": 0}, "num_layers must be a positive int"),
        ({"text_encoder_heads": 3}, "text_encoder_heads 3 does not divide"),
        ({"dtype": "float8"}, "dtype 'float8' unknown"),
    ],
)
def test_config_validation(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(get_config("tiny"), **change)


def test_config_dict_round_trip():
    cfg = get_config("qwen-image")
    assert DiTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown DiTConfig fields"):
        DiTConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_build_policy_refuses_random_qwen_image():
    with pytest.raises(ValueError, match="load_qwen_image"):
        build_policy("qwen-image")


def _tiny_qwen_transformer() -> QwenImageTransformer2DModel:
    torch.manual_seed(0)
    # Shaped like the real one (2×2 packed latents, in = out·4), only much smaller.
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=24,
        axes_dims_rope=(4, 6, 6),
    )


def test_qwen_image_load_path(tmp_path):
    model = _tiny_qwen_transformer().eval()
    model.save_pretrained(tmp_path / "transformer")
    policy = load_qwen_image(tmp_path, dtype=torch.float32, image_size=8, text_encoder=False)
    cfg = policy.config
    assert (cfg.name, cfg.channels, cfg.patch, cfg.num_tokens, cfg.token_dim) == (
        "qwen-image",
        4,
        2,
        16,
        16,
    )
    latents = torch.randn(2, 4, 8, 8)
    x = policy.pack(latents)
    text = TextEmbedding(torch.randn(2, 5, 24), torch.ones(2, 5, dtype=torch.long))
    sigma = torch.tensor([0.2, 0.9])
    with torch.no_grad():
        got = policy(x, sigma, text)
        want = model(
            hidden_states=x,
            encoder_hidden_states=text.embeds_BLD,
            encoder_hidden_states_mask=text.mask_BL,
            timestep=sigma,
            img_shapes=[(1, 4, 4)] * 2,
            return_dict=False,
        )[0]
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="no text encoder"):
        policy.encode_prompts(["a cat"])
    # Asking for the text encoder where there is none (or no `transformers`) says which.
    with pytest.raises(ModelDirError, match=r"transformers|text_encoder/"):
        load_qwen_image(tmp_path, dtype=torch.float32, image_size=8, text_encoder=True)


def test_qwen_image_load_errors(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        load_qwen_image(tmp_path / "nowhere")
    with pytest.raises(ModelDirError, match=r"no transformer/config\.json"):
        load_qwen_image(tmp_path)
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="could not load the transformer"):
        load_qwen_image(tmp_path, dtype=torch.float32, text_encoder=False)
