"""Does seed selection speed learning? The paper's claim, measured paired on the tiny testbed.

Two arms from the shipped base, same prompt schedule, same validation set, ``--rl-seeds``
independent RL runs each (run r of both arms sees the same prompts at every iteration):

- ``random``: G random seeds per prompt (plain GRPO-style sampling);
- ``selected``: K candidate seeds per prompt sampled with θ_{k−1} (the weights before the
  previous update: what an explorer on a spot GPU holds while the trainer computes θ_k) and
  scored; the planner's choice keeps the max-variance G of them (selection.py).

Reported (``benchmarks/results/selection.json``; exact keys from issue 18):

- ``grad_alignment``: cosine of a 128-sample update (16 prompts × 8) with a 4,096-sample
  reference gradient (16 prompts × 256 random seeds), selected vs random, at θ0 and two later
  checkpoints of a random-arm run; mean and 95% CI over repeats. If selection does not raise
  it, it cannot speed learning.
- ``iters_to_target``: per arm, median iterations to base + 0.10 on the validation score
  (censored at the budget), and ``iters_ratio`` = random / selected as {median, lo, hi}
  (paired bootstrap over RL seeds, 95%).
- ``auc_gain``: per-run area under (validation − base) over the budget, paired difference
  selected − random, with a paired t-test and Wilcoxon p-value.
- ``samples_ratio``: the same comparison counted in samples, exploration included.
- why: the advantage statistics of both arms (zero-std group fraction, reward std, mean
  |advantage|), so a null result says what selection changed.

Everything runs on the CPU (the exploration's cost is counted in samples, not hidden);
``--jobs 2`` runs two RL runs at a time in processes of one torch thread each. The default
objective is DiffusionNFT at lr 1e-4, the setting under which the testbed learns
(``bench_learning.py``); ``--objective flow_grpo`` measures selection under Flow-GRPO. ``--quick`` is a smoke run (a few iterations, 2 seeds, no alignment).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats as sstats

from spotlight.models import scenes
from spotlight.models.base_build import ensure_base
from spotlight.models.bases import load_checkpoint
from spotlight.models.batches import iteration_prompts, iteration_seeds, validation_set
from spotlight.models.dit import DiTPolicy
from spotlight.models.flow_grpo import OBJECTIVES, FlowGrpoConfig, flow_grpo_iteration, validate
from spotlight.models.grad_probe import cosine, policy_gradient
from spotlight.models.grpo import GrpoConfig
from spotlight.models.rewards import build_reward
from spotlight.models.sampler import SamplerConfig
from spotlight.models.selection import explore, select_seeds

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
TARGET_GAIN = 0.10
ARMS = ("random", "selected")


def algo_config(args: argparse.Namespace) -> FlowGrpoConfig:
    return FlowGrpoConfig(
        prompts_per_iter=args.prompts,
        group_size=args.group,
        sampler=SamplerConfig(num_steps=6, noise_level=1.0, sde_window=(0, 2)),
        grpo=GrpoConfig(clip_range=1e-2, adv_norm=args.adv_norm, kl_beta=args.kl_beta),
        lr=args.lr,
        micro_batch=64,
        chunks_per_update=-(-(args.prompts * args.group) // 64),
        objective=args.objective,
    )


def by_kind(prompts: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in prompts:
        out.setdefault(scenes.prompt_kind_of(p), []).append(p)
    return out


def arm_seeds(
    arm: str, rl_seed: int, k: int, prompts: list[str], explorer: DiTPolicy, reward, args, cfg
) -> tuple[list[int], int]:
    """The iteration's seeds for ``arm`` and the exploration samples it spent."""
    if arm == "random":
        return iteration_seeds(rl_seed, k, len(prompts) * args.group), 0
    cand = np.array(iteration_seeds(10_000 + rl_seed, k, len(prompts) * args.candidates))
    found = explore(explorer, prompts, cand.reshape(len(prompts), -1), reward, cfg.sampler)
    return select_seeds(found, args.group), cand.size


