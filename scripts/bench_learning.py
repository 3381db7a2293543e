"""Does the testbed learn? The shipped base → RL for a fixed wall-clock budget on this CPU.

Writes ``benchmarks/results/learning.json`` (``--quick``: ``learning_quick.json``) with issue
18's keys: ``base_val_score``, ``final_val_score``, ``val_ci95`` (half-width of the final
score's 95% t-interval over validation seeds), ``base_strict_acc``, ``final_strict_acc``
(all checks passed), ``iterations``, ``wall_s``, ``zero_std_group_frac`` (training groups
whose rewards were all equal) and ``grad_cosine_n128`` (the cosine between the gradients of
two independent 128-sample batches at the base: the gradient's signal fraction), plus the
validation curve and a grid of base-vs-trained samples (same prompts, same seeds) as PNGs.

Target: final − base ≥ 0.10 and > 3 × ``val_ci95``; strict accuracy up too.

The run is the system's own trainer loop (``spotlight train --local``), random seeds, the
``checks`` reward (GenEval-style binary checks, averaged), 600 s of RL. Base and final are
scored again after the run on a larger fixed validation set (64 held-out prompts × 32 seeds,
ODE) than the loop's periodic one, so the two numbers compared share prompts and seeds.

``--train-prompts validation`` is the overfit control (iterations draw the validation prompts
themselves, other seeds): it shows whether the update can climb at all; it never counts as
the target. ``--objective flow_grpo`` swaps in Flow-GRPO's clipped likelihood-ratio loss;
``--lr``, ``--prompts-per-iter``, ``--kl-beta`` and ``--iterations`` (a fixed iteration budget
instead of wall time: pilots on a loaded box) are the pilots' knobs.

Settings (the defaults below) and why (pilots in the closing notes of issue 18):
- latent testbed, 6 denoising steps, SDE noise 1.0 on the first 2 (Flow-GRPO-Fast style:
  the early steps decide count, colour and layout, what the checks score);
- DiffusionNFT's objective (models/nft.py). On the same rollouts, 120 iterations each:
  Flow-GRPO (lr 2e-4) +0.041, NFT at 64 samples/iteration +0.019 (it climbed to +0.08 on the
  periodic validation, then diverged at iteration ~105), NFT at 128 samples/iteration +0.160;
- 16 prompts × 8 seeds sampled per iteration, trained as two optimizer steps of 64 (the
  rollout's chunks; Flow-GRPO's configs also take several steps per sampling round), lr 1e-4
  (3e-4 diverged within 60 iterations);
- advantages centred per prompt and scaled by the batch's std (``adv_norm=global``, Flow-GRPO's
  configs): with binary checks a group whose rewards differ by one check would otherwise be
  inflated to ±1 (Pref-GRPO's "illusory advantages").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from spotlight.actors.trainer.loop import TRAIN_PROMPTS
from spotlight.commands.train import RunSettings, train_local
from spotlight.models import scenes
from spotlight.models.base_eval import VAL_SEEDS, testbed_diagnostics, validation_prompts
from spotlight.models.bases import load_checkpoint
from spotlight.models.batches import iteration_prompts, iteration_seeds, validation_set
from spotlight.models.flow_grpo import OBJECTIVES, FlowGrpoConfig
from spotlight.models.grad_probe import pairwise_cosines, policy_gradient
from spotlight.models.grpo import GrpoConfig
from spotlight.models.rewards import build_reward
from spotlight.models.sampler import SamplerConfig

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
REWARD = "checks"
LR = 1e-4
OBJECTIVE = "nft"
PROMPTS_PER_ITER = 16
BUDGET_S = 600.0
CLIP_RANGE = 1e-2
SCORE_SEEDS = tuple(range(VAL_SEEDS[0], VAL_SEEDS[0] + 32))
"""Seeds of the before/after score: base_eval.VAL_SEEDS (the first 8) extended to 32, so the
half-width over seeds (t with 31 d.o.f.) resolves a gain of 0.1 with room to spare."""


def default_settings(
    *,
    budget_s: float,
    base: str | None,
    quick: bool,
    objective: str = OBJECTIVE,
    lr: float | None = None,
    train_prompts: str = "train",
    iterations: int | None = None,
    prompts_per_iter: int = PROMPTS_PER_ITER,
    inner_epochs: int = 1,
    kl_beta: float = 0.0,
) -> RunSettings:
    sampler = SamplerConfig(num_steps=6, noise_level=1.0, sde_window=(0, 2))
    if quick:
        algo = FlowGrpoConfig(
            prompts_per_iter=2,
            group_size=4,
            sampler=sampler,
            grpo=GrpoConfig(clip_range=1e-2, adv_norm="global"),
            lr=3e-4,
            micro_batch=8,
        )
        return RunSettings(
            algo=algo,
            iterations=2,
            time_budget_s=budget_s,
            val_every=2,
            val_per_kind=1,
            val_seeds=2,
            ckpt_every=2,
            base=base,
            reward=REWARD,
            train_prompts=train_prompts,
        )
    algo = FlowGrpoConfig(
        prompts_per_iter=prompts_per_iter,
        group_size=8,
        sampler=sampler,
        grpo=GrpoConfig(clip_range=CLIP_RANGE, adv_norm="global", kl_beta=kl_beta),
        lr=lr if lr is not None else LR,
        micro_batch=64,
        inner_epochs=inner_epochs,
        objective=objective,  # type: ignore[arg-type]
    )
    return RunSettings(
        algo=algo,
        iterations=iterations or 100_000,  # without --iterations the time budget decides
        time_budget_s=None if iterations else budget_s,
        val_every=10,
        val_per_kind=6,
        val_seeds=8,
        ckpt_every=10,
        base=base,
        reward=REWARD,
        train_prompts=train_prompts,
    )


def score(path: Path, quick: bool) -> dict:
    """Validation score, its 95% half-width over seeds, and strict accuracy of a checkpoint."""
    from scipy import stats as sstats

    policy, _ = load_checkpoint(path)
    prompts = validation_prompts(8 if quick else 64)
    seeds = SCORE_SEEDS[: 2 if quick else len(SCORE_SEEDS)]
    diag = testbed_diagnostics(policy, prompts=prompts, seeds=seeds)
    per_seed = np.array(diag.pop("per_seed_scores"))
    half = float(
        sstats.t.ppf(0.975, len(per_seed) - 1) * per_seed.std(ddof=1) / np.sqrt(len(per_seed))
    )
    return {**diag, "ci95": half}


def grad_cosine_n128(base: Path, settings: RunSettings, repeats: int) -> float:
    """Mean pairwise cosine of 128-sample gradients (16 prompts × 8 seeds) at the base."""
    policy, _ = load_checkpoint(base)
    by_kind: dict[str, list[str]] = {}
    for p in scenes.prompt_split()[0]:
        by_kind.setdefault(scenes.prompt_kind_of(p), []).append(p)
    prompts = [p for p in iteration_prompts(by_kind, 5, 0, 16) for _ in range(8)]
    reward = build_reward(settings.reward)
    grads = [
        policy_gradient(policy, prompts, iteration_seeds(50 + r, 0, 128), reward, settings.algo)
        for r in range(repeats)
    ]
    return float(np.mean(pairwise_cosines(grads)))


def sample_grid(base: Path, trained: Path, settings: RunSettings, out: Path) -> None:
    """Base (top) vs trained (bottom) samples: same held-out prompts, same seeds, ODE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spotlight.models import scenes
    from spotlight.models.bases import load_checkpoint
    from spotlight.models.flow_grpo import decode, generate

    prompts, _ = validation_set(scenes.prompt_split()[1], 2, 1)
    prompts = prompts[:8]
    seeds = iteration_seeds(12345, 0, len(prompts))
    rows = []
    for path in (base, trained):
        policy, _ = load_checkpoint(path)
        states, _ = generate(
            policy, prompts, seeds, settings.algo.sampler, micro_batch=64, mode="ode"
        )
        rows.append(decode(policy, states))
    fig, axes = plt.subplots(2, len(prompts), figsize=(1.6 * len(prompts), 3.8), dpi=120)
    for r, (label, imgs) in enumerate(zip(("base", "RL"), rows, strict=True)):
        for c, prompt in enumerate(prompts):
            ax = axes[r, c]
            ax.imshow(imgs[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(prompt, fontsize=5)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 60 s, cached base)")
    parser.add_argument("--budget-s", type=float, default=None, help="RL wall-clock budget")
    parser.add_argument("--base", type=str, default=None, help="base checkpoint (default: cached)")
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--objective", choices=OBJECTIVES, default=OBJECTIVE)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="a fixed iteration budget instead of --budget-s (pilots on a shared, loaded box)",
    )
    parser.add_argument(
        "--no-probe", action="store_true", help="skip grad_cosine_n128 (pilots; recorded as null)"
    )
    parser.add_argument(
        "--prompts-per-iter", type=int, default=PROMPTS_PER_ITER, help="groups per iteration (×8)"
    )
    parser.add_argument("--kl-beta", type=float, default=0.0, help="penalty towards the base")
    parser.add_argument("--inner-epochs", type=int, default=1, help="passes over each batch")
    parser.add_argument(
        "--train-prompts",
        choices=TRAIN_PROMPTS,
        default="train",
        help="'validation' = the overfit control (train on the validation prompts; no target)",
    )
    args = parser.parse_args(argv)

    budget = args.budget_s if args.budget_s is not None else (20.0 if args.quick else BUDGET_S)
    settings = default_settings(
        budget_s=budget,
        base=args.base,
        quick=args.quick,
        objective=args.objective,
        lr=args.lr,
        train_prompts=args.train_prompts,
        iterations=args.iterations,
        prompts_per_iter=args.prompts_per_iter,
        inner_epochs=args.inner_epochs,
        kl_beta=args.kl_beta,
    )
    name = "learning_quick" if args.quick else "learning"
    if args.objective != OBJECTIVE:
        name += f"_{args.objective}"  # learning_flow_grpo.json beside learning.json
    control = args.train_prompts != "train"
    if control:
        name += "_overfit"
    out = args.out or RESULTS / f"{name}.json"
    run_dir = args.run_dir or Path("runs") / f"bench-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if settings.base is None:
        from spotlight.models.base_build import ensure_base

        base_path = ensure_base(progress=True)
    else:
        base_path = Path(settings.base)
    settings = RunSettings(**{**settings.__dict__, "base": str(base_path)})

    cosine = (
        None if args.no_probe else grad_cosine_n128(base_path, settings, 2 if args.quick else 4)
    )
    if cosine is not None:
        print(f"gradient cosine at N=128 (base): {cosine:+.3f}", flush=True)
    t0 = time.perf_counter()
    summary = train_local(settings, run_dir, progress=True)
    wall = time.perf_counter() - t0
    base_eval, final_eval = score(base_path, args.quick), score(run_dir / "checkpoint", args.quick)
    gain = final_eval["score"] - base_eval["score"]
    ci95 = final_eval["ci95"]
    result = {
        "base_val_score": base_eval["score"],
        "final_val_score": final_eval["score"],
        "val_ci95": ci95,
        "base_val_ci95": base_eval["ci95"],
        "base_strict_acc": base_eval["strict_acc"],
        "final_strict_acc": final_eval["strict_acc"],
        "val_score_gain": gain,
        "grad_cosine_n128": cosine,
        "base_diagnostics": base_eval,
        "final_diagnostics": final_eval,
        "target_met": bool(
            not control
            and gain >= 0.10
            and gain > 3 * ci95
            and final_eval["strict_acc"] > base_eval["strict_acc"]
        ),
        "train_prompts": args.train_prompts,
        "iterations": summary["iterations"],
        "wall_s": wall,
        "rl_budget_s": budget,
        "zero_std_group_frac": summary["zero_std_group_frac"],
        "validations": [
            {k: v for k, v in r.items() if k in ("iteration", "val_score", "val_spread")}
            for r in summary["validations"]
        ],
        "base": str(base_path),
        "settings": settings.to_json(),
        "machine": {
            "cpus": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_avg_1_5_15": list(os.getloadavg()),
        },
        "quick": args.quick,
    }
    curve = out.with_name(f"{name}_curve.png")
    if (run_dir / "curve.png").exists():
        curve.write_bytes((run_dir / "curve.png").read_bytes())
        result["curve_png"] = str(curve)
    if not args.quick:
        grid = out.with_name(f"{name}_samples.png")
        sample_grid(base_path, run_dir / "checkpoint", settings, grid)
        result["samples_png"] = str(grid)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"base {result['base_val_score']:.3f} → final {result['final_val_score']:.3f} "
        f"(gain {gain:+.3f}, ci95 ±{ci95:.3f}; strict {result['base_strict_acc']:.3f} → "
        f"{result['final_strict_acc']:.3f}; target {'met' if result['target_met'] else 'NOT met'}) "
        f"in {summary['iterations']} iterations, {wall:.0f} s; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
