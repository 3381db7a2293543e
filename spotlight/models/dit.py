"""The DiT policy: diffusers' ``QwenImageTransformer2DModel`` behind one small, typed face.

Everything downstream (sampler, GRPO, actors) sees a velocity function
``policy(x_BNC, sigma_B, text) -> v_BNC`` over *packed tokens* and never touches the diffusers
call convention, whose quirks we absorb here once:

- the transformer takes already-packed tokens (``img_in`` is a Linear over ``in_channels``);
  we pack ``p×p`` pixel/latent patches ourselves, channel-major like the Qwen-Image pipeline,
  and give diffusers ``patch_size`` only to size ``proj_out``;
- ``timestep`` must be shape (B,) in [0, 1] (diffusers multiplies by 1000): that is exactly our
  σ, so σ = 1 is pure noise and σ = 0 the clean image;
- RoPE uses ``img_shapes[0]`` for the whole batch, so every image of a batch has one size.

Velocity convention (shared with sampler.py): ``x_σ = (1−σ)·x0 + σ·noise`` and the model predicts
``v = noise − x0``. Output is always float32 so log-probabilities stay exact under bf16 weights.

Two named configs: ``tiny`` (pixel space, 32×32 RGB, trains on a CPU; its text encoder is a
learned embedding over the closed caption vocabulary, part of the policy's parameters) and
``qwen-image`` (the real 20B model in VAE-latent space; its text encoder and the VAE that
turns its latents into the pixels rewards read come from the pipeline directory, see
qwen_image.py).

Shape legend: B batch, N image tokens, C token channels (channels·patch²), L text tokens,
D text width (joint_attention_dim), H/W pixels (or latent cells), E embedding width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast

import numpy as np
import torch
from diffusers import QwenImageTransformer2DModel
from torch import Tensor, nn

from spotlight.models import vocab
from spotlight.models.autoencoder import shared_codec

if TYPE_CHECKING:
    from spotlight.models.lora_settings import LoraSettings


@dataclass(frozen=True, kw_only=True)
class DiTConfig:
    """Shape of a DiT policy; validated on construction so a bad combination fails early."""

    name: str
    """Config name; checkpoints record it and refuse to load into another config."""
    image_size: int
    """Side of the square space the policy denoises: pixels for ``tiny``, VAE-latent cells for
    ``qwen-image`` (1024 px / 8 = 128)."""
    channels: int
    """Channels of that space: 3 (RGB) for ``tiny``, 16 (VAE latent) for ``qwen-image``."""
    patch: int
    """Side of the square patch packed into one token; ``image_size`` must be a multiple."""
    num_layers: int
    """Dual-stream transformer blocks."""
    num_attention_heads: int
    """Attention heads; sequence parallelism needs it divisible by the SP degree."""
    attention_head_dim: int
    """Width of one head; the model width is heads × head_dim."""
    joint_attention_dim: int
    """Width of the text embeddings the transformer reads (3584 for Qwen2.5-VL)."""
    axes_dims_rope: tuple[int, int, int]
    """RoPE split of a head's dims over (frame, height, width); must sum to ``attention_head_dim``
    and each be even."""
    text_max_tokens: int
    """Text tokens the policy reads (prompts are padded/masked to this)."""
    text_encoder_layers: int = 0
    """Tiny only: self-attention layers over the learned word embeddings before the DiT reads
    them (0 = embedding + position only). Helps bind a colour to its shape in two-object prompts."""
    text_encoder_heads: int = 4
    """Tiny only: heads of those layers; must divide ``joint_attention_dim``."""
    dtype: str = "float32"
    """Parameter dtype: ``float32`` for CPU training, ``bfloat16`` for the real model on GPUs."""
    vae: str | None = None
    """Tiny latent configs only: the frozen autoencoder that turns latents into pixels — the
    name of one shipped in the package (``tiny-scenes``) or a directory (diffusers layout)
    that every process which builds this policy can read. None: pixel space, or a pipeline
    base that brings its own VAE (qwen_image.py)."""

    def __post_init__(self) -> None:
        positive = {
            "image_size": self.image_size,
            "channels": self.channels,
            "patch": self.patch,
            "num_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "attention_head_dim": self.attention_head_dim,
            "joint_attention_dim": self.joint_attention_dim,
            "text_max_tokens": self.text_max_tokens,
            "text_encoder_heads": self.text_encoder_heads,
        }
        for field, value in positive.items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"DiTConfig.{field} must be a positive int, got {value!r}")
        if self.text_encoder_layers < 0:
            raise ValueError(
                f"DiTConfig.text_encoder_layers must be >= 0, got {self.text_encoder_layers}"
            )
        if self.image_size % self.patch:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch {self.patch}; "
                f"valid patches: {_divisors(self.image_size)}"
            )
        if len(self.axes_dims_rope) != 3:
            raise ValueError(f"axes_dims_rope must have 3 entries, got {self.axes_dims_rope}")
        if any(d <= 0 or d % 2 for d in self.axes_dims_rope):
            raise ValueError(
                f"axes_dims_rope entries must be positive and even: {self.axes_dims_rope}"
            )
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ValueError(
                f"axes_dims_rope {self.axes_dims_rope} sums to {sum(self.axes_dims_rope)}, "
                f"but must equal attention_head_dim {self.attention_head_dim}"
            )
        if self.joint_attention_dim % self.text_encoder_heads:
            raise ValueError(
                f"text_encoder_heads {self.text_encoder_heads} does not divide joint_attention_dim "
                f"{self.joint_attention_dim}; valid: {_divisors(self.joint_attention_dim)}"
            )
        if self.dtype not in _DTYPES:
            raise ValueError(f"DiTConfig.dtype {self.dtype!r} unknown; valid: {sorted(_DTYPES)}")

    @property
    def grid(self) -> tuple[int, int]:
        """(height, width) of the token grid."""
        side = self.image_size // self.patch
        return side, side

    @property
    def num_tokens(self) -> int:
        """Image tokens per sample (N)."""
        h, w = self.grid
        return h * w

    @property
    def token_dim(self) -> int:
        """Channels of one packed token (C = channels · patch²)."""
        return self.channels * self.patch * self.patch

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form (tuples become lists) for checkpoint cards."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> DiTConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown DiTConfig fields {unknown}; valid: {sorted(fields)}")
        kwargs = dict(data)
        if "axes_dims_rope" in kwargs:
            kwargs["axes_dims_rope"] = tuple(kwargs["axes_dims_rope"])  # type: ignore[arg-type]
        return cls(**kwargs)  # type: ignore[arg-type]


_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


CONFIGS: dict[str, DiTConfig] = {
    # 32×32 RGB in 4×4 patches -> 64 tokens of 48 channels. Width 128 (4 heads × 32), 4
    # dual-stream blocks (≈2.6 M parameters with the text encoder): at ~0.33 s per batch-64
    # training step on 2 CPU cores, 15 minutes buy ~2,500 steps, and a short run is limited by
    # steps, not width (width 256 costs 2.7× per step). 4 heads split over SP degree 2 or 4.
    "tiny": DiTConfig(
        name="tiny",
        image_size=32,
        channels=3,
        patch=4,
        num_layers=4,
        num_attention_heads=4,
        attention_head_dim=32,
        joint_attention_dim=128,
        axes_dims_rope=(8, 12, 12),
        text_max_tokens=vocab.MAX_PROMPT_TOKENS,
        text_encoder_layers=1,
        text_encoder_heads=4,
    ),
    # Qwen-Image (20B) as published: 60 blocks, 24 × 128 heads, Qwen2.5-VL text width 3584,
    # 16-channel VAE latents packed 2×2 (64 channels per token); 1024 px -> 128 latent cells.
    # The learning testbed (issue 18): 8×8×4 latents of a frozen tiny AutoencoderKL
    # (autoencoder.py) in 2×2 patches -> 16 tokens of 16 channels, like Qwen-Image's latents in
    # 2×2 patches. The SDE action is 256 values a step instead of the pixel config's 3,072;
    # with 16 + 10 tokens instead of 64 + 10 a step costs ~1/3, so the same minutes buy six
    # blocks instead of four.
    "tiny-latent": DiTConfig(
        name="tiny-latent",
        image_size=8,
        channels=4,
        patch=2,
        num_layers=6,
        num_attention_heads=4,
        attention_head_dim=32,
        joint_attention_dim=128,
        axes_dims_rope=(8, 12, 12),
        text_max_tokens=vocab.MAX_PROMPT_TOKENS,
        text_encoder_layers=1,
        text_encoder_heads=4,
        vae="tiny-scenes",
    ),
    "qwen-image": DiTConfig(
        name="qwen-image",
        image_size=128,
        channels=16,
        patch=2,
        num_layers=60,
        num_attention_heads=24,
        attention_head_dim=128,
        joint_attention_dim=3584,
        axes_dims_rope=(16, 56, 56),
        text_max_tokens=1024,
        dtype="bfloat16",
    ),
}


def get_config(name: str) -> DiTConfig:
    """The named config; unknown names raise ValueError listing the valid ones."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown DiT config {name!r}; valid: {sorted(CONFIGS)}") from None


