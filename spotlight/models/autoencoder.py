"""The tiny testbed's frozen autoencoder: 32×32 RGB scenes ↔ 8×8×4 latents, diffusers' AutoencoderKL.

Why a latent space for a CPU testbed (measured on the pixel testbed, DESIGN.md "second round"):
the Flow-GRPO action is every value the SDE step perturbs, and the policy-gradient signal of a
reward that depends on a few directions of that noise falls roughly as 1/D. Pixels at 32×32
give D = 3,072 per step; 8×8×4 latents give 256, like Qwen-Image whose DiT also denoises VAE
latents. The decoder, trained only to reconstruct the rendered scenes, also draws crisp shapes
from any latent near its training manifold, where the pixel DiT drew blobs.

It is diffusers' ``AutoencoderKL`` at a tiny config, so a latent policy decodes through the same
class and call (``vae.decode(z / scaling_factor + shift_factor)``) as the real model's VAE, and it
saves and loads with ``save_pretrained`` / ``from_pretrained`` from a local directory.

Training (``train_autoencoder``): L1 reconstruction (flat colours on grey: L2 would blur edges)
plus a small KL to a unit Gaussian so the latent space is smooth enough that a DiT's slightly
off-manifold latents still decode to clean shapes; the posterior is *sampled* during training,
which teaches the decoder the same robustness. Afterwards the latent mean and std over the
training pool are written into the config as ``shift_factor`` / ``scaling_factor`` (SD3's
convention), so the DiT sees unit-variance latents.

Shape legend: B batch, C channels, H/W pixels, h/w latent cells.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from diffusers import AutoencoderKL
from torch import Tensor

from spotlight.models import scenes

__all__ = [
    "ASSETS_DIR",
    "AutoencoderRecipe",
    "LatentCodec",
    "build_autoencoder",
    "load_autoencoder",
    "resolve_vae",
    "shared_codec",
    "train_autoencoder",
]

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
"""Weights shipped inside the package (the tiny base and its autoencoder; see assets/README.md)."""

LATENT_CHANNELS = 4
DOWNSAMPLE = 4
"""Pixels per latent cell: 32×32 images ↔ 8×8 latents."""


def build_autoencoder(seed: int = 0) -> AutoencoderKL:
    """A randomly initialised tiny AutoencoderKL (≈0.65 M parameters, deterministic in ``seed``).

    Three encoder blocks (two downsamples: 32 → 8), one ResNet each, 16/32/64 channels and no
    mid-block attention: at 8×8 attention buys nothing measurable and costs 2× per step here.
    """
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(16, 32, 64),
            layers_per_block=1,
            latent_channels=LATENT_CHANNELS,
            norm_num_groups=8,
            sample_size=32,
            mid_block_add_attention=False,
        )
    finally:
        torch.random.set_rng_state(gen_state)


class LatentCodec:
    """Images ↔ normalised latents through a frozen AutoencoderKL (no gradients, eval mode).

    ``encode`` returns the posterior mean, normalised as ``(z − shift) · scale``; ``decode``
    undoes that and runs the decoder, returning float images in [-1, 1] on the CPU, which is
    what :class:`~spotlight.models.dit.DiTPolicy` expects of an image decoder.
    """

    def __init__(self, vae: AutoencoderKL) -> None:
        module: Any = vae  # mypy does not see diffusers' ModelMixin as an nn.Module
        self.vae: Any = module.eval().requires_grad_(False)

    @property
    def scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift(self) -> float:
        return float(self.vae.config.shift_factor or 0.0)

    @torch.no_grad()
    def encode(self, images_BCHW: Tensor) -> Tensor:
        device = next(self.vae.parameters()).device
        z = self.vae.encode(images_BCHW.to(device)).latent_dist.mean
        return ((z - self.shift) * self.scale).float().cpu()

    @torch.no_grad()
    def decode(self, latents_BChw: Tensor) -> Tensor:
        device = next(self.vae.parameters()).device
        z = latents_BChw.to(device, torch.float32) / self.scale + self.shift
        return cast(Tensor, self.vae.decode(z).sample).float().clamp(-1, 1).cpu()

    __call__ = decode

    def save(self, directory: str | Path) -> None:
        self.vae.save_pretrained(str(directory), safe_serialization=True)


def load_autoencoder(directory: str | Path) -> LatentCodec:
    """The codec saved in ``directory`` (diffusers layout), loaded from disk only."""
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no autoencoder at {path} (expected config.json and "
            "diffusion_pytorch_model.safetensors); rebuild the base with `spotlight pretrain`"
        )
    vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
    return LatentCodec(cast(AutoencoderKL, vae))


def resolve_vae(name_or_path: str) -> Path:
    """The directory of a config's ``vae``: a shipped name (``tiny-scenes`` ->
    ``spotlight/assets/vae-tiny-scenes``) or a directory path."""
    shipped = ASSETS_DIR / f"vae-{name_or_path}"
    if "/" not in name_or_path and shipped.is_dir():
        return shipped
    path = Path(name_or_path)
    if path.is_dir():
        return path
    known = sorted(p.name.removeprefix("vae-") for p in ASSETS_DIR.glob("vae-*"))
    raise FileNotFoundError(
        f"autoencoder {name_or_path!r} is neither a shipped one (known: {known or 'none'}) nor a "
        "directory; a fresh clone ships 'tiny-scenes' under spotlight/assets — if it is missing, "
        "restore it with git or rebuild it with `spotlight pretrain` (see spotlight/assets/README.md)"
    )


@functools.lru_cache(maxsize=8)
def _codec_at(path: str) -> LatentCodec:
    return load_autoencoder(path)


def shared_codec(name_or_path: str) -> LatentCodec:
    """One frozen codec per autoencoder per process: every policy of a process (trainer,
    explorer, rollout worker, SP members) decodes through the same module."""
    return _codec_at(str(resolve_vae(name_or_path).resolve()))


@dataclass(frozen=True, kw_only=True)
class AutoencoderRecipe:
    """How the autoencoder is trained; recorded in the base's card."""

    steps: int = 800
    """Optimizer steps (L1 0.063 at 250, 0.028 at 425, still falling: flat shapes are easy)."""
    batch_size: int = 32
    """Scenes per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (cosine decay to 2% of it after a 100-step warm-up)."""
    kl_weight: float = 1e-4
    """Weight of the KL term (mean over latent elements) against the mean L1 reconstruction."""
    pool_size: int = 8192
    """Rendered training-split scenes, reused under fresh posterior samples."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "pool_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"AutoencoderRecipe.{name} must be an integer >= 1, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"AutoencoderRecipe.lr must be finite and > 0, got {self.lr}")
        if self.kl_weight < 0:
            raise ValueError(f"AutoencoderRecipe.kl_weight must be >= 0, got {self.kl_weight}")


@dataclass(frozen=True, kw_only=True)
class AutoencoderResult:
    codec: LatentCodec
    metrics: dict[str, Any] = field(default_factory=dict)


def _cosine_lr(step: int, recipe: AutoencoderRecipe, warmup: int = 100) -> float:
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, recipe.steps - warmup))
    floor = 0.02 * recipe.lr
    return floor + (recipe.lr - floor) * 0.5 * (1 + math.cos(math.pi * t))


def render_training_pool(n: int, seed: int) -> Tensor:
    """``n`` training-split scenes as float images_BCHW in [-1, 1] (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    train_prompts, _ = scenes.prompt_split()
    chunks = []
    done = 0
    while done < n:
        k = min(512, n - done)
        imgs, _ = scenes.random_batch(rng, k, prompts=train_prompts, size=32)
        chunks.append(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0)
        done += k
    return torch.cat(chunks)


def train_autoencoder(
    recipe: AutoencoderRecipe,
    *,
    on_step: Callable[[int, float], None] | None = None,
) -> AutoencoderResult:
    """Train the codec on rendered scenes; ``on_step(step, loss)`` reports progress."""
    t0 = time.perf_counter()
    pool_BCHW = render_training_pool(recipe.pool_size, recipe.seed)
    render_s = time.perf_counter() - t0
    vae: Any = build_autoencoder(recipe.seed)  # Any: as in LatentCodec
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    torch.manual_seed(recipe.seed + 2)  # the posterior's sampling noise
    losses: list[float] = []
    t_train = time.perf_counter()
    for step in range(recipe.steps):
        idx = torch.randint(0, recipe.pool_size, (recipe.batch_size,), generator=gen)
        x_BCHW = pool_BCHW[idx]
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(step, recipe)
        posterior = vae.encode(x_BCHW).latent_dist
        recon_BCHW = vae.decode(posterior.sample()).sample
        l1 = (recon_BCHW - x_BCHW).abs().mean()
        kl = posterior.kl().mean() / (LATENT_CHANNELS * 8 * 8)
        loss = l1 + recipe.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(float(l1.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1])
    train_s = time.perf_counter() - t_train
    codec = LatentCodec(vae)
    # Normalisation from the pool's posterior means (SD3's shift and scaling factors).
    codec.vae.register_to_config(scaling_factor=1.0, shift_factor=0.0)
    z = torch.cat([codec.encode(pool_BCHW[i : i + 1024]) for i in range(0, recipe.pool_size, 1024)])
    codec.vae.register_to_config(scaling_factor=float(1.0 / z.std()), shift_factor=float(z.mean()))
    metrics = {
        "l1_final": float(np.mean(losses[-50:])),
        "render_s": round(render_s, 1),
        "train_s": round(train_s, 1),
        "latent_std_raw": float(z.std()),
        "latent_mean_raw": float(z.mean()),
    }
    return AutoencoderResult(codec=codec, metrics=metrics)
