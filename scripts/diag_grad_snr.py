"""How much of a Flow-GRPO gradient is signal? Cosine between gradients of independent batches.

Why: on the tiny base, RL validation rises ~+0.04 within the first ~10 iterations and then
stalls, whatever the learning rate (2e-5 … 1.5e-4, AdamW or SGD). If two batches of the same
prompts with different seeds give gradients that barely agree, each update is mostly noise
and no learning-rate choice fixes that; only more samples per update (or a less noisy
estimator) does. With g_i = s + n_i, E[cos(g_1, g_2)] ≈ |s|² / (|s|² + |n|²/N): the cosine
is the signal fraction of a batch of N samples.

For each sampler setting, ``--repeats`` batches of ``--prompts`` × ``--group`` samples (same
prompts, disjoint seeds) go through the real ``flow_grpo_iteration`` with a zero-lr SGD
optimizer (``spotlight.models.grad_probe``: the weights never move), then the mean and
spread of the pairwise cosines are printed, next to a control reward (mean image brightness:
dense and trivially learnable) with the same sampler. Issue 18's gate before any timed run:
cosine ≥ 0.2 at N = 128 under the training reward (``checks``).

    python scripts/diag_grad_snr.py [--base PATH] [--prompts 16] [--group 8] [--repeats 4]

Writes benchmarks/results/grad_snr.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from spotlight.models import scenes
from spotlight.models.bases import load_checkpoint
from spotlight.models.batches import iteration_prompts
from spotlight.models.flow_grpo import OBJECTIVES, FlowGrpoConfig
from spotlight.models.grad_probe import pairwise_cosines, policy_gradient
from spotlight.models.grpo import GrpoConfig
from spotlight.models.rewards import build_reward
from spotlight.models.sampler import SamplerConfig

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"

SETTINGS: dict[str, tuple[tuple[int, int], float, str, str]] = {
    "sde 0:2 a=1.0 global std (training default)": ((0, 2), 1.0, "flow_grpo", "global"),
    "sde 0:2 a=1.0 group std": ((0, 2), 1.0, "flow_grpo", "group"),
    "sde 0:3 a=0.7 global std": ((0, 3), 0.7, "flow_grpo", "global"),
    "nft, sde 0:2 a=1.0 rollouts": ((0, 2), 1.0, "nft", "global"),
}


def brightness(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """Control reward: mean pixel value in [0, 1]."""
    return np.asarray(images, dtype=np.float32).mean(axis=(1, 2, 3)) / 255.0


def reward_std(reward, policy, prompts, seeds, sampler) -> float:
    from spotlight.models.flow_grpo import decode, generate

    states, _ = generate(policy, prompts, seeds, sampler, micro_batch=64)
    return float(np.std(reward(decode(policy, states), prompts)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=None, help="base checkpoint (default: cached)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS / "grad_snr.json")
    parser.add_argument("--only", nargs="*", choices=OBJECTIVES, help="run these objectives only")
    parser.add_argument("--reward", default="checks", help="training reward (default checks)")
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error("--repeats must be >= 2 (cosines need pairs)")
    if args.base is None:
        from spotlight.models.base_build import ensure_base

        args.base = str(ensure_base(progress=True))
    train, _ = scenes.prompt_split()
    by_kind: dict[str, list[str]] = {}
    for p in train:
        by_kind.setdefault(scenes.prompt_kind_of(p), []).append(p)
    prompts = iteration_prompts(by_kind, 0, 0, args.prompts)
    pairs = [p for p in prompts for _ in range(args.group)]
    n = len(pairs)
    rewards = {args.reward: build_reward(args.reward), "brightness (control)": brightness}
    policy, _ = load_checkpoint(args.base)
    rows = []
    parser_only = set(args.only) if args.only else None
    for name, (window, a, objective, adv_norm) in SETTINGS.items():
        if parser_only is not None and objective not in parser_only:
            continue
        config = FlowGrpoConfig(
            prompts_per_iter=args.prompts,
            group_size=args.group,
            sampler=SamplerConfig(num_steps=6, noise_level=a, sde_window=window),
            grpo=GrpoConfig(clip_range=1e-2, adv_norm=adv_norm),
            objective=objective,  # type: ignore[arg-type]
            micro_batch=32,
        )
        for reward_name, reward in rewards.items():
            t0 = time.perf_counter()
            grads, stds = [], []
            for r in range(args.repeats):
                seeds = [(r + 1) * 1_000_000 + i for i in range(n)]
                grads.append(policy_gradient(policy, pairs, seeds, reward, config))
                stds.append(reward_std(reward, policy, pairs, seeds, config.sampler))
            cos = pairwise_cosines(grads)
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