class TextEmbedding(NamedTuple):
    """What the DiT reads of a prompt: embeddings and a mask (1 = real token)."""

    embeds_BLD: Tensor
    mask_BL: Tensor


class TinyTextEncoder(nn.Module):
    """Learned embeddings over the closed caption vocabulary (no download, trained with the DiT).

    Word + position embeddings, then optional self-attention layers so that "red" can attach
    to the "circle" after it before the DiT's joint attention sees the tokens.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.max_tokens = config.text_max_tokens
        width = config.joint_attention_dim
        self.word_LE = nn.Embedding(len(vocab.VOCAB), width, padding_idx=vocab.PAD_ID)
        self.pos_LE = nn.Parameter(torch.zeros(config.text_max_tokens, width))
        nn.init.normal_(self.word_LE.weight, std=0.5)
        nn.init.normal_(self.pos_LE, std=0.1)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=width,
                nhead=config.text_encoder_heads,
                dim_feedforward=2 * width,
                dropout=0.0,
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.text_encoder_layers)
        )

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(ids_BL, mask_BL) on CPU; PromptError for words outside the vocabulary."""
        if len(prompts) == 0:
            raise ValueError("encode_prompts needs at least one prompt")
        rows = [
            vocab.pad_tokens(
                vocab.tokenize(p, max_tokens=self.max_tokens), max_tokens=self.max_tokens
            )
            for p in prompts
        ]
        ids_BL = torch.tensor([r[0] for r in rows], dtype=torch.long)
        mask_BL = torch.tensor([r[1] for r in rows], dtype=torch.long)
        return ids_BL, mask_BL

    def forward(self, ids_BL: Tensor, mask_BL: Tensor) -> Tensor:
        h_BLD = self.word_LE(ids_BL) + self.pos_LE[: ids_BL.shape[1]]
        pad_BL = mask_BL == 0
        for layer in self.layers:
            h_BLD = layer(h_BLD, src_key_padding_mask=pad_BL)
        return h_BLD * (~pad_BL).unsqueeze(-1).to(h_BLD.dtype)


