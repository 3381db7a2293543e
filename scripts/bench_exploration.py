"""Seed exploration with previous-iteration weights: does the ranking carry, does it pay?

Runs a real (tiny) Flow-GRPO training run with random seeds, keeps every iteration's weights
θ_0..θ_T, and scores a fixed set of prompts × K seeds under each θ with the trainer's rollout
setting (SDE, full steps) and with cheaper exploration settings. From those rewards:

* ``seed_rank_spearman_lag1`` / ``_by_lag``: Spearman correlation, per prompt, of the seeds'
  rewards under θ_{j−L} (exploration setting) and θ_j (rollout setting), averaged over
  prompts and j. Lag 0 of a cheap setting is how well it ranks at the same weights.
* ``selected_std_over_random_std``, ``zero_std_frac_*``: the G seeds the bandit picks from
  the K explored under θ_{j−1}, rolled out under θ_j, vs random G-subsets of the same seeds.
* ``bandit_vs_uniform_variance_gain``: the same budget of explored seeds spent by the bandit
  (rounds, like the planner) or uniformly; the gain is the selected groups' realised variance
  under θ_j over the random groups', per exploration GPU-second.
* ``trainer_wait_s_due_to_exploration``: the actors for real (scheduler, explorers, planner,
  in one runtime): a trainer loop running real Flow-GRPO iterations asks the planner for its
  seeds at each iteration; the time it waits beyond a plain ask round trip.

Usage: ``python scripts/bench_exploration.py [--quick] [--base DIR] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from spotlight.actors.bandit import BanditConfig, ExplorationBandit, ExplorationBudget
from spotlight.actors.explorer import ExplorerActor, ExploreSettings, explore_rewards
from spotlight.actors.planner import (
    PlannerActor,
    PlannerConfig,
    flatten,
    seeds_for_iteration,
)
from spotlight.actors.scheduler import SchedulerActor, SchedulingConfig
from spotlight.models.checkpoint import load_checkpoint
from spotlight.models.dit import DiTPolicy, build_policy
from spotlight.models.flow_grpo import FlowGrpoConfig, flow_grpo_iteration
from spotlight.models.rewards import build_reward
from spotlight.models.sampler import SamplerConfig
from spotlight.models.scenes import prompt_split
from spotlight.runtime import Runtime, RuntimeConfig

REPO = Path(__file__).resolve().parents[1]
SIZES: dict[str, dict[str, Any]] = {
    "quick": dict(
        iters=2, train_prompts=2, train_group=4, steps=4, eval_prompts=3, seeds=8, group=4,
        cheap=[("sde", 3)], lags=[1, 2], actor_iters=2, bandit_repeats=8,
    ),
    "full": dict(
        iters=8, train_prompts=3, train_group=4, steps=6, eval_prompts=6, seeds=16, group=4,
        cheap=[("sde", 4), ("ode", 4)], lags=[1, 2, 4, 8], actor_iters=3, bandit_repeats=24,
    ),
}  # fmt: skip


def find_base(explicit: str | None) -> tuple[DiTPolicy, str]:
    """A finished base checkpoint if one exists (never starts a build), else random weights."""
    candidates = [explicit] if explicit else []
    cache = Path(os.environ.get("SPOTLIGHT_CACHE", Path.home() / ".cache" / "spotlight"))
    candidates += [str(p) for p in sorted(cache.glob("base-tiny-*")) if (p / "card.json").is_file()]
    candidates.append("/tmp/w4/micro_base")
    for path in candidates:
        if path and (Path(path) / "card.json").is_file():
            policy, card = load_checkpoint(path)
            return policy, f"{path} (pretrain steps {card.steps}, loss {card.loss:.3f})"
    return build_policy("tiny", seed=0), "random init (no finished base found)"


def train_run(policy: DiTPolicy, size: dict[str, Any], reward_fn: Any) -> list[dict[str, Any]]:
    """Real Flow-GRPO iterations with random seeds; returns θ_0..θ_T state dicts."""
    cfg = FlowGrpoConfig(
        prompts_per_iter=size["train_prompts"],
        group_size=size["train_group"],
        sampler=SamplerConfig(num_steps=size["steps"]),
        micro_batch=16,
    )
    train, _ = prompt_split()
    rng = np.random.default_rng(1)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    states = [copy.deepcopy(policy.state_dict())]
    for k in range(size["iters"]):
        prompts = [train[i] for i in rng.choice(len(train), cfg.prompts_per_iter, replace=False)]
        ps = [p for p in prompts for _ in range(cfg.group_size)]
        ss = [int(s) for s in rng.integers(0, 2**31 - 1, len(ps))]
        t0 = time.perf_counter()
        stats, _ = flow_grpo_iteration(policy, opt, ps, ss, reward_fn, cfg, shuffle_seed=k)
        print(
            f"  iter {k}: reward {stats.reward.mean:.3f} zero-std {stats.reward.zero_std_group_frac:.2f}"
            f" ({time.perf_counter() - t0:.1f}s)",
            flush=True,
        )
        states.append(copy.deepcopy(policy.state_dict()))
    return states


def score_all(
    policy: DiTPolicy,
    states: list[dict[str, Any]],
    prompts: list[str],
    seeds: list[int],
    reward_fn: Any,
    setting: tuple[str, int],
) -> np.ndarray:
    """Rewards [θ, prompt, seed] of ``setting`` = (mode, steps) under every θ."""
    mode, steps = setting
    settings = ExploreSettings(mode=mode, micro_batch=48)  # type: ignore[arg-type]
    ps = [p for p in prompts for _ in seeds]
    ss = [s for _ in prompts for s in seeds]
    out = np.empty((len(states), len(prompts), len(seeds)))
    for j, state in enumerate(states):
        policy.load_state_dict(state)
        r = explore_rewards(policy, ps, ss, reward_fn, num_steps=steps, settings=settings)
        out[j] = r.reshape(len(prompts), len(seeds))
    print(f"  scored {mode}-{steps} under {len(states)} weight versions", flush=True)
    return out


def mean_spearman(a_PK: np.ndarray, b_PK: np.ndarray) -> float:
    vals = []
    for a, b in zip(a_PK, b_PK, strict=True):
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            vals.append(spearmanr(a, b).statistic)
    return float(np.mean(vals)) if vals else float("nan")


def by_lag(explore: np.ndarray, rollout: np.ndarray, lags: list[int]) -> dict[str, float]:
    out = {}
    for lag in lags:
        pairs = [mean_spearman(explore[j - lag], rollout[j]) for j in range(lag, len(rollout))]
        pairs = [v for v in pairs if np.isfinite(v)]
        out[str(lag)] = float(np.mean(pairs)) if pairs else float("nan")
    return out


def random_group_stats(r_K: np.ndarray, g: int, rng: np.random.Generator) -> tuple[float, float]:
    """(mean std, zero-std fraction) of random G-subsets of ``r_K``."""
    stds = np.array([r_K[rng.choice(r_K.size, g, replace=False)].std() for _ in range(200)])
    return float(stds.mean()), float((stds < 1e-9).mean())


def selection(
    explore: np.ndarray, rollout: np.ndarray, g: int, *, lag: int = 1, k: int | None = None
) -> dict[str, float]:
    """Chosen groups (extremes of the first ``k`` seeds under θ_{j−lag}) vs random groups of
    the same ``k`` seeds, both rolled out under θ_j. ``lag=0`` is the oracle ceiling."""
    rng = np.random.default_rng(0)
    sel_std, sel_zero, rnd_std, rnd_zero = [], [], [], []
    n_prompts = rollout.shape[1]
    k = k or rollout.shape[2]
    for j in range(max(lag, 1), len(rollout)):
        for p in range(n_prompts):
            bandit = ExplorationBandit(["p"], BanditConfig(group_size=g))
            for s in range(k):
                bandit.observe("p", s, float(explore[j - lag, p, s]))
            chosen = list(bandit.select_group("p", fresh_seed_start=k).seeds)
            std = float(rollout[j, p, chosen].std())
            sel_std.append(std)
            sel_zero.append(std < 1e-9)
            m, z = random_group_stats(rollout[j, p, :k], g, rng)
            rnd_std.append(m)
            rnd_zero.append(z)
    selected, random_ = float(np.mean(sel_std)), float(np.mean(rnd_std))
    return {
        "selected_std": selected,
        "random_std": random_,
        "selected_std_over_random_std": selected / max(random_, 1e-12),
        "zero_std_frac_selected": float(np.mean(sel_zero)),
        "zero_std_frac_random": float(np.mean(rnd_zero)),
    }


def spend(
    explore_PK: np.ndarray,
    order_PK: np.ndarray,
    budget: int,
    g: int,
    *,
    bandit_rounds: bool,
    fill: bool = True,
) -> list[list[int]]:
    """Explore ``budget`` seeds beyond 2 per prompt (bandit rounds or uniform); returns each
    prompt's chosen group (seed indices)."""
    n_prompts, k = explore_PK.shape
    names = [f"p{i}" for i in range(n_prompts)]
    cfg = BanditConfig(group_size=g, max_per_prompt=k, fill_to_group=fill)
    bandit = ExplorationBandit(names, cfg, seed=0)
    taken = [0] * n_prompts

    def reveal(i: int, n: int) -> None:
        for _ in range(min(n, k - taken[i])):
            s = int(order_PK[i, taken[i]])
            bandit.observe(names[i], s, float(explore_PK[i, s]))
            taken[i] += 1

    for i in range(n_prompts):
        reveal(i, 2)
    left = budget
    if bandit_rounds:
        while left > 0:
            share = max(1, left // 2)
            plan = bandit.allocate(ExplorationBudget(float(share)))
            if not any(plan.values()):
                break
            for i, name in enumerate(names):
                reveal(i, plan[name])
            left -= sum(plan.values())
    else:
        for i in range(n_prompts):
            reveal(i, budget // n_prompts)
    groups = []
    for i, name in enumerate(names):
        chosen = [s for s in bandit.select_group(name, fresh_seed_start=k).seeds if s < k]
        # Fallback seeds are fresh random seeds: unexplored seeds of the pool stand in for them.
        unexplored = [int(s) for s in order_PK[i, taken[i] :]]
        groups.append(chosen + unexplored[: g - len(chosen)])
    return groups


def bandit_vs_uniform(
    explore: np.ndarray, rollout: np.ndarray, g: int, repeats: int, sec_per_seed: float
) -> dict[str, float]:
    """Same budget, same run: realised variance gain over random groups per GPU-second."""
    n_prompts, k = rollout.shape[1:]
    budget = n_prompts * (k // 2 - 2)
    rng = np.random.default_rng(3)
    v_b: list[float] = []
    v_u: list[float] = []
    v_r: list[float] = []
    v_nf: list[float] = []
    for j in range(1, len(rollout)):
        rand_var = np.mean(
            [
                np.mean([rollout[j, p, rng.choice(k, g, replace=False)].var() for _ in range(100)])
                for p in range(n_prompts)
            ]
        )
        for _ in range(repeats):
            order = np.stack([rng.permutation(k) for _ in range(n_prompts)])
            for rounds, fill, acc in ((True, True, v_b), (False, True, v_u), (True, False, v_nf)):
                groups = spend(explore[j - 1], order, budget, g, bandit_rounds=rounds, fill=fill)
                acc.append(np.mean([rollout[j, p, grp].var() for p, grp in enumerate(groups)]))
            v_r.append(rand_var)
    gpu_s = (budget + 2 * n_prompts) * sec_per_seed
    gain_b = (np.mean(v_b) - np.mean(v_r)) / gpu_s
    gain_u = (np.mean(v_u) - np.mean(v_r)) / gpu_s
    gain_nf = (np.mean(v_nf) - np.mean(v_r)) / gpu_s
    return {
        "bandit_without_fill_vs_uniform_variance_gain": float(gain_nf / gain_u)
        if gain_u > 0
        else float("nan"),
        "bandit_selected_variance": float(np.mean(v_b)),
        "uniform_selected_variance": float(np.mean(v_u)),
        "random_group_variance": float(np.mean(v_r)),
        "exploration_gpu_s_per_batch": float(gpu_s),
        "bandit_gain_per_gpu_s": float(gain_b),
        "uniform_gain_per_gpu_s": float(gain_u),
        "bandit_vs_uniform_variance_gain": float(gain_b / gain_u) if gain_u > 0 else float("nan"),
    }


async def actor_run(policy: DiTPolicy, size: dict[str, Any], reward_fn: Any) -> dict[str, Any]:
    """Scheduler + 2 explorers + planner in one runtime; a trainer loop of real iterations."""
    cfg = FlowGrpoConfig(
        prompts_per_iter=2, group_size=4, sampler=SamplerConfig(num_steps=4), micro_batch=8
    )
    train, _ = prompt_split()
    rng = np.random.default_rng(5)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    async with Runtime(RuntimeConfig(ask_timeout_s=30.0)) as rt:
        sched = await rt.spawn(
            SchedulerActor, name="explore-scheduler", config=SchedulingConfig(lease_ttl_s=60.0)
        )
        planner = await rt.spawn(
            PlannerActor,
            name="planner",
            scheduler=sched,
            config=PlannerConfig(
                bandit=BanditConfig(group_size=cfg.group_size, mc_draws=32, seconds_per_seed=0.2),
                explore_steps=2,
                default_iteration_s=5.0,
            ),
        )
        settings = ExploreSettings(micro_batch=16, pull_batch=8, idle_pull_s=0.05)
        for i in range(2):
            await rt.spawn(
                ExplorerActor,
                name=f"explorer-{i}",
                scheduler=sched,
                worker_id=f"explorer-{i}",
                settings=settings,
                announce_to=planner,
            )
        explorers: dict[str, Any] = {}
        for _ in range(200):
            explorers = await planner.explorers.ask(timeout=5.0)
            if len(explorers) == 2:
                break
            await asyncio.sleep(0.05)
        for ref in explorers.values():
            await ref.load_weights.tell(0, copy.deepcopy(policy.state_dict()))
        waits, floors, answers, fallbacks, explored = [], [], [], [], []
        batches = [
            [train[i] for i in rng.choice(len(train), cfg.prompts_per_iter, replace=False)]
            for _ in range(size["actor_iters"] + 1)
        ]
        for k in range(size["actor_iters"]):
            t_start = time.time()
            await planner.plan.ask(f"b{k + 1}", batches[k + 1], t_start, timeout=10.0)
            t0 = time.perf_counter()
            await planner.statistics.ask(timeout=10.0)
            floors.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            plan = await seeds_for_iteration(planner, f"b{k}", batches[k], cfg.group_size)
            waits.append(time.perf_counter() - t0)
            answers.append(plan.answer_s)
            fallbacks.append(plan.fallback_seeds)
            explored.append(plan.explored_seeds)
            ps, ss = flatten(plan)
            await asyncio.to_thread(flow_grpo_iteration, policy, opt, ps, ss, reward_fn, cfg)
            await planner.record_iteration.tell(time.time() - t_start)
            state = copy.deepcopy(policy.state_dict())
            for ref in explorers.values():
                await ref.load_weights.tell(k + 1, state)
        stats = await planner.statistics.ask(timeout=10.0)
    tolerance = 0.010
    excess = [max(0.0, w - f - tolerance) for w, f in zip(waits, floors, strict=True)]
    return {
        "trainer_wait_s_due_to_exploration": float(sum(excess)),
        "take_groups_ask_s": waits,
        "plain_ask_s": floors,
        "planner_answer_s": answers,
        "wait_tolerance_s": tolerance,
        "fallback_seeds_per_batch": fallbacks,
        "explored_seeds_per_batch": explored,
        "late_results": stats.late_results,
        "skipped_results": stats.skipped_results,
        "measured_seconds_per_seed": stats.seconds_per_seed,
        "note": "batch b0 has no plan (first iteration): all fallback by design",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, < 60 s")
    ap.add_argument("--base", default=None, help="base checkpoint directory")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/exploration.json"))
    ap.add_argument("--raw", default=None, help="also save the reward arrays (.npz) here")
    args = ap.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t_all = time.perf_counter()
    policy, base_desc = find_base(args.base)
    print(f"base: {base_desc}", flush=True)
    initial = copy.deepcopy(policy.state_dict())
    reward_fn = build_reward("geneval")
    t0 = time.perf_counter()
    states = train_run(policy, size, reward_fn)
    train_s = time.perf_counter() - t0
    _, held_out = prompt_split()
    ev_rng = np.random.default_rng(11)
    prompts = [held_out[i] for i in ev_rng.choice(len(held_out), size["eval_prompts"], False)]
    seeds = [int(s) for s in ev_rng.integers(0, 2**31 - 1, size["seeds"])]
    rollout_setting = ("sde", size["steps"])
    t0 = time.perf_counter()
    rollout = score_all(policy, states, prompts, seeds, reward_fn, rollout_setting)
    per_sample_s = (time.perf_counter() - t0) / rollout.size
    cheap: dict[str, np.ndarray] = {}
    cheap_cost: dict[str, float] = {}
    for setting in size["cheap"]:
        t0 = time.perf_counter()
        cheap[f"{setting[0]}-{setting[1]}"] = score_all(
            policy, states, prompts, seeds, reward_fn, setting
        )
        cheap_cost[f"{setting[0]}-{setting[1]}"] = (time.perf_counter() - t0) / rollout.size
    if args.raw:
        arrays: dict[str, Any] = {"rollout": rollout}
        arrays.update({f"cheap_{name}": r for name, r in cheap.items()})
        np.savez(args.raw, **arrays)
    lags = size["lags"]
    spearman = {f"sde-{size['steps']} (rollout setting)": by_lag(rollout, rollout, lags)}
    for name, r in cheap.items():
        spearman[name] = by_lag(r, rollout, [0, *lags])
    sel = selection(rollout, rollout, size["group"])
    k = size["seeds"]
    sel_by_k = {
        str(n): selection(rollout, rollout, size["group"], k=n)["selected_std_over_random_std"]
        for n in sorted({size["group"] * 2, k // 2, k})
    }
    oracle = selection(rollout, rollout, size["group"], lag=0)["selected_std_over_random_std"]
    sel_cheap = {name: selection(r, rollout, size["group"]) for name, r in cheap.items()}
    bvu = bandit_vs_uniform(rollout, rollout, size["group"], size["bandit_repeats"], per_sample_s)
    policy.load_state_dict(initial)
    actors = asyncio.run(actor_run(policy, size, reward_fn))
    result = {
        "mode": "quick" if args.quick else "full",
        "base": base_desc,
        "conditions": {
            **{k: v for k, v in size.items() if k != "cheap"},
            "cheap_settings": [f"{m}-{s}" for m, s in size["cheap"]],
            "rollout_setting": f"sde-{size['steps']} noise 0.7",
            "eval_prompts": prompts,
            "torch_threads": torch.get_num_threads(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "seed_rank_spearman_lag1": spearman[next(iter(spearman))]["1"],
        "seed_rank_spearman_by_lag": spearman,
        **sel,
        "selected_std_over_random_std_by_explored_k": sel_by_k,
        "selected_std_over_random_std_oracle_lag0": oracle,
        "selection_with_cheap_exploration": sel_cheap,
        **bvu,
        "seconds_per_seed": {f"sde-{size['steps']}": per_sample_s, **cheap_cost},
        **actors,
        "train_s": train_s,
        "wall_s": time.perf_counter() - t_all,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
    print(f"wrote {out} in {result['wall_s']:.1f}s", flush=True)
    return 0


def report(r: dict[str, Any]) -> None:
    zr, zs = r["zero_std_frac_random"], r["zero_std_frac_selected"]
    zero_ratio = zr / zs if zs > 0 else (float("inf") if zr > 0 else float("nan"))
    rows = [
        ("Spearman lag 1 (target >= 0.7)", r["seed_rank_spearman_lag1"], 0.7),
        ("selected std / random std (target >= 2)", r["selected_std_over_random_std"], 2.0),
        ("zero-std frac random / selected (target >= 2)", zero_ratio, 2.0),
        ("bandit / uniform gain per GPU-s (target > 1)", r["bandit_vs_uniform_variance_gain"], 1.0),
        ("trainer wait due to exploration s (target 0)", r["trainer_wait_s_due_to_exploration"], 0),
    ]
    print(f"\nbase: {r['base']}")
    for name, value, target in rows:
        ok = (
            value <= target
            if target == 0
            else (value > target if target == 1.0 else value >= target)
        )
        print(f"  {name:52s} {value:8.3f}  {'met' if ok else 'MISSED'}")
    print(f"  zero-std frac random {r['zero_std_frac_random']:.3f} selected "
          f"{r['zero_std_frac_selected']:.3f}")  # fmt: skip
    for name, lagd in r["seed_rank_spearman_by_lag"].items():
        print(f"  spearman {name:28s} " + " ".join(f"lag{k}={v:.2f}" for k, v in lagd.items()))


if __name__ == "__main__":
    sys.exit(main())