def run_arm(
    arm: str,
    rl_seed: int,
    base: str,
    args,
    val: tuple[list[str], list[int]],
    snapshots: dict[int, Any] | None = None,
) -> dict:
    """One RL run; returns its validation curve, samples spent and advantage statistics.
    ``snapshots``: iteration -> None entries are filled with the policy's state dict there."""
    torch.manual_seed(rl_seed)
    cfg = algo_config(args)
    policy, _ = load_checkpoint(base)
    explorer = copy.deepcopy(policy)  # θ_{k−1}: the weights before the previous update
    reference = copy.deepcopy(policy).requires_grad_(False) if args.kl_beta > 0 else None
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    reward = build_reward(args.reward)
    train_reward = train_reward_for(args)
    train = by_kind(scenes.prompt_split()[0])
    curve: list[tuple[int, float, int]] = []
    samples = 0
    zero_std, reward_std = [], []

    def record(k: int) -> None:
        score = validate(policy, val[0], val[1], reward, cfg.sampler).score
        curve.append((k, score, samples))

    record(0)
    t0 = time.perf_counter()
    for k in range(args.iterations):
        prompts = iteration_prompts(train, rl_seed, k, args.prompts)
        seeds, explored = arm_seeds(arm, rl_seed, k, prompts, explorer, train_reward, args, cfg)
        before = copy.deepcopy(policy.state_dict())
        stats_k, _ = flow_grpo_iteration(
            policy,
            optimizer,
            [p for p in prompts for _ in range(args.group)],
            seeds,
            train_reward,
            cfg,
            shuffle_seed=k,
            ref_policy=reference,
        )
        explorer.load_state_dict(before)
        samples += explored + len(seeds)
        zero_std.append(stats_k.reward.zero_std_group_frac)
        reward_std.append(stats_k.reward.std)
        if (k + 1) % args.val_every == 0 or k + 1 == args.iterations:
            record(k + 1)
        if snapshots is not None and k + 1 in snapshots:
            snapshots[k + 1] = copy.deepcopy(policy.state_dict())
    print(
        f"  {arm:8s} rl-seed {rl_seed}: val {curve[0][1]:.3f} -> {curve[-1][1]:.3f} "
        f"(best {max(c[1] for c in curve):.3f}) in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return {
        "arm": arm,
        "rl_seed": rl_seed,
        "snapshots": snapshots,
        "curve": curve,
        "zero_std_group_frac": float(np.mean(zero_std)),
        "train_reward_std": float(np.mean(reward_std)),
        "wall_s": time.perf_counter() - t0,
    }


def first_reaching(curve: list, target: float, index: int) -> float:
    """The iteration (index 0) or sample count (index 2) at which the curve first reaches
    ``target``; censored runs return the budget + 1 validation interval (a lower bound)."""
    for row in curve:
        if row[1] >= target:
            return float(row[index])
    last, prev = curve[-1], curve[-2] if len(curve) > 1 else curve[-1]
    return float(last[index] + (last[index] - prev[index]))


def auc(curve: list, base: float) -> float:
    ks = np.array([c[0] for c in curve], dtype=float)
    gains = np.array([c[1] for c in curve]) - base
    return float(np.trapezoid(gains, ks) / max(ks[-1], 1.0))


def paired_ratio(num: np.ndarray, den: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """median(num)/median(den) with a paired bootstrap 95% CI over runs."""
    point = float(np.median(num) / np.median(den))
    boots = []
    for _ in range(4000):
        idx = rng.integers(0, len(num), len(num))
        boots.append(np.median(num[idx]) / np.median(den[idx]))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"median": point, "lo": float(lo), "hi": float(hi)}