PromptEncoder = Callable[[Sequence[str]], TextEmbedding]
ImageDecoder = Callable[[Tensor], Tensor]
"""Latents_BCHW -> float images_BCHW in [-1, 1] on the CPU (e.g. qwen_image.QwenVaeDecoder)."""


class VelocityModel(Protocol):
    """What a KL reference must offer: a :class:`DiTPolicy`, or the policy's frozen base
    seen through :class:`~spotlight.models.lora.AdapterFreeReference`."""

    def encode_prompts(self, prompts: Sequence[str]) -> TextEmbedding: ...

    def __call__(self, x_BNC: Tensor, sigma_B: Tensor, text: TextEmbedding) -> Tensor: ...


class DiTPolicy(nn.Module):
    """Velocity model over packed tokens: ``forward(x_BNC, sigma_B, text) -> v_BNC`` (float32)."""

    def __init__(
        self,
        config: DiTConfig,
        transformer: nn.Module,
        *,
        text_encoder: TinyTextEncoder | None = None,
        prompt_encoder: PromptEncoder | None = None,
        image_decoder: ImageDecoder | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.transformer = transformer
        # The tiny encoder is an nn.Module so its weights train and checkpoint with the DiT; a
        # real model's encoder (qwen_image.py) is a frozen callable kept outside the parameters.
        self.text_encoder = text_encoder
        self._prompt_encoder = prompt_encoder
        # A latent-space model's VAE decoder: frozen and outside the parameters for the same
        # reason, so checkpoints, LoRA and optimisers see the transformer only.
        self._image_decoder = image_decoder
        self.lora: LoraSettings | None = None
        """The adapters :func:`~spotlight.models.lora.attach_lora` added (None: full weights)."""

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def encode_prompts(self, prompts: Sequence[str]) -> TextEmbedding:
        """Text embeddings for ``prompts`` (PromptError for out-of-vocabulary tiny prompts)."""
        if self.text_encoder is not None:
            ids_BL, mask_BL = self.text_encoder.tokenize(prompts)
            ids_BL, mask_BL = ids_BL.to(self.device), mask_BL.to(self.device)
            return TextEmbedding(self.text_encoder(ids_BL, mask_BL), mask_BL)
        if self._prompt_encoder is not None:
            return self._prompt_encoder(prompts)
        raise ValueError(
            f"policy {self.config.name!r} has no text encoder: load it with "
            "spotlight.models.qwen_image.load_qwen_image(..., text_encoder=True) or pass "
            "precomputed TextEmbedding values to forward()"
        )

    def forward(self, x_BNC: Tensor, sigma_B: Tensor, text: TextEmbedding) -> Tensor:
        """Velocity ``v = noise − x0`` at noise level σ ∈ [0, 1] (σ = 1 is pure noise).

        Computed on the policy's device, returned on ``x_BNC``'s: the sampler keeps a
        trajectory on the CPU (its noise comes from keyed CPU generators, its snapshots go
        on the wire), so a CUDA policy only moves the latents in and the velocity out."""
        cfg = self.config
        _, n_tokens, chans = x_BNC.shape
        if (n_tokens, chans) != (cfg.num_tokens, cfg.token_dim):
            raise ValueError(
                f"x_BNC has shape {tuple(x_BNC.shape)}; config {cfg.name!r} expects "
                f"(B, {cfg.num_tokens}, {cfg.token_dim})"
            )
        device = self.device
        kwargs = self.transformer_kwargs(x_BNC.to(device), sigma_B.to(device), text)
        out = self.transformer(**kwargs, return_dict=False)[0]
        return out.float().to(x_BNC.device)

    def transformer_kwargs(
        self, x_BNC: Tensor, sigma_B: Tensor, text: TextEmbedding
    ) -> dict[str, Any]:
        """The diffusers transformer call of :meth:`forward` as keyword arguments.

        Separate from ``forward`` so that sequence parallelism
        (:func:`spotlight.models.ulysses.ulysses_forward`) can shard exactly the call the
        single-process policy makes: text batch broadcast, dtype casts and ``img_shapes``.
        """
        batch = x_BNC.shape[0]
        if sigma_B.shape != (batch,):
            raise ValueError(f"sigma_B must have shape ({batch},), got {tuple(sigma_B.shape)}")
        embeds_BLD, mask_BL = text
        if embeds_BLD.shape[0] != batch:
            if embeds_BLD.shape[0] != 1:
                raise ValueError(
                    f"text batch {embeds_BLD.shape[0]} does not match image batch {batch}"
                )
            embeds_BLD = embeds_BLD.expand(batch, -1, -1)
            mask_BL = mask_BL.expand(batch, -1)
        dtype = self.config.torch_dtype
        gh, gw = self.config.grid
        return {
            "hidden_states": x_BNC.to(dtype),
            "encoder_hidden_states": embeds_BLD.to(dtype),
            "encoder_hidden_states_mask": mask_BL,
            "timestep": sigma_B.to(dtype),
            "img_shapes": [(1, gh, gw)] * batch,
        }

    def images(self, x_BNC: Tensor) -> np.ndarray:
        """Final tokens as uint8 B×H×W×3 images, what rewards read.

        A pixel-space policy (``tiny``) unpacks its tokens straight into pixels; a latent-space
        one (``qwen-image``) unpacks VAE latents that its image decoder turns into pixels first.
        """
        images_BCHW = self.unpack(x_BNC)
        if self._image_decoder is not None:
            images_BCHW = self._image_decoder(images_BCHW)
        elif self.config.channels != 3:
            raise ValueError(
                f"policy {self.config.name!r} denoises {self.config.channels}-channel VAE latents and "
                "has no image decoder: build tiny latent configs with build_policy (it attaches "
                "the config's vae) and load qwen-image with "
                "spotlight.models.qwen_image.load_qwen_image(..., vae=True)"
            )
        return images_to_uint8(images_BCHW)

    def pack(self, images_BCHW: Tensor) -> Tensor:
        """Images (float, [-1, 1]) -> tokens x_BNC, channel-major per patch as in Qwen-Image."""
        cfg = self.config
        b, c, h, w = images_BCHW.shape
        if (c, h, w) != (cfg.channels, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"images have shape {tuple(images_BCHW.shape)}; config {cfg.name!r} expects "
                f"(B, {cfg.channels}, {cfg.image_size}, {cfg.image_size})"
            )
        p = cfg.patch
        x = images_BCHW.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def unpack(self, x_BNC: Tensor) -> Tensor:
        """Tokens x_BNC -> images_BCHW (inverse of :meth:`pack`)."""
        cfg = self.config
        b = x_BNC.shape[0]
        gh, gw = cfg.grid
        p, c = cfg.patch, cfg.channels
        x = x_BNC.reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, gh * p, gw * p)


