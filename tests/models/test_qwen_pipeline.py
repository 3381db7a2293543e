"""The qwen-image load path end to end on a tiny random pipeline directory: prompt encoding and
VAE decoding agree with diffusers' own QwenImagePipeline, and rollouts reward decoded pixels."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import QwenImagePipeline

from spotlight.models.dit import DiTPolicy, build_policy, images_to_uint8
from spotlight.models.flow_grpo import decode, flow_grpo_iteration, generate
from spotlight.models.qwen_image import (
    PROMPT_TEMPLATE,
    TEMPLATE_DROP_TOKENS,
    ModelDirError,
    QwenVaeDecoder,
    load_qwen_image,
)
from spotlight.models.sampler import SamplerConfig
from tests.micro import MICRO, micro_algo, micro_pairs, redness
from tests.qwen_fixture import LATENT_SIDE, Z_DIM, save_tiny_qwen_pipeline

PIXEL_SIDE = LATENT_SIDE * 8
# Different lengths, so the prompt masks have padding (diffusers returns no mask otherwise).
PROMPTS = ["a red circle", "a photo of a cat above a blue square"]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_qwen_pipeline(tmp_path_factory.mktemp("qwen") / "Qwen-Image")


@pytest.fixture(scope="module")
def policy(pipeline_dir: Path) -> DiTPolicy:
    return load_qwen_image(
        pipeline_dir, dtype=torch.float32, image_size=LATENT_SIDE, text_encoder=True, vae=True
    )


@pytest.fixture(scope="module")
def pipeline(pipeline_dir: Path) -> QwenImagePipeline:
    """Diffusers' own pipeline on the same directory: the reference we must agree with."""
    return QwenImagePipeline.from_pretrained(pipeline_dir, local_files_only=True)


def test_fixture_tokenizer_splits_the_template_like_qwen(pipeline: QwenImagePipeline):
    """The template's fixed prefix is the 34 tokens the pipeline drops, as with the real
    tokenizer, so the kept embeddings start at the prompt's first word."""
    ids = pipeline.tokenizer(PROMPT_TEMPLATE.format("a red circle")).input_ids
    tokens = pipeline.tokenizer.convert_ids_to_tokens(ids)
    assert tokens[TEMPLATE_DROP_TOKENS - 3 : TEMPLATE_DROP_TOKENS + 3] == [
        "<|im_start|>",
        "user",
        "\n",
        "a",
        "red",
        "circle",
    ]


def test_load_with_text_encoder_and_vae(policy: DiTPolicy, pipeline: QwenImagePipeline):
    cfg = policy.config
    assert (cfg.name, cfg.image_size, cfg.channels, cfg.patch) == ("qwen-image", 8, Z_DIM, 2)
    text = policy.encode_prompts(PROMPTS)
    want_embeds, want_mask = pipeline.encode_prompt(PROMPTS, device="cpu")
    torch.testing.assert_close(text.embeds_BLD, want_embeds, rtol=0, atol=0)
    torch.testing.assert_close(text.mask_BL, want_mask, rtol=0, atol=0)
    # "a red circle" + the template's 5 closing tokens (<|im_end|> \n <|im_start|> assistant \n).
    assert text.mask_BL.sum(1).tolist()[0] == 3 + 5
    x = torch.randn(2, cfg.num_tokens, cfg.token_dim)
    with torch.no_grad():
        v = policy(x, torch.tensor([0.3, 0.8]), text)
    assert v.shape == x.shape and torch.isfinite(v).all()
    # The frozen text encoder and VAE stay outside the parameters (optimisers, checkpoints).
    assert {id(p) for p in policy.parameters()} == {id(p) for p in policy.transformer.parameters()}


