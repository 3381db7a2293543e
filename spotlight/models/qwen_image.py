"""Loading the real Qwen-Image model from a local pipeline directory (GPUs, bf16).

Nothing here downloads: the user points at a directory laid out like the Hugging Face
``Qwen/Qwen-Image`` repository (``transformer/``, ``text_encoder/``, ``tokenizer/``, ...), and
every load passes ``local_files_only=True``. The transformer comes from diffusers (a hard
dependency); the Qwen2.5-VL text encoder needs ``transformers``, an optional extra, so a
policy can be loaded without it and fed precomputed text embeddings.

Prompt encoding follows diffusers' QwenImagePipeline: the prompt is wrapped in the pipeline's
chat template, encoded, the last hidden state taken, and the template's first 34 tokens dropped.
Image decoding follows the pipeline after its denoising loop (:class:`QwenVaeDecoder`): the
policy denoises normalised VAE latents, which rewards can only judge once decoded to pixels.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
from torch import Tensor

from spotlight.models.dit import DiTConfig, DiTPolicy, TextEmbedding

PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
    "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
TEMPLATE_DROP_TOKENS = 34
MAX_PROMPT_TOKENS = 1024


class ModelDirError(ValueError):
    """A local model directory is missing or does not look like a Qwen-Image pipeline."""


def _dtype_name(dtype: torch.dtype) -> str:
    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    if dtype not in names:
        raise ValueError(f"dtype {dtype} unsupported; valid: {sorted(names.values())}")
    return names[dtype]


def config_from_transformer(
    transformer: QwenImageTransformer2DModel, *, image_size: int, dtype: torch.dtype
) -> DiTConfig:
    """The DiTConfig describing a loaded transformer (its shape read from its own config)."""
    c: Any = transformer.config  # type: ignore[attr-defined]  # mypy misreads diffusers' class
    return _config_from(c, image_size=image_size, dtype=dtype)


def _config_from(c: Any, *, image_size: int, dtype: torch.dtype) -> DiTConfig:
    """The DiTConfig of a transformer config (attribute access, as diffusers' FrozenDict)."""
    out_channels = c.out_channels or c.in_channels
    patch = int(c.patch_size)
    if c.in_channels != out_channels * patch * patch:
        raise ModelDirError(
            f"transformer in_channels {c.in_channels} != out_channels {out_channels} × "
            f"patch_size² {patch * patch}; not a packed-latent Qwen-Image transformer"
        )
    return DiTConfig(
        name="qwen-image",
        image_size=image_size,
        channels=out_channels,
        patch=patch,
        num_layers=int(c.num_layers),
        num_attention_heads=int(c.num_attention_heads),
        attention_head_dim=int(c.attention_head_dim),
        joint_attention_dim=int(c.joint_attention_dim),
        axes_dims_rope=tuple(int(d) for d in c.axes_dims_rope),  # type: ignore[arg-type]
        text_max_tokens=MAX_PROMPT_TOKENS,
        dtype=_dtype_name(dtype),
    )


def read_transformer_config(
    local_dir: str | os.PathLike[str], *, image_size: int, dtype: torch.dtype
) -> DiTConfig:
    """The DiTConfig of a pipeline directory's transformer from its ``config.json`` alone (no
    weights read): what the coordinator sends to spot nodes before anything is loaded."""
    from diffusers.configuration_utils import FrozenDict

    root = Path(local_dir)
    if not (root / "transformer" / "config.json").is_file():
        raise ModelDirError(f"{root} has no transformer/config.json (not a Qwen-Image pipeline)")
    try:
        raw = QwenImageTransformer2DModel.load_config(
            root, subfolder="transformer", local_files_only=True
        )
    except (OSError, ValueError) as e:
        raise ModelDirError(f"unreadable {root / 'transformer' / 'config.json'}: {e}") from e
    return _config_from(FrozenDict(raw), image_size=image_size, dtype=dtype)


class QwenPromptEncoder:
    """Qwen2.5-VL prompt encoder as the Qwen-Image pipeline uses it (frozen, no gradients)."""

    def __init__(self, tokenizer: object, text_encoder: torch.nn.Module) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> TextEmbedding:
        if len(prompts) == 0:
            raise ValueError("encode_prompts needs at least one prompt")
        device = next(self.text_encoder.parameters()).device
        tokens = self.tokenizer(  # type: ignore[operator]
            [PROMPT_TEMPLATE.format(p) for p in prompts],
            max_length=MAX_PROMPT_TOKENS + TEMPLATE_DROP_TOKENS,
            padding=True,
            truncation=True,
            return_tensors="pt",
        ).to(device)
        hidden_BTD = self.text_encoder(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            output_hidden_states=True,
        ).hidden_states[-1]
        mask_BT = tokens.attention_mask.bool()
        rows = [h[m][TEMPLATE_DROP_TOKENS:] for h, m in zip(hidden_BTD, mask_BT, strict=True)]
        length = max(r.shape[0] for r in rows)
        embeds_BLD = torch.stack(
            [torch.cat([r, r.new_zeros(length - r.shape[0], r.shape[1])]) for r in rows]
        )
        mask_BL = torch.stack(
            [
                torch.cat(
                    [
                        torch.ones(r.shape[0], dtype=torch.long),
                        torch.zeros(length - r.shape[0], dtype=torch.long),
                    ]
                )
                for r in rows
            ]
        ).to(device)
        return TextEmbedding(embeds_BLD, mask_BL)


def _load_prompt_encoder(
    root: Path, dtype: torch.dtype, device: str | torch.device
) -> QwenPromptEncoder:
    if importlib.util.find_spec("transformers") is None:
        raise ModelDirError(
            "loading the Qwen-Image text encoder needs the 'transformers' package "
            "(pip install transformers); or pass text_encoder=False and precomputed embeddings"
        )
    for sub in ("text_encoder", "tokenizer"):
        if not (root / sub).is_dir():
            raise ModelDirError(f"{root} has no {sub}/ folder (expected a Qwen-Image pipeline dir)")
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(
        root / "tokenizer", local_files_only=True
    )
    encoder: torch.nn.Module = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        root / "text_encoder", torch_dtype=dtype, local_files_only=True
    )
    return QwenPromptEncoder(tokenizer, encoder.to(device))


