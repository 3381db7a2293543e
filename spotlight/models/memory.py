"""Per-GPU memory of a spot node and of a trainer rank, from the model's shape (arithmetic only).

Used by ``scripts/bench_memory.py`` (the 20B Qwen-Image numbers) and checked by hand in
``tests/models/test_memory.py``. Nothing here allocates or imports torch: parameter counts
come in from the caller (counted on the meta device), activations are derived from the
token count and width with the formulas below, and every assumption is a named field so
it lands in the JSON next to the number it produced.

Units: an *activation unit* is one hidden-state tensor of the tokens one GPU holds,
``S x W`` elements (``S`` tokens, ``W`` model width). Legend: ``N_img = (res / 16)^2``
image tokens (VAE /8, patch 2), ``T`` text tokens, ``B`` samples per forward, ``d`` SP
(Ulysses) degree, ``S = B (N_img + T) / d``, ``S_img = B N_img / d``, ``L`` blocks.

Sampling forward (no grad), the peak is inside one dual-stream block (everything of the
previous block is freed). Tensors alive at each candidate peak, in units:

* attention: block input 1, norm1 + modulated 2 (locals that stay alive), q/k/v per
  stream 3, joint (concatenated) q/k/v 3, attention output 1, RoPE's float32 temporaries
  ``rope_units``; Ulysses adds its all-to-all receive buffers for q/k/v (3) when d > 1;
* MLP of the image stream: block input 1, norm1 + modulated 2, attention output 1, new
  residual 1 (all tokens), plus image tokens only: norm2 + modulated 2, fc1 output 4,
  GELU output 4.

So ``peak = W * max((10 + rope + 3[d>1]) S, 5 S + 10 S_img)`` elements. Attention is a
fused kernel (flash / memory-efficient SDPA): no ``S x S`` score matrix is stored.

Training a LoRA policy with gradient checkpointing per block: the block inputs are kept
(``L`` units) and one block is recomputed with autograd at a time (``train_block_units``,
the tensors autograd saves in one block, see :class:`Assumptions`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "Assumptions",
    "ModelShape",
    "ParamCounts",
    "image_tokens",
    "max_samples_per_forward",
    "sampling_activation_elems",
    "spot_node_gpu_bytes",
    "trainer_activation_elems",
    "trainer_rank_gpu_bytes",
]

GB = 1e9


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """What the activation formulas read from the transformer's config."""

    num_layers: int
    """Dual-stream blocks (L)."""
    width: int
    """Model width W = heads x head_dim."""
    text_tokens: int
    """Text tokens per sample (T): the policy pads prompts to this."""
    latent_factor: int = 8
    """Pixels per VAE latent cell."""
    patch: int = 2
    """Latent cells per token side."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelShape.{name} must be an int >= 1, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ParamCounts:
    """Parameters, counted on the meta device by the caller."""

    base: int
    """Frozen transformer parameters."""
    adapters: int
    """LoRA adapter parameters of one policy (one role)."""


@dataclass(frozen=True, kw_only=True)
class Assumptions:
    """Every knob of the accounting; written to the JSON next to the numbers."""

    base_bytes_per_param: int = 2
    """The frozen base in bf16."""
    adapter_bytes_per_param: int = 4
    """LoRA adapters kept in float32 (what the trainer publishes)."""
    act_bytes_per_elem: int = 2
    """Activations in bf16."""
    samples_per_forward: int = 1
    """B; classifier-free guidance in one batch doubles it."""
    rope_units: int = 2
    """RoPE rotates in float32: the upcast of one bf16 projection is 2 units (1 in fp32)."""
    train_block_units: int = 27
    """Units autograd saves while one checkpointed block is recomputed, per token: norm1
    input 1, modulated 1 (the q/k/v and LoRA input), q/k/v 3, normed q/k 2, roped q/k and
    v 3, attention output 1, gated attention output 1, norm2 input 1, modulated2 1, GELU
    input 4, fc2 input 4, gated MLP output 1 (= 23), plus 4 for the gradients of the
    activations in flight during that block's backward."""
    optimizer_bytes_per_adapter_param: int = 12
    """AdamW on float32 adapters: gradient 4 + two moments 8."""
    overhead_bytes: float = 1.5e9
    """CUDA context, NCCL buffers and allocator slack per GPU (a rule of thumb, not measured)."""