def test_vae_decoder_is_the_pipelines_post_processing(pipeline_dir: Path):
    """Hand-written from QwenImagePipeline.__call__ after its loop: z = x / (1/σ) + μ, frame
    axis, decode, frame 0."""
    decoder = QwenVaeDecoder.from_pretrained(pipeline_dir, dtype=torch.float32, device="cpu")
    vae = decoder.vae
    latents = torch.randn(
        2, Z_DIM, LATENT_SIDE, LATENT_SIDE, generator=torch.Generator().manual_seed(1)
    )
    mean = torch.tensor(vae.config.latents_mean).view(1, Z_DIM, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, Z_DIM, 1, 1, 1)
    with torch.no_grad():
        want = vae.decode(latents[:, :, None] * std + mean).sample[:, :, 0]
        got = decoder(latents)
    assert got.shape == (2, 3, PIXEL_SIDE, PIXEL_SIDE) and got.dtype == torch.float32
    torch.testing.assert_close(got, want)
    assert got.abs().max() <= 1.0
    # Without the un-normalisation the images differ: the check above has teeth.
    with torch.no_grad():
        raw = vae.decode(latents[:, :, None]).sample[:, :, 0]
    assert not torch.allclose(got, raw, atol=1e-3)


def test_images_match_the_pipeline_decoding_our_tokens(policy: DiTPolicy, pipeline_dir: Path):
    """Our tokens through diffusers' pipeline with a zero-velocity transformer (its Euler steps
    leave the latents as given): its unpack, un-normalise and decode give our pixels exactly,
    so our pack order is the pipeline's."""
    cfg = policy.config
    x = torch.randn(2, cfg.num_tokens, cfg.token_dim, generator=torch.Generator().manual_seed(2))
    pipeline = QwenImagePipeline.from_pretrained(pipeline_dir, local_files_only=True)
    pipeline.transformer.proj_out.weight.data.zero_()
    pipeline.transformer.proj_out.bias.data.zero_()
    text = policy.encode_prompts(PROMPTS)
    pixels_01 = pipeline(
        prompt_embeds=text.embeds_BLD,
        prompt_embeds_mask=text.mask_BL,
        latents=x,
        height=PIXEL_SIDE,
        width=PIXEL_SIDE,
        num_inference_steps=2,
        output_type="pt",
    ).images
    images = policy.images(x)
    assert images.shape == (2, PIXEL_SIDE, PIXEL_SIDE, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, images_to_uint8(pixels_01 * 2 - 1))


def test_sampled_rollout_is_decoded_and_trains(policy: DiTPolicy):
    """A few-step SDE sample decodes to VAE-sized images; one Flow-GRPO iteration rewards them
    and updates the transformer."""
    states, _ = generate(
        policy, PROMPTS, [0, 1], SamplerConfig(num_steps=3), micro_batch=2, mode="sde"
    )
    images = decode(policy, states)
    assert images.shape == (2, PIXEL_SIDE, PIXEL_SIDE, 3) and images.dtype == np.uint8

    config = micro_algo()
    prompts, seeds = micro_pairs(config)
    before = [p.detach().clone() for p in policy.transformer.parameters()]
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr)
    try:
        stats, batch = flow_grpo_iteration(policy, optimizer, prompts, seeds, redness, config)
        assert batch.images_uint8.shape == (config.batch_size, PIXEL_SIDE, PIXEL_SIDE, 3)
        assert stats.optimizer_steps >= 1
        after = list(policy.transformer.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    finally:  # the module's other tests share this policy
        with torch.no_grad():
            for p, b in zip(policy.transformer.parameters(), before, strict=True):
                p.copy_(b)


def test_vae_required_or_skipped(pipeline_dir: Path, tmp_path: Path):
    no_vae = tmp_path / "no-vae"
    shutil.copytree(pipeline_dir, no_vae, ignore=shutil.ignore_patterns("vae"))
    with pytest.raises(ModelDirError, match=r"no vae/ folder"):
        load_qwen_image(no_vae, dtype=torch.float32, text_encoder=False, vae=True)
    policy = load_qwen_image(
        no_vae, dtype=torch.float32, image_size=LATENT_SIDE, text_encoder=False
    )
    x = torch.zeros(1, policy.config.num_tokens, policy.config.token_dim)
    with pytest.raises(ValueError, match=r"VAE latents.*vae=True"):
        policy.images(x)


def test_tiny_images_are_the_unpacked_pixels():
    """Pixel-space policies decode as before: unpack, then [-1, 1] -> uint8."""
    policy = build_policy(MICRO, seed=0)
    x = 1.2 * torch.randn(3, MICRO.num_tokens, MICRO.token_dim)
    np.testing.assert_array_equal(policy.images(x), images_to_uint8(policy.unpack(x)))