def summarize(runs: list[dict], base_score: float) -> dict[str, Any]:
    target = base_score + TARGET_GAIN
    rng = np.random.default_rng(0)
    per = {a: sorted((r for r in runs if r["arm"] == a), key=lambda r: r["rl_seed"]) for a in ARMS}
    iters = {a: np.array([first_reaching(r["curve"], target, 0) for r in per[a]]) for a in ARMS}
    samples = {a: np.array([first_reaching(r["curve"], target, 2) for r in per[a]]) for a in ARMS}
    aucs = {a: np.array([auc(r["curve"], base_score) for r in per[a]]) for a in ARMS}
    diff = aucs["selected"] - aucs["random"]
    t_p = float(sstats.ttest_rel(aucs["selected"], aucs["random"]).pvalue) if len(diff) > 1 else 1.0
    try:
        w_p = float(sstats.wilcoxon(diff).pvalue)
    except ValueError:
        w_p = 1.0
    half = float(sstats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff)))
    return {
        "target": target,
        "iters_to_target": {
            a: {
                "median": float(np.median(iters[a])),
                "per_run": iters[a].tolist(),
                "reached": int(
                    sum(first_reaching(r["curve"], target, 0) <= r["curve"][-1][0] for r in per[a])
                ),
            }
            for a in ARMS
        },
        "iters_ratio": paired_ratio(iters["random"], iters["selected"], rng),
        "samples_ratio": paired_ratio(samples["random"], samples["selected"], rng),
        "auc_gain": {
            "random": aucs["random"].tolist(),
            "selected": aucs["selected"].tolist(),
            "paired_diff_mean": float(diff.mean()),
            "paired_diff_ci95": [float(diff.mean() - half), float(diff.mean() + half)],
            "p_value_ttest": t_p,
            "p_value_wilcoxon": w_p,
        },
        "advantage_stats": {
            a: {
                "zero_std_group_frac": float(np.mean([r["zero_std_group_frac"] for r in per[a]])),
                "train_reward_std": float(np.mean([r["train_reward_std"] for r in per[a]])),
            }
            for a in ARMS
        },
    }


def train_reward_for(args: argparse.Namespace) -> Any:
    """The reward the policy is trained and explored on: ``--reward``, or with
    ``--strict-reward`` its all-or-nothing form (validation always scores ``--reward``)."""
    if args.strict_reward:
        return build_reward(args.reward, all_or_nothing=True)
    return build_reward(args.reward)


