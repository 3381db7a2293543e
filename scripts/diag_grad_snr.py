"""How much of a Flow-GRPO gradient is signal? Cosine between gradients of independent batches.

Why: on the tiny base, RL validation rises ~+0.04 within the first ~10 iterations and then
stalls, whatever the learning rate (2e-5 … 1.5e-4, AdamW or SGD). If two batches of the same
prompts with different seeds give gradients that barely agree, each update is mostly noise
and no learning-rate choice fixes that; only more samples per update (or a less noisy
estimator) does. With g_i = s + n_i, E[cos(g_1, g_2)] ≈ |s|² / (|s|² + |n|²/N): the cosine
is the signal fraction of a batch of N samples.

For each sampler setting, ``--repeats`` batches of ``--prompts`` × ``--group`` samples (same
prompts, disjoint seeds) go through the real ``flow_grpo_iteration`` with a zero-lr SGD
optimizer (the weights never move; the accumulated gradient is read back), then the mean and
spread of the pairwise cosines are printed, next to a control reward (mean image brightness:
dense and trivially learnable) with the same sampler.

    python scripts/diag_grad_snr.py [--base PATH] [--prompts 16] [--group 8] [--repeats 4]

Writes benchmarks/results/grad_snr.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from spotlight.models import scenes
from spotlight.models.bases import load_checkpoint
from spotlight.models.batches import iteration_prompts
from spotlight.models.flow_grpo import OBJECTIVES, FlowGrpoConfig, flow_grpo_iteration
from spotlight.models.grpo import GrpoConfig
from spotlight.models.rewards import build_reward
from spotlight.models.sampler import SamplerConfig

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"

SETTINGS: dict[str, tuple[tuple[int, int], float, str]] = {
    "sde 0:2 a=1.0 (bench default)": ((0, 2), 1.0, "flow_grpo"),
    "sde 0:3 a=0.7": ((0, 3), 0.7, "flow_grpo"),
    "sde 0:6 a=0.7 (all steps)": ((0, 6), 0.7, "flow_grpo"),
    "nft, sde 0:2 a=1.0 rollouts": ((0, 2), 1.0, "nft"),
}


def brightness(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """Control reward: mean pixel value in [0, 1]."""
    return np.asarray(images, dtype=np.float32).mean(axis=(1, 2, 3)) / 255.0


def gradient(base: str, config: FlowGrpoConfig, prompts: list[str], seeds: list[int], reward):
    policy, _ = load_checkpoint(base)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
    stats, _ = flow_grpo_iteration(policy, optimizer, prompts, seeds, reward, config)
    grad = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
    return grad, stats.reward.std


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=None, help="base checkpoint (default: cached)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS / "grad_snr.json")
    parser.add_argument("--only", nargs="*", choices=OBJECTIVES, help="run these objectives only")
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error("--repeats must be >= 2 (cosines need pairs)")
    if args.base is None:
        from spotlight.models.base import ensure_base

        args.base = str(ensure_base(progress=True))
    train, _ = scenes.prompt_split()
    by_kind: dict[str, list[str]] = {}
    for p in train:
        by_kind.setdefault(scenes.prompt_kind_of(p), []).append(p)
    prompts = iteration_prompts(by_kind, 0, 0, args.prompts)
    pairs = [p for p in prompts for _ in range(args.group)]
    n = len(pairs)
    rewards = {"geneval": build_reward("geneval"), "brightness (control)": brightness}
    rows = []
    parser_only = set(args.only) if args.only else None
    for name, (window, a, objective) in SETTINGS.items():
        if parser_only is not None and objective not in parser_only:
            continue
        config = FlowGrpoConfig(
            prompts_per_iter=args.prompts,
            group_size=args.group,
            sampler=SamplerConfig(num_steps=6, noise_level=a, sde_window=window),
            grpo=GrpoConfig(clip_range=1e-2),
            objective=objective,  # type: ignore[arg-type]
            micro_batch=32,
            chunks_per_update=-(-n // 32),
            max_grad_norm=None,
        )
        for reward_name, reward in rewards.items():
            t0 = time.perf_counter()
            grads, stds = [], []
            for r in range(args.repeats):
                seeds = [(r + 1) * 1_000_000 + i for i in range(n)]
                g, s = gradient(args.base, config, pairs, seeds, reward)
                grads.append(g)
                stds.append(s)
            cos = [
                float(torch.nn.functional.cosine_similarity(grads[i], grads[j], dim=0))
                for i, j in itertools.combinations(range(args.repeats), 2)
            ]
            row = {
                "setting": name,
                "reward": reward_name,
                "samples_per_batch": n,
                "cos_mean": float(np.mean(cos)),
                "cos_std": float(np.std(cos)),
                "reward_std": float(np.mean(stds)),
                "seconds": time.perf_counter() - t0,
            }
            rows.append(row)
            print(
                f"{name:32s} {reward_name:22s} cos {row['cos_mean']:+.3f} ± {row['cos_std']:.3f}"
                f"  (N={n}, reward std {row['reward_std']:.3f})",
                flush=True,
            )
    result = {"base": args.base, "rows": rows, "repeats": args.repeats}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
