#!/usr/bin/env python
"""LoRA vs full fine-tuning: what a weight version weighs, what an update costs, what fits.

    python scripts/bench_lora.py            # ~2 minutes on 2 cores
    python scripts/bench_lora.py --quick

Baseline: full fine-tuning (``trainer.lora_rank: 0``, every tensor trains and every version
carries every tensor). Measured on the tiny model, in the same run, interleaved so machine
noise hits both alike (median and min..max over ``--reps``):

* ``version_bytes``: what the trainer publishes per iteration (``tunable_state`` as the
  publisher flattens it) and ``publish_s``, the copy the trainer waits for;
* ``iteration_s``: one Flow-GRPO iteration at `spotlight run`'s defaults (8 prompts x 8
  seeds, 6 steps, SDE window 0:2), rollouts + rewards + update;
* ``optimizer_bytes``: AdamW's state after the update.

For the real 20B Qwen-Image transformer the same counts come from its config built on the
meta device (no weights, nothing timed): parameters, adapter parameters, the bytes of one
version (bf16 weights vs float32 adapters), and the per-rank training state (weights, grads
and AdamW moments; activations excluded). Transfer times there are bytes / an assumed 25 Gb/s
(3.1 GB/s) link to a spot node, labelled as a projection.

Results: benchmarks/results/lora.json (keys ``version_bytes_full``, ``version_bytes_lora``,
``version_ratio``, ``iteration_s_full``, ``iteration_s_lora``, ``iteration_ratio``,
``qwen_image_20b``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
LINK_BYTES_PER_S = 25e9 / 8
RANK, ALPHA = 32, 64  # Flow-GRPO's Qwen-Image recipe; the tiny run uses the same shape


def _summary(xs: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(xs), "min_s": min(xs), "max_s": max(xs)}


def _tiny(lora: bool) -> tuple[Any, Any]:
    from spotlight.models.dit import build_policy
    from spotlight.models.lora import attach_lora
    from spotlight.models.lora_settings import LoraSettings

    policy = build_policy("tiny", seed=0)
    if lora:
        attach_lora(policy, LoraSettings(rank=RANK, alpha=ALPHA))
    policy.train()
    trainable = [p for p in policy.parameters() if p.requires_grad]
    return policy, torch.optim.AdamW(trainable, lr=2e-5)


def _tiny_bench(reps: int) -> dict[str, Any]:
    from spotlight.actors.weights.share import flat_bytes
    from spotlight.config.sections import TrainerSection
    from spotlight.models.flow_grpo import flow_grpo_iteration
    from spotlight.models.lora import tunable_state
    from spotlight.models.rewards import build_reward
    from spotlight.models.scenes import prompt_split

    algo = TrainerSection().algo()
    reward = build_reward("geneval")
    train, _ = prompt_split()
    prompts = [p for p in train[: algo.prompts_per_iter] for _ in range(algo.group_size)]
    runs = {name: _tiny(name == "lora") for name in ("full", "lora")}
    times: dict[str, list[float]] = {"full": [], "lora": []}
    publish: dict[str, list[float]] = {"full": [], "lora": []}
    for rep in range(reps):
        for name, (policy, opt) in runs.items():
            seeds = [1000 * rep + i for i in range(len(prompts))]
            t0 = time.perf_counter()
            flow_grpo_iteration(policy, opt, prompts, seeds, reward, algo, shuffle_seed=rep)
            times[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with torch.no_grad():
                flat_bytes(tunable_state(policy))
            publish[name].append(time.perf_counter() - t0)
    out: dict[str, Any] = {"spread": {}}
    for name, (policy, opt) in runs.items():
        _manifest, buf = flat_bytes(tunable_state(policy))
        out[f"version_bytes_{name}"] = buf.numel()
        out[f"iteration_s_{name}"] = statistics.median(times[name])
        out[f"publish_s_{name}"] = statistics.median(publish[name])
        out[f"optimizer_bytes_{name}"] = sum(
            t.numel() * t.element_size()
            for state in opt.state.values()
            for t in state.values()
            if torch.is_tensor(t)
        )
        out[f"trainable_params_{name}"] = sum(
            p.numel() for p in policy.parameters() if p.requires_grad
        )
        out["spread"][f"iteration_{name}"] = _summary(times[name])
        out["spread"][f"publish_{name}"] = _summary(publish[name])
    out["params"] = sum(p.numel() for p in runs["full"][0].parameters())
    out["version_ratio"] = out["version_bytes_full"] / out["version_bytes_lora"]
    out["iteration_ratio"] = out["iteration_s_lora"] / out["iteration_s_full"]
    out["samples_per_iteration"] = len(prompts)
    return out


def _qwen_image_counts() -> dict[str, Any]:
    """Counts for the real transformer, built on the meta device (no memory, no weights)."""
    from spotlight.models.dit import DiTPolicy, build_transformer, get_config
    from spotlight.models.lora import attach_lora
    from spotlight.models.lora_settings import LoraSettings

    config = get_config("qwen-image")
    with torch.device("meta"):
        policy = DiTPolicy(config, build_transformer(config))
        attach_lora(policy, LoraSettings(rank=RANK, alpha=ALPHA))
    params = sum(p.numel() for p in policy.parameters())
    adapters = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    base = params - adapters
    full_version = 2 * base  # bf16, every tensor
    lora_version = 4 * adapters  # float32 adapters
    return {
        "config": "qwen-image (60 blocks, 24 heads x 128, bf16), LoRA r=32 alpha=64 on the "
        "8 attention projections of both streams",
        "params": base,
        "lora_params": adapters,
        "version_bytes_full": full_version,
        "version_bytes_lora": lora_version,
        "version_ratio": full_version / lora_version,
        "projection_transfer_s_full": full_version / LINK_BYTES_PER_S,
        "projection_transfer_s_lora": lora_version / LINK_BYTES_PER_S,
        "projection_link": "25 Gb/s to each spot node (assumed, not measured)",
        # bf16 weights + bf16 grads + two float32 AdamW moments, per data-parallel rank
        "train_state_bytes_full": base * (2 + 2 + 8),
        # frozen bf16 base + float32 adapters, their float32 grads and moments
        "train_state_bytes_lora": 2 * base + adapters * (4 + 4 + 8),
        "h100_bytes": 80e9,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7, help="iterations per configuration")
    ap.add_argument("--quick", action="store_true", help="2 iterations each (a smoke run)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/lora.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    reps = 2 if args.quick else args.reps
    result = _tiny_bench(reps)
    result["qwen_image_20b"] = q = _qwen_image_counts()
    result["reps"] = reps
    result["lora"] = {"rank": RANK, "alpha": ALPHA}
    result["machine"] = {"platform": platform.platform(), "torch_threads": torch.get_num_threads()}
    result["command"] = "python scripts/bench_lora.py" + (" --quick" if args.quick else "")
    sp = result["spread"]
    print(
        f"tiny ({result['params'] / 1e6:.2f} M params), LoRA r={RANK}: median [min-max] of {reps}"
    )
    print(f"  {'':24s} {'full (baseline)':>22s} {'LoRA':>22s} {'LoRA/full':>10s}")
    print(f"  {'trainable params':24s} {result['trainable_params_full']:>22,d} "
          f"{result['trainable_params_lora']:>22,d} "
          f"{result['trainable_params_lora'] / result['trainable_params_full']:>10.3f}")  # fmt: skip
    print(f"  {'version bytes':24s} {result['version_bytes_full']:>22,d} "
          f"{result['version_bytes_lora']:>22,d} {1 / result['version_ratio']:>10.3f}")  # fmt: skip
    print(f"  {'optimizer state bytes':24s} {result['optimizer_bytes_full']:>22,d} "
          f"{result['optimizer_bytes_lora']:>22,d} "
          f"{result['optimizer_bytes_lora'] / result['optimizer_bytes_full']:>10.3f}")  # fmt: skip
    for label, key in (("iteration s", "iteration"), ("publish copy s", "publish")):
        f, lo = sp[f"{key}_full"], sp[f"{key}_lora"]
        print(f"  {label:24s} {f['median_s']:>9.4f} [{f['min_s']:.4f}-{f['max_s']:.4f}]"
              f" {lo['median_s']:>9.4f} [{lo['min_s']:.4f}-{lo['max_s']:.4f}]"
              f" {lo['median_s'] / f['median_s']:>10.3f}")  # fmt: skip
    print(f"qwen-image 20B ({q['params'] / 1e9:.2f} B params, {q['lora_params'] / 1e6:.1f} M "
          "adapter params), counted on the meta device:")  # fmt: skip
    print(f"  one version: {q['version_bytes_full'] / 1e9:.2f} GB full vs "
          f"{q['version_bytes_lora'] / 1e9:.3f} GB LoRA ({q['version_ratio']:.0f}x smaller); "
          f"projection at 25 Gb/s: {q['projection_transfer_s_full']:.1f} s vs "
          f"{q['projection_transfer_s_lora']:.2f} s per spot node")  # fmt: skip
    print(f"  training state per rank: {q['train_state_bytes_full'] / 1e9:.0f} GB full vs "
          f"{q['train_state_bytes_lora'] / 1e9:.1f} GB LoRA (an H100 has 80 GB)")  # fmt: skip
    out = Path(args.out)
    if args.quick and out == REPO / "benchmarks/results/lora.json":
        out = REPO / "runs/bench_lora_quick.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