def build_transformer(config: DiTConfig) -> nn.Module:
    """A randomly initialised diffusers transformer of this config's shape (tokens pre-packed)."""
    # cast: mypy does not see diffusers' ModelMixin as an nn.Module.
    return cast(
        nn.Module,
        QwenImageTransformer2DModel(
            patch_size=1,
            in_channels=config.token_dim,
            out_channels=config.token_dim,
            num_layers=config.num_layers,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
            joint_attention_dim=config.joint_attention_dim,
            axes_dims_rope=config.axes_dims_rope,
        ),
    )


def build_policy(config: DiTConfig | str, *, seed: int = 0) -> DiTPolicy:
    """A freshly initialised policy (deterministic in ``seed``); text encoder included for tiny.

    The real ``qwen-image`` model is never built randomly here (20B parameters): load it with
    :func:`spotlight.models.qwen_image.load_qwen_image`.
    """
    cfg = get_config(config) if isinstance(config, str) else config
    if cfg.name == "qwen-image":
        raise ValueError(
            "build_policy does not initialise the 20B qwen-image model at random; use "
            "spotlight.models.qwen_image.load_qwen_image(local_dir)"
        )
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        transformer = build_transformer(cfg)
        text_encoder = TinyTextEncoder(cfg)
    finally:
        torch.random.set_rng_state(gen_state)
    decoder = shared_codec(cfg.vae) if cfg.vae is not None else None
    policy = DiTPolicy(cfg, transformer, text_encoder=text_encoder, image_decoder=decoder)
    return policy.to(cfg.torch_dtype)


def images_to_uint8(images_BCHW: Tensor) -> np.ndarray:
    """[-1, 1] float images -> uint8 B×H×W×3 (what rewards take); values outside are clipped."""
    x = ((images_BCHW.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def uint8_to_images(arr: np.ndarray) -> Tensor:
    """uint8 B×H×W×C -> float images_BCHW in [-1, 1]."""
    a = np.asarray(arr)
    if a.dtype != np.uint8 or a.ndim != 4:
        raise ValueError(f"expected uint8 B×H×W×C array, got {a.dtype} with shape {a.shape}")
    return torch.from_numpy(a.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1.0
