"""A tiny random Qwen-Image pipeline directory, laid out like the Hugging Face ``Qwen/Qwen-Image``
repository, built offline in well under a second so the real load path runs in tests.

Every component is the real class at toy size: a one-block ``QwenImageTransformer2DModel``, an
``AutoencoderKLQwenImage`` with 4-channel base width (still 3 upsamplings: 8× per side, as the
real VAE), a one-layer ``Qwen2_5_VLForConditionalGeneration`` of width 32, the real
scheduler config, and a word-level tokenizer that splits the prompt template into exactly the
34 tokens diffusers drops (the real BPE tokenizer does too), so the embeddings start at the
prompt's first word. Diffusers' own ``save_pretrained`` writes it, so ``model_index.json`` is
the one ``QwenImagePipeline.from_pretrained`` reads.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from spotlight.models.qwen_image import PROMPT_TEMPLATE

LATENT_SIDE = 8
"""Latent cells per side the tests denoise (64 px through the 8× VAE)."""
Z_DIM = 4
"""VAE latent channels (16 in the real model)."""
TEXT_WIDTH = 32
"""Qwen2.5-VL hidden size, hence the transformer's ``joint_attention_dim`` (3584 for real)."""

# Qwen-Image's published scheduler/scheduler_config.json.
SCHEDULER_CONFIG = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "use_dynamic_shifting": True,
}
SPECIAL_TOKENS = ("<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>")
CORPUS = (
    "a red circle above a blue square",
    "two green triangles and a yellow star on a white background",
    "a photo of a cat",
)


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """Word-level tokenizer over the template and a few captions (others map to ``<unk>``).

    Words, punctuation runs and each newline are tokens, which is how Qwen's BPE splits the
    template's fixed prefix: 34 tokens, through ``<|im_start|>user\\n``."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(
        Regex(r"\w+|[^\w\s]+|\n"), behavior="removed", invert=True
    )
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS))
    tok.train_from_iterator([PROMPT_TEMPLATE.format(c) for c in CORPUS], trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )


def tiny_text_encoder(
    tokenizer: transformers.PreTrainedTokenizerFast,
) -> transformers.Qwen2_5_VLForConditionalGeneration:
    """One text layer (2 heads of 16, mrope split 2+3+3 = head_dim / 2) and one vision block."""
    config = transformers.Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 2 * TEXT_WIDTH,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 256,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]},
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": TEXT_WIDTH,
            "fullatt_block_indexes": [0],
        },
    )
    return transformers.Qwen2_5_VLForConditionalGeneration(config)


def tiny_vae() -> AutoencoderKLQwenImage:
    """Base width 4 (the real one: 96), one residual block per level; the real depth, so
    ``2 ** len(temperal_downsample)`` = 8 is both its scale and the pipeline's
    ``vae_scale_factor``. Non-trivial latent statistics, so a missed un-normalisation shows."""
    return AutoencoderKLQwenImage(
        base_dim=4,
        z_dim=Z_DIM,
        num_res_blocks=1,
        latents_mean=[0.5, -1.0, 0.25, 2.0],
        latents_std=[2.0, 0.5, 1.5, 3.0],
    )


def tiny_transformer() -> QwenImageTransformer2DModel:
    """Shaped like the real one: 2×2-packed VAE latents (in = z_dim · 4, out = z_dim) reading
    text of the encoder's width."""
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=Z_DIM * 4,
        out_channels=Z_DIM,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        axes_dims_rope=(4, 6, 6),
    )


def save_tiny_qwen_pipeline(path: Path, *, seed: int = 0) -> Path:
    """Write the tiny pipeline to ``path`` (transformer/, vae/, text_encoder/, tokenizer/,
    scheduler/, model_index.json); deterministic in ``seed``."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    pipeline = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(tokenizer),
        tokenizer=tokenizer,
        transformer=tiny_transformer(),
    )
    pipeline.save_pretrained(path)
    return path
