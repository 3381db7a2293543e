"""Per-step cost presets: what one denoising step, one training step and one restart cost.

Three presets (every number's source is in ``docs/projection.md``, "Cost presets"):

``qwen-image-h100-512`` / ``qwen-image-h100-1024``
    Qwen-Image (20.4 B transformer) on H100 SXM, derived from FLOPs, not measured (no GPU
    was available): :func:`qwen_image_step_s` counts the transformer's matmul FLOPs per
    token (each token passes one of the two MMDiT streams: 60 blocks x 12 x 3072^2
    weights) plus joint attention (4 S^2 W per block), doubles them for classifier-free
    guidance (Flow-GRPO's Qwen-Image config samples at guidance 4), and divides by the H100's
    dense bf16 peak (989 TFLOP/s) times an assumed model-FLOP utilisation of 40 %. A trained
    sample-step costs 3 forwards (LoRA with activation checkpointing: forward, the
    recomputed forward, and a backward that needs activation gradients only). The batch
    shape (32 prompts x 16 samples, 10 steps, an SDE window of 2 trained steps) is Flow-GRPO's
    ``pickscore_qwenimage`` config. Weight versions: 40.9 GB full, 0.38 GB LoRA r=32
    (``benchmarks/results/lora.json``).
``tiny-cpu``
    The tiny testbed model on this 2-core machine, measured: sample-step and update from
    ``e2e.json`` (the on-demand run's trainer metrics), launch/re-form/join/notice from
    ``elastic_sp.json``, version sizes from ``lora.json``. ``tests/actors/test_projection_costs.py``
    checks these numbers against those files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = ["COST_PRESETS", "CostPreset", "cost_preset", "qwen_image_step_s"]

H100_BF16_DENSE_FLOPS = 989e12
"""NVIDIA H100 SXM datasheet: 989 TFLOP/s dense bf16 (1,979 with 2:4 sparsity)."""
ASSUMED_MFU = 0.40
"""Assumed model-FLOP utilisation of a bf16 DiT forward at these sequence lengths."""
QWEN_IMAGE = {"layers": 60, "width": 3072, "transformer_bytes": 40_860_802_176}
QWEN_TEXT_TOKENS = 128
"""Prompt tokens per sample (GenEval/OCR prompts are short; padded to 128)."""
QWEN_LORA_BYTES = 377_487_360  # lora.json qwen_image_20b.version_bytes_lora (r=32)
LINK_BYTES_PER_S = 25e9 / 8  # 25 Gb/s, lora.json's assumed link to a spot node


def qwen_image_step_s(resolution: int, *, cfg_forwards: int = 2, mfu: float = ASSUMED_MFU) -> float:
    """Seconds of one H100 for one denoising step of one sample (all CFG forwards).

    Image tokens: (resolution / 16)^2 (VAE /8, patch 2); text tokens: QWEN_TEXT_TOKENS.
    """
    if resolution % 16:
        raise ValueError(f"resolution {resolution} is not a multiple of 16 (VAE 8 x patch 2)")
    layers, width = QWEN_IMAGE["layers"], QWEN_IMAGE["width"]
    seq = (resolution // 16) ** 2 + QWEN_TEXT_TOKENS
    linear = 2 * seq * layers * 12 * width**2
    attention = 4 * seq**2 * width * layers
    return cfg_forwards * (linear + attention) / (H100_BF16_DENSE_FLOPS * mfu)


@dataclass(frozen=True, kw_only=True)
class CostPreset:
    """What the work of one iteration and one (re)start costs on one GPU kind."""

    name: str
    gpu: str
    """The GPU the numbers are for; a trace of other GPUs is used as an availability process."""
    sample_step_s: float
    """GPU-seconds of one denoising step of one sample, every CFG forward included."""
    train_sample_step_s: float
    """GPU-seconds of training on one trained step of one sample (forward + backward)."""
    samples_per_iter: int
    """Samples rolled out per iteration (prompts x group size)."""
    denoise_steps: int
    """Denoising steps per sample."""
    train_steps: int
    """Trained steps per sample (the SDE window)."""
    sp_degree: int
    """GPUs per sequence-parallel sampling group."""
    process_launch_s: float
    """A (re)started worker: process start, imports, device init, model build."""
    group_init_s: float
    """Restart only: the group's rendezvous and NCCL init before the first step."""
    base_load_s: float
    """Loading the full base weights onto a fresh (or restarted) worker."""
    sp_reform_s: float
    """Spotlight: survivors re-form a smaller SP group (weights stay in place)."""
    sp_join_s: float
    """Spotlight: a ready worker joins an SP group."""
    version_bytes_full: int
    """Bytes of one full weight version (what a restart-style worker pulls per iteration)."""
    version_bytes_lora: int
    """Bytes of one LoRA adapter version (what Spotlight's workers pull per iteration)."""
    sources: tuple[str, ...] = ()
    """Where the numbers come from (one line each)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("name", "gpu", "sources"):
                continue
            if isinstance(v, int) and f.name in _INT_FIELDS:
                if v < 1:
                    raise ValueError(f"cost preset {self.name}: {f.name} must be >= 1, got {v}")
            elif not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"cost preset {self.name}: {f.name} must be >= 0, got {v!r}")
        if self.sample_step_s <= 0:
            raise ValueError(f"cost preset {self.name}: sample_step_s must be > 0")
        if self.train_steps > self.denoise_steps:
            raise ValueError(
                f"cost preset {self.name}: train_steps {self.train_steps} > denoise_steps "
                f"{self.denoise_steps}"
            )

    @property
    def rollout_gpu_s(self) -> float:
        """GPU-seconds of one iteration's rollouts."""
        return self.samples_per_iter * self.denoise_steps * self.sample_step_s

    @property
    def train_gpu_s(self) -> float:
        """GPU-seconds of one iteration's update."""
        return self.samples_per_iter * self.train_steps * self.train_sample_step_s