def image_tokens(resolution: int, shape: ModelShape) -> int:
    """Image tokens of one ``resolution``² sample: ``(res / (latent_factor * patch))²``."""
    cell = shape.latent_factor * shape.patch
    if resolution % cell:
        raise ValueError(
            f"resolution {resolution} is not a multiple of {cell} (VAE factor "
            f"{shape.latent_factor} x patch {shape.patch})"
        )
    return (resolution // cell) ** 2


def _tokens(resolution: int, shape: ModelShape, sp: int, batch: int) -> tuple[float, float]:
    n_img = image_tokens(resolution, shape)
    if sp < 1 or (n_img + shape.text_tokens) % sp:
        raise ValueError(
            f"SP degree {sp} must be >= 1 and divide the {n_img} + {shape.text_tokens} tokens"
        )
    return batch * (n_img + shape.text_tokens) / sp, batch * n_img / sp


def sampling_activation_elems(
    resolution: int, shape: ModelShape, *, sp: int = 1, a: Assumptions | None = None
) -> dict[str, float]:
    """Peak activation elements of one sampling forward on one GPU (see the module doc)."""
    a = a or Assumptions()
    s, s_img = _tokens(resolution, shape, sp, a.samples_per_forward)
    w = shape.width
    attn_units = 10 + a.rope_units + (3 if sp > 1 else 0)
    attention = attn_units * s * w
    mlp = (5 * s + 10 * s_img) * w
    return {
        "tokens_per_gpu": s,
        "image_tokens_per_gpu": s_img,
        "attention_peak_elems": attention,
        "mlp_peak_elems": mlp,
        "peak_elems": max(attention, mlp),
    }


def trainer_activation_elems(
    resolution: int, shape: ModelShape, *, checkpointing: bool = True, a: Assumptions | None = None
) -> dict[str, float]:
    """Activation elements of one training micro-batch (forward + backward, SP degree 1)."""
    a = a or Assumptions()
    s, _ = _tokens(resolution, shape, 1, a.samples_per_forward)
    w = shape.width
    if checkpointing:
        kept = shape.num_layers * s * w  # each block's input, the checkpoint boundary
        live = a.train_block_units * s * w  # one block recomputed under autograd
    else:
        kept = shape.num_layers * (a.train_block_units - 4) * s * w
        live = 4 * s * w
    return {"tokens": s, "kept_elems": kept, "recompute_elems": live, "peak_elems": kept + live}


def spot_node_gpu_bytes(
    counts: ParamCounts,
    shape: ModelShape,
    resolution: int,
    *,
    sp: int = 1,
    bases: int = 1,
    adapter_sets: int = 2,
    a: Assumptions | None = None,
) -> dict[str, float]:
    """One GPU of a spot node: ``bases`` frozen copies (Ulysses splits tokens, not weights,
    so every SP member holds a whole base), ``adapter_sets`` LoRA sets (explorer θ_{k-1} and
    rollout θ_k), one sampling forward's activations, overhead."""
    a = a or Assumptions()
    base = bases * counts.base * a.base_bytes_per_param
    adapters = adapter_sets * counts.adapters * a.adapter_bytes_per_param
    acts = sampling_activation_elems(resolution, shape, sp=sp, a=a)["peak_elems"]
    act_bytes = acts * a.act_bytes_per_elem
    total = base + adapters + act_bytes + a.overhead_bytes
    return {
        "base_gb": base / GB,
        "adapters_gb": adapters / GB,
        "activations_gb": act_bytes / GB,
        "overhead_gb": a.overhead_bytes / GB,
        "total_gb": total / GB,
    }


def max_samples_per_forward(
    counts: ParamCounts,
    shape: ModelShape,
    resolution: int,
    gpu_bytes: float,
    *,
    sp: int = 1,
    bases: int = 1,
    adapter_sets: int = 2,
    a: Assumptions | None = None,
) -> int:
    """The largest sampling batch B whose forward fits in ``gpu_bytes`` next to the weights
    (activations grow linearly in B); 0 when the weights alone do not fit."""
    a = a or Assumptions()
    one = dataclasses.replace(a, samples_per_forward=1)
    fixed = spot_node_gpu_bytes(
        counts, shape, resolution, sp=sp, bases=bases, adapter_sets=adapter_sets, a=one
    )
    per_sample = fixed["activations_gb"] * GB
    room = gpu_bytes - (fixed["total_gb"] * GB - per_sample)
    return max(0, int(room // per_sample))


def trainer_rank_gpu_bytes(
    counts: ParamCounts,
    shape: ModelShape,
    resolution: int,
    *,
    checkpointing: bool = True,
    a: Assumptions | None = None,
) -> dict[str, float]:
    """One data-parallel trainer rank: frozen bf16 base, float32 adapters with their
    gradients and AdamW moments, one micro-batch's activations, overhead."""
    a = a or Assumptions()
    base = counts.base * a.base_bytes_per_param
    adapters = counts.adapters * a.adapter_bytes_per_param
    optimizer = counts.adapters * a.optimizer_bytes_per_adapter_param
    acts = trainer_activation_elems(resolution, shape, checkpointing=checkpointing, a=a)
    act_bytes = acts["peak_elems"] * a.act_bytes_per_elem
    total = base + adapters + optimizer + act_bytes + a.overhead_bytes
    return {
        "base_gb": base / GB,
        "adapters_gb": adapters / GB,
        "grads_and_adamw_gb": optimizer / GB,
        "activations_gb": act_bytes / GB,
        "overhead_gb": a.overhead_bytes / GB,
        "total_gb": total / GB,
    }


def assumptions_dict(a: Assumptions) -> dict[str, Any]:
    """The assumptions with their docstrings' values, for the JSON."""
    return asdict(a)