class QwenVaeDecoder:
    """Qwen-Image latents -> pixels, exactly as ``QwenImagePipeline`` decodes after denoising.

    The flow model works in *normalised* latents: per channel c, ``x = (z − μ_c) / σ_c`` where
    ``z`` is the VAE's raw latent and μ, σ are the VAE config's ``latents_mean`` and
    ``latents_std`` (the raw statistics are far from the unit Gaussian the flow starts from).
    Decoding undoes that, ``z = x · σ_c + μ_c``, computed like the pipeline as
    ``x / (1 / σ) + μ`` in the VAE's dtype so bf16 results match it bit for bit; adds the frame
    axis (B, C, 1, H, W) of this video-shaped VAE, decodes, and keeps frame 0. The VAE clamps
    its output to [-1, 1].

    Latents come in as ``DiTPolicy.unpack`` gives them, B×C×H×W: our ``pack`` is the
    pipeline's ``_pack_latents`` (channel-major 2×2 patches: token = (c, dy, dx) flattened) and
    our ``unpack`` its ``_unpack_latents`` less the frame axis, so the same tokens give the same
    latents. Images come back as float32 on the CPU (where rewards and the sampler live).
    """

    def __init__(self, vae: torch.nn.Module) -> None:
        self.vae = vae.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(
        cls, root: Path, *, dtype: torch.dtype, device: str | torch.device
    ) -> QwenVaeDecoder:
        """The VAE of the pipeline directory ``root`` (its ``vae/`` folder); never downloads."""
        if not (root / "vae").is_dir():
            raise ModelDirError(f"{root} has no vae/ folder (expected a Qwen-Image pipeline dir)")
        try:
            vae = AutoencoderKLQwenImage.from_pretrained(
                root, subfolder="vae", torch_dtype=dtype, local_files_only=True
            )
        except (OSError, ValueError) as e:
            raise ModelDirError(f"could not load the VAE from {root / 'vae'}: {e}") from e
        return cls(cast(torch.nn.Module, vae).to(device))

    @torch.no_grad()
    def __call__(self, latents_BCHW: Tensor) -> Tensor:
        """Normalised latents B×C×H×W (any device) -> float32 images B×3×8H×8W on the CPU."""
        param = next(self.vae.parameters())
        config: Any = self.vae.config
        stats_shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(stats_shape).to(param.device, param.dtype)
        inv_std = 1.0 / torch.tensor(config.latents_std).view(stats_shape).to(
            param.device, param.dtype
        )
        z_BCTHW = latents_BCHW.to(param.device, param.dtype).unsqueeze(2) / inv_std + mean
        images_BCHW = self.vae.decode(z_BCTHW, return_dict=False)[0][:, :, 0]  # type: ignore[operator]
        return images_BCHW.float().cpu()


def load_qwen_image(
    local_dir: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    image_size: int = 128,
    text_encoder: bool | None = None,
    vae: bool | None = None,
) -> DiTPolicy:
    """The Qwen-Image policy from a local pipeline directory; never downloads.

    ``image_size`` is the latent side (1024 px / VAE factor 8 = 128). ``text_encoder``: True
    requires it (and ``transformers``), False skips it, None loads it when both the package and
    the ``text_encoder/`` folder are present. ``vae``: True requires ``vae/``, False skips it
    (the policy then cannot make images for rewards), None loads it when the folder is there.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise ModelDirError(f"model directory {root} does not exist")
    if not (root / "transformer" / "config.json").is_file():
        raise ModelDirError(
            f"{root} has no transformer/config.json; expected a Qwen-Image pipeline directory "
            "with transformer/, text_encoder/, tokenizer/ and vae/ folders"
        )
    if vae is None:
        vae = (root / "vae").is_dir()
    # The small VAE first: a missing vae/ fails before the 20B transformer's long load.
    image_decoder = (
        QwenVaeDecoder.from_pretrained(root, dtype=dtype, device=device) if vae else None
    )
    try:
        transformer = QwenImageTransformer2DModel.from_pretrained(
            root, subfolder="transformer", torch_dtype=dtype, local_files_only=True
        )
    except (OSError, ValueError) as e:
        raise ModelDirError(
            f"could not load the transformer from {root / 'transformer'}: {e}"
        ) from e
    transformer = transformer.to(device)
    config = config_from_transformer(transformer, image_size=image_size, dtype=dtype)
    if text_encoder is None:
        text_encoder = (
            importlib.util.find_spec("transformers") is not None
            and (root / "text_encoder").is_dir()
        )
    prompt_encoder = _load_prompt_encoder(root, dtype, device) if text_encoder else None
    return DiTPolicy(
        config,
        cast(torch.nn.Module, transformer),
        prompt_encoder=prompt_encoder,
        image_decoder=image_decoder,
    )