_INT_FIELDS = {"samples_per_iter", "denoise_steps", "train_steps", "sp_degree"}


def _qwen(resolution: int, sp_degree: int) -> CostPreset:
    step = qwen_image_step_s(resolution)
    return CostPreset(
        name=f"qwen-image-h100-{resolution}",
        gpu="H100-80GB",
        sample_step_s=step,
        train_sample_step_s=3 * step,
        samples_per_iter=32 * 16,
        denoise_steps=10,
        train_steps=2,
        sp_degree=sp_degree,
        process_launch_s=20.0,
        group_init_s=30.0,
        base_load_s=QWEN_IMAGE["transformer_bytes"] / LINK_BYTES_PER_S,
        sp_reform_s=0.342,
        sp_join_s=0.141,
        version_bytes_full=QWEN_IMAGE["transformer_bytes"],
        version_bytes_lora=QWEN_LORA_BYTES,
        sources=(
            f"sample step: FLOPs / (989 TFLOP/s x MFU {ASSUMED_MFU}), CFG x2, "
            f"{QWEN_TEXT_TOKENS} text tokens",
            "train step: 3 forwards (LoRA + activation checkpointing)",
            "batch: flow_grpo pickscore_qwenimage (32 prompts x 16, 10 steps, window 2)",
            "launch 20 s: assumed; group init 30 s: TorchElastic's rendezvous last_call_timeout",
            "base load: 40.9 GB over a 25 Gb/s link; re-form/join: elastic_sp.json p50",
        ),
    )


COST_PRESETS: dict[str, CostPreset] = {
    "qwen-image-h100-512": _qwen(512, sp_degree=1),
    "qwen-image-h100-1024": _qwen(1024, sp_degree=2),
    "tiny-cpu": CostPreset(
        name="tiny-cpu",
        gpu="cpu",
        sample_step_s=0.002606000937500852,
        train_sample_step_s=1.0507859819999794 / (64 * 2),
        samples_per_iter=64,
        denoise_steps=6,
        train_steps=2,
        sp_degree=1,
        process_launch_s=37.05259990692139,
        group_init_s=0.08766460418701172,
        base_load_s=0.0,
        sp_reform_s=0.34215283393859863,
        sp_join_s=0.14140725135803223,
        version_bytes_full=10_492_608,
        version_bytes_lora=1_048_576,
        sources=(
            "e2e.json projection.measured_wall_s (step_gpu_s, train_step_s / 128)",
            "elastic_sp.json: restart launch_and_load / form_and_step, reform/join p50",
            "lora.json: version_bytes_full / version_bytes_lora",
        ),
    ),
}


def cost_preset(name: str) -> CostPreset:
    """The named preset; an unknown name lists the valid ones."""
    try:
        return COST_PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown cost preset {name!r}; valid presets: {', '.join(sorted(COST_PRESETS))}"
        ) from None
