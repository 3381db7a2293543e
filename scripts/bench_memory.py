#!/usr/bin/env python
"""Per-GPU memory of a Qwen-Image (20B) spot node and trainer rank: an accounting, not a run.

    python scripts/bench_memory.py            # ~1 minute on 2 cores (mostly imports)
    python scripts/bench_memory.py --no-validate

Parameters are counted by building the real config on the meta device (no allocation,
no weights): the transformer, LoRA r=32 alpha=64 on the eight attention projections
(``bench_lora``'s recipe; the repo's ``trainer.lora_rank`` default is 0 = full
fine-tuning, which a 20B trainer rank cannot hold), and the VAE at diffusers' default
``AutoencoderKLQwenImage`` config. Activations come from the formulas in
``spotlight/models/memory.py`` (written into the JSON); ``--validate`` (default) checks
the sampling formula against the peak measured by ``torch.profiler`` on a reduced
config on the CPU (fp32) and reports measured / predicted.

The question it answers (issue 21, section 2): does a spot node fit on an 80 GB GPU
with two bases (explorer + rollout worker, today) or only with one shared base?

Results: ``benchmarks/results/memory.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from spotlight.models.memory import (  # noqa: E402  (the repo on the path first)
    GB,
    Assumptions,
    ModelShape,
    ParamCounts,
    assumptions_dict,
    max_samples_per_forward,
    sampling_activation_elems,
    spot_node_gpu_bytes,
    trainer_rank_gpu_bytes,
)

RANK, ALPHA = 32, 64
RESOLUTIONS = (512, 1024)
SP_DEGREES = (1, 2, 4, 8)
H100_GB = 80.0
TEXT_ENCODER_PARAMS = 8.29e9
"""Qwen2.5-VL-7B as published (not counted here: ``transformers``' model needs its config
files); resident only where prompts are encoded (embeddings can be precomputed)."""


def count_params() -> dict[str, int]:
    """Transformer, adapters and VAE parameters, built on the meta device."""
    import torch
    from diffusers import AutoencoderKLQwenImage

    from spotlight.models.dit import DiTPolicy, build_transformer, get_config
    from spotlight.models.lora import LoraSettings, attach_lora

    config = get_config("qwen-image")
    with torch.device("meta"):
        policy = DiTPolicy(config, build_transformer(config))
        attach_lora(policy, LoraSettings(rank=RANK, alpha=ALPHA))
        vae = AutoencoderKLQwenImage()
    adapters = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    base = sum(p.numel() for p in policy.transformer.parameters()) - adapters
    return {"base": base, "adapters": adapters, "vae": sum(p.numel() for p in vae.parameters())}


class _LiveBytes:
    """Live bytes of the tensor storages created under it, and their peak (CPU included).

    A ``TorchDispatchMode``: every op's output storage that is not one of its inputs' (an
    in-place op or a view of a weight) counts from its creation until the last tensor
    using it dies. Kernel-internal workspace never surfaces as a tensor and is not
    counted; nor are the weights and inputs made before it started.
    """

    def __init__(self) -> None:
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(
                self, func: Any, types: Any, args: Any = (), kwargs: Any = None
            ) -> Any:
                out = func(*args, **(kwargs or {}))
                tracker.seen(out, args, kwargs or {})
                return out

        self.torch = torch
        self.mode = Mode()
        self.live = self.peak = 0
        self.refs: dict[int, int] = {}
        self.size: dict[int, int] = {}

    def _tensors(self, tree: Any) -> list[Any]:
        from torch.utils._pytree import tree_flatten

        return [t for t in tree_flatten(tree)[0] if isinstance(t, self.torch.Tensor)]

    def seen(self, out: Any, args: Any, kwargs: Any) -> None:
        import weakref

        inputs = {t.untyped_storage().data_ptr() for t in self._tensors((args, kwargs))}
        for t in self._tensors(out):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in self.size:
                if ptr in inputs or t.untyped_storage().nbytes() == 0:
                    continue  # in place, or a view of something made before we started
                self.size[ptr] = t.untyped_storage().nbytes()
                self.live += self.size[ptr]
                self.peak = max(self.peak, self.live)
            self.refs[ptr] = self.refs.get(ptr, 0) + 1
            weakref.finalize(t, self._dead, ptr)

    def _dead(self, ptr: int) -> None:
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            del self.refs[ptr]
            self.live -= self.size.pop(ptr)


def validate(heads: int = 2, side: int = 16, text: int = 64, layers: int = 2) -> dict[str, Any]:
    """Measured vs predicted peak of one sampling forward on a reduced config (CPU, fp32).

    Measured: the peak of the live bytes of every tensor the forward created (see
    :class:`_LiveBytes`), i.e. activations on top of the weights and inputs.
    """
    import torch
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    joint = 64
    model = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=layers,
        attention_head_dim=128,
        num_attention_heads=heads,
        joint_attention_dim=joint,
        axes_dims_rope=(16, 56, 56),
    ).eval()
    x = torch.randn(1, side * side, 64)
    ehs = torch.randn(1, text, joint)
    kwargs = {"timestep": torch.full((1,), 0.5), "img_shapes": [(1, side, side)]}
    tracker = _LiveBytes()
    with torch.no_grad(), tracker.mode:
        model(hidden_states=x, encoder_hidden_states=ehs, return_dict=False, **kwargs)
    peak = tracker.peak
    shape = ModelShape(num_layers=layers, width=heads * 128, text_tokens=text, latent_factor=1)
    fp32 = Assumptions(act_bytes_per_elem=4, rope_units=1)
    predicted = sampling_activation_elems(2 * side, shape, a=fp32)["peak_elems"] * 4
    return {
        "config": f"{layers} blocks, {heads} heads x 128 (width {heads * 128}), {side * side} "
        f"image + {text} text tokens, batch 1, float32, CPU, no attention mask (fused SDPA)",
        "method": "peak live bytes of the tensors the forward created (TorchDispatchMode)",
        "measured_peak_bytes": peak,
        "predicted_peak_bytes": predicted,
        "measured_over_predicted": round(peak / predicted, 3),
    }


def spot_table(counts: ParamCounts, shape: ModelShape, a: Assumptions) -> list[dict[str, Any]]:
    rows = []
    for res in RESOLUTIONS:
        for sp in SP_DEGREES:
            for bases in (2, 1):
                gb = spot_node_gpu_bytes(counts, shape, res, sp=sp, bases=bases, a=a)
                rows.append(
                    {
                        "resolution": res,
                        "sp_degree": sp,
                        "bases_per_gpu": bases,
                        **{k: round(v, 3) for k, v in gb.items()},
                        "fits_80gb": gb["total_gb"] <= H100_GB,
                        "max_samples_per_forward_80gb": max_samples_per_forward(
                            counts, shape, res, H100_GB * 1e9, sp=sp, bases=bases, a=a
                        ),
                    }
                )
    return rows


def trainer_table(counts: ParamCounts, shape: ModelShape, a: Assumptions) -> list[dict[str, Any]]:
    rows = []
    for res in RESOLUTIONS:
        for ckpt in (True, False):
            gb = trainer_rank_gpu_bytes(counts, shape, res, checkpointing=ckpt, a=a)
            rows.append(
                {
                    "resolution": res,
                    "gradient_checkpointing": ckpt,
                    **{k: round(v, 3) for k, v in gb.items()},
                    "fits_80gb": gb["total_gb"] <= H100_GB,
                }
            )
    return rows


def print_tables(result: dict[str, Any]) -> None:
    print(f"Qwen-Image transformer {result['params']['base'] / 1e9:.2f} B params "
          f"({result['params']['base'] * 2 / GB:.1f} GB bf16); LoRA r={RANK}: "
          f"{result['params']['adapters'] / 1e6:.1f} M params")  # fmt: skip
    print("\nspot node, per GPU (GB): base + 2 adapter sets + one sampling forward + overhead")
    print(
        f"{'res':>5} {'SP':>3} {'bases':>5} {'base':>7} {'adapt':>6} {'acts':>6} {'total':>7}  fits"
    )
    for r in result["spot_node"]:
        print(f"{r['resolution']:>5} {r['sp_degree']:>3} {r['bases_per_gpu']:>5} "
              f"{r['base_gb']:>7.1f} {r['adapters_gb']:>6.2f} {r['activations_gb']:>6.2f} "
              f"{r['total_gb']:>7.1f}  {'yes' if r['fits_80gb'] else 'NO ':<4s}"
              f"  {r['max_samples_per_forward_80gb']:>9d}")  # fmt: skip
    print("\ntrainer rank (GB): base + adapters + grads/AdamW + activations + overhead")
    for r in result["trainer_rank"]:
        print(f"{r['resolution']:>5} ckpt={'on ' if r['gradient_checkpointing'] else 'off'} "
              f"acts {r['activations_gb']:>6.2f}  total {r['total_gb']:>6.1f}  "
              f"{'fits' if r['fits_80gb'] else 'does NOT fit'} 80 GB")  # fmt: skip
    one = result["single_node"]
    print(f"\nsingle node at 1024², SP 1: today {one['today_two_bases_gb']:.1f} GB "
          f"(explorer + rollout worker, one base each) vs {one['shared_base_gb']:.1f} GB "
          "with one shared base and two adapter sets")  # fmt: skip
    if "validation" in result:
        v = result["validation"]
        print(f"validation ({v['config']}): measured {v['measured_peak_bytes'] / 1e6:.2f} MB, "
              f"predicted {v['predicted_peak_bytes'] / 1e6:.2f} MB, "
              f"ratio {v['measured_over_predicted']}")  # fmt: skip


def node_measured() -> dict[str, Any]:
    """A spot node process's parameter bytes, before (each role builds its policy) and after
    (``NodeBase``: one frozen base, adapters per role), counted by storage on the shipped
    tiny latent base with LoRA: the code path a 20B node runs, at a size this CPU holds."""
    from spotlight.actors.weights.node_base import NodeBase
    from spotlight.actors.weights.policy_spec import PolicySpec
    from spotlight.models.bases import base_config
    from spotlight.models.lora_settings import LoraSettings
    from spotlight.models.shared_base import storage_count
    from spotlight.models.shipped import shipped_base

    base = str(shipped_base())
    spec = PolicySpec(config=base_config(base), lora=LoraSettings(rank=4, alpha=8), base=base)
    before = storage_count(spec.build("cpu"), spec.build("cpu"))
    node = NodeBase(spec, device="cpu")
    after = storage_count(node.policy_for("explorer"), node.policy_for("rollout"))
    return {
        "config": f"shipped tiny latent base {Path(base).name}, LoRA r=4, explorer + rollout "
        "worker in one process, CPU; bytes of distinct parameter/buffer storages",
        "before_param_bytes": before.bytes,
        "after_param_bytes": after.bytes,
        "after_over_before": round(after.bytes / before.bytes, 3),
        "frozen_bytes_before_after": [before.frozen_bytes, after.frozen_bytes],
        "adapter_bytes_before_after": [before.trainable_bytes, after.trainable_bytes],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-validate", action="store_true", help="skip the CPU measurement")
    ap.add_argument(
        "--validate-only",
        action="store_true",
        help="only redo the CPU measurement and update the 'validation' entry of --out",
    )
    ap.add_argument(
        "--node-only",
        action="store_true",
        help="only measure a node process's parameter bytes before/after the shared base and "
        "update the 'node_process' entry of --out",
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/memory.json")
    args = ap.parse_args(argv)
    if args.node_only:
        result = json.loads(args.out.read_text())
        result["node_process"] = node_measured()
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"node_process: {result['node_process']}")
        return 0
    if args.validate_only:
        result = json.loads(args.out.read_text())
        result["validation"] = validate()
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"validation: {result['validation']}")
        return 0
    started = time.time()
    from spotlight.models.dit import get_config

    cfg = get_config("qwen-image")
    shape = ModelShape(
        num_layers=cfg.num_layers,
        width=cfg.num_attention_heads * cfg.attention_head_dim,
        text_tokens=cfg.text_max_tokens,
    )
    a = Assumptions()
    raw = count_params()
    counts = ParamCounts(base=raw["base"], adapters=raw["adapters"])
    spot = spot_table(counts, shape, a)
    pick = {(r["resolution"], r["sp_degree"], r["bases_per_gpu"]): r for r in spot}
    result: dict[str, Any] = {
        "params": raw,
        "lora": {"rank": RANK, "alpha": ALPHA, "targets": "8 attention projections"},
        "shape": {**shape.__dict__, "heads": cfg.num_attention_heads, "head_dim": 128},
        "assumptions": {
            **assumptions_dict(a),
            "tokens": "(res/16)^2 image tokens + text_tokens (the policy pads prompts to "
            f"{cfg.text_max_tokens})",
            "sp": "Ulysses: tokens split over SP members, weights replicated on each",
            "gpu_bytes": H100_GB * 1e9,
            "vae_and_text_encoder": f"not in the totals: VAE {raw['vae'] * 2 / GB:.2f} GB "
            f"bf16 where images are decoded; text encoder ~{TEXT_ENCODER_PARAMS * 2 / GB:.1f} "
            "GB bf16 where prompts are encoded (embeddings can be precomputed)",
        },
        "formulas": {
            "sampling_peak_elems": "W * max((10 + rope_units + 3[d>1]) * S, 5*S + 10*S_img); "
            "S = B (N_img + T) / d, S_img = B N_img / d",
            "trainer_peak_elems": "checkpointing: (L + train_block_units) * S * W; "
            "without: L * (train_block_units - 4) * S * W + 4 * S * W",
            "bytes": "elems * act_bytes_per_elem; base params * 2; adapters * 4 (+12 on a "
            "trainer rank for the gradient and AdamW moments)",
        },
        "spot_node": spot,
        "trainer_rank": trainer_table(counts, shape, a),
        "single_node": {
            "today_two_bases_gb": pick[(1024, 1, 2)]["total_gb"],
            "shared_base_gb": pick[(1024, 1, 1)]["total_gb"],
            "note": "one GPU hosting the explorer and the rollout worker (SP 1, 1024²); "
            "nodes/spot.py holds one base since issue 21 section 2 (NodeBase); node_process "
            "measures the same change on the tiny base",
        },
        "node_process": node_measured(),
    }
    if not args.no_validate:
        result["validation"] = validate()
    result["command"] = "python scripts/bench_memory.py" + (
        " --no-validate" if args.no_validate else ""
    )
    result["machine"] = {"platform": platform.platform(), "python": platform.python_version()}
    result["duration_s"] = round(time.time() - started, 1)
    print_tables(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