def alignment_at(policy: DiTPolicy, label: str, args, repeats: int) -> dict[str, Any]:
    """Cosines of 128-sample selected/random updates with a 4,096-sample reference."""
    cfg = algo_config(args)
    reward = train_reward_for(args)
    prompts = iteration_prompts(by_kind(scenes.prompt_split()[0]), 99, 0, 16)
    per_prompt = 256
    ref_seeds = iteration_seeds(77, 0, 16 * per_prompt)
    ref = policy_gradient(
        policy, [p for p in prompts for _ in range(per_prompt)], ref_seeds, reward, cfg
    )
    out: dict[str, list[float]] = {a: [] for a in ARMS}
    for rep in range(repeats):
        rand = iteration_seeds(500 + rep, 0, 16 * args.group)
        cand = np.array(iteration_seeds(900 + rep, 0, 16 * args.candidates)).reshape(16, -1)
        sel = select_seeds(explore(policy, prompts, cand, reward, cfg.sampler), args.group)
        pairs = [p for p in prompts for _ in range(args.group)]
        for arm, seeds in (("random", rand), ("selected", sel)):
            out[arm].append(cosine(policy_gradient(policy, pairs, seeds, reward, cfg), ref))
    row: dict[str, Any] = {"checkpoint": label, "repeats": repeats}
    for arm, vals in out.items():
        v = np.array(vals)
        half = float(sstats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
        row[arm] = {
            "mean": float(v.mean()),
            "ci95": [float(v.mean() - half), float(v.mean() + half)],
        }
    print(
        f"  alignment at {label}: random {row['random']['mean']:+.3f}, "
        f"selected {row['selected']['mean']:+.3f}",
        flush=True,
    )
    return row


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: few iterations, 2 seeds")
    ap.add_argument("--base", default=None, help="base checkpoint (default: the shipped one)")
    ap.add_argument("--rl-seeds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--val-every", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--objective", default="nft", choices=OBJECTIVES)
    ap.add_argument("--kl-beta", type=float, default=0.0, help="penalty towards the base")
    ap.add_argument(
        "--jobs", type=int, default=1, help="RL runs in parallel (one torch thread each)"
    )
    ap.add_argument("--adv-norm", default="global", choices=("group", "global", "none"))
    ap.add_argument("--reward", default="checks")
    ap.add_argument(
        "--strict-reward",
        action="store_true",
        help="train and explore on the all-or-nothing checks reward (validation stays the mean)",
    )
    ap.add_argument("--align-repeats", type=int, default=6)
    ap.add_argument("--val-per-kind", type=int, default=12)
    ap.add_argument("--val-seeds", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path("runs") / "bench_selection",
        help="finished runs are kept here; a rerun with the same settings resumes",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.rl_seeds, args.iterations, args.val_every, args.align_repeats = 2, 2, 1, 0
        args.val_per_kind, args.val_seeds, args.candidates = 2, 2, 8
    if args.candidates < args.group:
        ap.error(f"--candidates {args.candidates} must be >= --group {args.group}")
    if args.rl_seeds < 2:
        ap.error("--rl-seeds must be >= 2 for a paired comparison")
    return args


def cache_dir(args: argparse.Namespace, base: str) -> Path:
    """Where finished runs are kept, keyed by every setting that changes a run's result, so a
    killed benchmark resumes with the runs it already has (``--cache``)."""
    keep = ("iterations", "val_every", "prompts", "group", "candidates", "lr", "objective")
    keep += ("kl_beta", "adv_norm", "reward", "val_per_kind", "val_seeds")
    fields = {k: getattr(args, k) for k in keep} | {"base": base}
    if args.strict_reward:  # only when set, so caches of earlier runs keep their keys
        fields["strict_reward"] = True
    key = json.dumps(fields, sort_keys=True)
    return args.cache / hashlib.sha256(key.encode()).hexdigest()[:16]


def _run_one(job: tuple[str, int, str, argparse.Namespace, tuple, Path]) -> dict:
    """One (arm, RL seed) run, read from ``cache`` when it finished before; written there
    (atomically) when it finishes now. (random, 0) also keeps the alignment checkpoints."""
    arm, r, base, args, val, cache = job
    done = cache / f"{arm}-{r}.json"
    if done.exists():
        return json.loads(done.read_text())
    if args.jobs > 1:
        torch.set_num_threads(1)
    keep = (arm, r) == ("random", 0)
    wanted = {max(1, args.iterations // 2): None, args.iterations: None} if keep else None
    run = run_arm(arm, r, base, args, val, wanted)
    snapshots = run.pop("snapshots")
    if snapshots:
        torch.save(snapshots, cache / "snapshots.pt")
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(run))
    tmp.replace(done)
    return run


def run_all(base: str, args: argparse.Namespace, val: tuple) -> tuple[list[dict], dict]:
    """Every (arm, RL seed) run, (random, 0) first, and that run's weight snapshots;
    ``--jobs`` > 1 runs them in processes."""
    cache = cache_dir(args, base)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"runs are kept in {cache} (a rerun with the same settings resumes)", flush=True)
    jobs = [(a, r, base, args, val, cache) for r in range(args.rl_seeds) for a in ARMS]
    if args.jobs <= 1:
        runs = [_run_one(j) for j in jobs]
    else:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            runs = pool.map(_run_one, jobs, chunksize=1)
    return runs, torch.load(cache / "snapshots.pt") if args.align_repeats else {}


def with_weights(policy: DiTPolicy, state: dict) -> DiTPolicy:
    out = copy.deepcopy(policy)
    out.load_state_dict(state)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    base = args.base or str(ensure_base())
    val = validation_set(scenes.prompt_split()[1], args.val_per_kind, args.val_seeds)
    t0 = time.perf_counter()
    policy0, _ = load_checkpoint(base)
    base_score = validate(
        policy0, val[0], val[1], build_reward(args.reward), algo_config(args).sampler
    ).score
    print(f"base validation {base_score:.3f} ({len(val[0])} prompts × {len(val[1])} seeds)")
    runs, snapshots = run_all(base, args, val)
    result: dict[str, Any] = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "base": base,
        "base_val_score": base_score,
        **summarize(runs, base_score),
        "runs": runs,
    }
    if args.align_repeats:
        checkpoints = [("theta0", policy0)] + [
            (f"random-arm iteration {k}", with_weights(policy0, state))
            for k, state in sorted(snapshots.items())
        ]
        result["grad_alignment"] = [
            alignment_at(p, label, args, args.align_repeats) for label, p in checkpoints
        ]
    result["wall_s"] = time.perf_counter() - t0
    result["machine"] = {"platform": platform.platform(), "torch_threads": torch.get_num_threads()}
    out = args.out or RESULTS / ("selection_quick.json" if args.quick else "selection.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    r = result["iters_ratio"]
    print(
        f"iters_ratio {r['median']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]  auc diff "
        f"{result['auc_gain']['paired_diff_mean']:+.4f} (p={result['auc_gain']['p_value_ttest']:.3f})"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
