"""The memory accounting's arithmetic on a config small enough to check by hand."""

from __future__ import annotations

import pytest

from spotlight.models.memory import (
    GB,
    Assumptions,
    ModelShape,
    ParamCounts,
    image_tokens,
    max_samples_per_forward,
    sampling_activation_elems,
    spot_node_gpu_bytes,
    trainer_activation_elems,
    trainer_rank_gpu_bytes,
)

# 2 blocks, width 8, 4 text tokens; 8 px with no VAE (factor 1) and patch 2: 16 image tokens,
# so S = 20 tokens, S_img = 16 at SP degree 1.
SHAPE = ModelShape(num_layers=2, width=8, text_tokens=4, latent_factor=1)
NO_OVERHEAD = Assumptions(overhead_bytes=0)


def test_image_tokens() -> None:
    real = ModelShape(num_layers=60, width=3072, text_tokens=1024)
    assert image_tokens(512, real) == 1024 and image_tokens(1024, real) == 4096
    assert image_tokens(8, SHAPE) == 16
    with pytest.raises(ValueError, match="not a multiple of 16"):
        image_tokens(500, real)


def test_sampling_peak_by_hand() -> None:
    # attention (10 + rope 2) * 20 * 8 = 1920; MLP (5 * 20 + 10 * 16) * 8 = 2080: MLP wins
    out = sampling_activation_elems(8, SHAPE)
    assert (out["attention_peak_elems"], out["mlp_peak_elems"]) == (1920, 2080)
    assert out["peak_elems"] == 2080
    # SP 2: S = 10, S_img = 8; attention gains the all-to-all buffers: 15 * 10 * 8 = 1200
    # against MLP (50 + 80) * 8 = 1040
    out = sampling_activation_elems(8, SHAPE, sp=2)
    assert (out["tokens_per_gpu"], out["peak_elems"]) == (10, 1200)
    with pytest.raises(ValueError, match="SP degree 3 must be >= 1 and divide the 16 \\+ 4"):
        sampling_activation_elems(8, SHAPE, sp=3)


def test_trainer_activations_by_hand() -> None:
    # checkpointing: 2 block inputs (2 * 20 * 8 = 320) + one block recomputed (27 * 160 = 4320)
    out = trainer_activation_elems(8, SHAPE)
    assert (out["kept_elems"], out["recompute_elems"], out["peak_elems"]) == (320, 4320, 4640)
    # without: every block's 23 saved units (2 * 23 * 160 = 7360) + 4 in flight (640)
    assert trainer_activation_elems(8, SHAPE, checkpointing=False)["peak_elems"] == 8000


def test_spot_node_and_trainer_rank_bytes_by_hand() -> None:
    counts = ParamCounts(base=1000, adapters=10)
    # two bf16 bases 4000 B + two float32 adapter sets 80 B + 2080 bf16 activations 4160 B
    two = spot_node_gpu_bytes(counts, SHAPE, 8, bases=2, a=NO_OVERHEAD)
    assert two["total_gb"] * GB == pytest.approx(8240)
    one = spot_node_gpu_bytes(counts, SHAPE, 8, bases=1, a=NO_OVERHEAD)
    assert (two["total_gb"] - one["total_gb"]) * GB == pytest.approx(2000)  # one base fewer
    # base 2000 + adapters 40 + grads/AdamW 120 + activations 4640 * 2
    rank = trainer_rank_gpu_bytes(counts, SHAPE, 8, a=NO_OVERHEAD)
    assert rank["total_gb"] * GB == pytest.approx(11440)
    assert rank["grads_and_adamw_gb"] * GB == pytest.approx(120)
    assert spot_node_gpu_bytes(counts, SHAPE, 8)["overhead_gb"] == pytest.approx(1.5)


def test_shape_is_validated() -> None:
    with pytest.raises(ValueError, match=r"ModelShape\.width must be an int >= 1"):
        ModelShape(num_layers=2, width=0, text_tokens=4)


def test_max_batch_by_hand() -> None:
    counts = ParamCounts(base=1000, adapters=10)
    # one base 2000 B + adapters 80 B = 2080 B fixed; 4160 B of activations per sample
    assert max_samples_per_forward(counts, SHAPE, 8, 2080 + 3 * 4160, a=NO_OVERHEAD) == 3
    assert max_samples_per_forward(counts, SHAPE, 8, 2080 + 3 * 4160 - 1, a=NO_OVERHEAD) == 2
    assert max_samples_per_forward(counts, SHAPE, 8, 1000, a=NO_OVERHEAD) == 0  # weights too big
