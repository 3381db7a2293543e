"""Seed exploration with previous-iteration weights: does the ranking carry, does it pay?

Runs a real RL run on the shipped base (the settings of benchmarks/results/learning.json:
DiffusionNFT, 16 prompts × 8 seeds, 6 steps, SDE window 0:2, noise 1.0, lr 1e-4), keeps the
weights θ_v of the iterations it needs, and scores a fixed, kind-stratified set of training
prompts (every caption kind, so difficulty is mixed) × K seeds under each θ_v with the
trainer's rollout sampler and with cheaper exploration samplers, through the explorer's own
``explore_rewards``. From those rewards:

* ``seed_rank_spearman_lag1`` / ``_by_lag``: Spearman correlation, per prompt, of the seeds'
  rewards under θ_{j−L} (exploration setting) and θ_j (rollout setting), averaged over
  prompts, then over the iteration pairs j. Lag 0 of a cheap setting = how well it ranks at
  the same weights.
* ``selected_std_over_random_std``, ``zero_std_frac_*``: G seeds chosen from the K explored
  under θ_{j−1} (the bandit's max-variance subset; also the symmetric G/2 lowest + G/2
  highest), rolled out under θ_j, vs random G-subsets of the same K seeds under θ_j.
* ``bandit_vs_uniform_variance_gain``: batches of 8 of those prompts; the same seed budget
  spent by the planner's bandit rounds (2 seeds each, then rounds of half the rest) or
  uniformly; gain = realised θ_j variance of the chosen groups minus that of random groups,
  per exploration GPU-second actually spent.
* ``trainer_wait_s_due_to_exploration``: the actors for real (scheduler, explorers, planner,
  one runtime): a trainer loop of real iterations takes its seeds from the planner; the time
  it waits beyond a plain ask round trip.

Long runs resume: ``--cache DIR`` keeps the weight versions and every (setting, version)
score array, keyed by the run's conditions, so a killed run continues where it stopped.

Usage: ``python scripts/bench_exploration.py [--quick] [--base DIR] [--cache DIR] [--out PATH]``
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from spotlight.actors.exploration.backends import ExploreSettings, explore_rewards
from spotlight.actors.exploration.bandit import BanditConfig, ExplorationBandit
from spotlight.actors.exploration.explorer import ExplorerActor
from spotlight.actors.exploration.planner import (
    PlannerActor,
    PlannerConfig,
    flatten,
    seeds_for_iteration,
)
from spotlight.actors.scheduling.scheduler import SchedulerActor, SchedulingConfig
from spotlight.models.bases import load_checkpoint
from spotlight.models.batches import iteration_prompts, iteration_seeds
from spotlight.models.dit import DiTPolicy
from spotlight.models.flow_grpo import FlowGrpoConfig, flow_grpo_iteration
from spotlight.models.grpo import GrpoConfig
from spotlight.models.nft import NftConfig
from spotlight.models.rewards import build_reward
from spotlight.models.sampler import SamplerConfig
from spotlight.models.scenes import KINDS, prompt_kind_of, prompt_split
from spotlight.models.shipped import shipped_base
from spotlight.runtime import Runtime, RuntimeConfig

REPO = Path(__file__).resolve().parents[1]
LEARNING = REPO / "benchmarks/results/learning.json"
ROLLOUT = "rollout sde-6"
# (name, mode, steps, use the trainer's sampler?) — "default" is ExploreSettings without
# trainer_sampler: noise 0.7 on every step, i.e. other noise than the trainer's for a seed.
CHEAP = {
    "sde-4": ("sde", 4, True),
    "sde-3": ("sde", 3, True),
    "ode-6": ("ode", 6, True),
    "sde-6 a0.7 all steps (explorer default)": ("sde", 6, False),
}
SIZES: dict[str, dict[str, Any]] = {
    "quick": dict(
        iters=2, train=dict(prompts_per_iter=2, group_size=4, micro_batch=8), per_kind=1,
        seeds=8, group=4, roll_versions=[0, 1, 2], cheap={"sde-3": [1]}, batch=4,
        budgets=[6], headline_budget=6, repeats=4, actor_iters=2, actor_prompts=2,
    ),
    "full": dict(
        iters=16, train={}, per_kind=5, seeds=32, group=8,
        roll_versions=[0, 1, 2, 4, 8, 9, 10, 12, 15, 16],
        cheap={"sde-4": [0, 1, 8, 15], "sde-3": [0, 8, 15], "ode-6": [0, 8, 15],
               "sde-6 a0.7 all steps (explorer default)": [0, 8]},
        extra={"seeds": 32, "versions": [0, 1, 15, 16]}, batch=8, budgets=[12, 16, 24],
        headline_budget=16, repeats=40, actor_iters=3, actor_prompts=4,
    ),
}  # fmt: skip


def find_base(explicit: str | None) -> tuple[DiTPolicy, str]:
    """``--base`` or the base shipped in the package (checked against its card's hashes);
    never builds one, so the benchmark never runs on random weights."""
    path = Path(explicit) if explicit else shipped_base()
    if not (path / "card.json").is_file():
        raise SystemExit(f"{path}: no card.json, not a finished base checkpoint")
    policy, card = load_checkpoint(path)
    return policy, f"{path} (pretrain steps {card.steps}, loss {card.loss:.3f})"


def learning_algo(overrides: dict[str, Any]) -> FlowGrpoConfig:
    """The algorithm of benchmarks/results/learning.json's run (sizes overridable)."""
    algo = dict(json.loads(LEARNING.read_text())["settings"]["algo"])
    sampler = dict(algo.pop("sampler"))
    if sampler.get("sde_window") is not None:
        sampler["sde_window"] = tuple(sampler["sde_window"])
    grpo = GrpoConfig(**algo.pop("grpo"))
    nft = NftConfig(**algo.pop("nft", {}))
    algo.update(overrides)
    return FlowGrpoConfig(sampler=SamplerConfig(**sampler), grpo=grpo, nft=nft, **algo)


def train_by_kind() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in prompt_split()[0]:
        out.setdefault(prompt_kind_of(p), []).append(p)
    return out


def eval_prompts(per_kind: int, exclude: set[str]) -> list[str]:
    """``per_kind`` training captions of every kind, preferring ones not trained on in the run
    (the grammar has only a few single-object captions: the run sees them all)."""
    rng = np.random.default_rng(11)
    out = []
    for ps in train_by_kind().values():
        fresh = [ps[i] for i in rng.permutation(len(ps)) if ps[i] not in exclude]
        seen = [ps[i] for i in rng.permutation(len(ps)) if ps[i] in exclude]
        out += (fresh + seen)[:per_kind]
    return out


class Cache:
    """Weight versions and score arrays of one set of conditions, under ``root/<key>``
    (in memory only without ``root``)."""

    def __init__(self, root: str | None, conditions: dict[str, Any]) -> None:
        key = hashlib.sha256(json.dumps(conditions, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root) / key if root else None
        self._memory: dict[str, Any] = {}
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)

    def load(self, name: str) -> Any:
        if self.dir is None:
            return self._memory.get(name)
        p = self.dir / name
        if not p.is_file():
            return None
        return np.load(p) if p.suffix == ".npy" else torch.load(p, weights_only=True)

    def save(self, name: str, value: Any) -> None:
        if self.dir is None:
            self._memory[name] = value
            return
        p = self.dir / name
        tmp = p.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            np.save(f, value) if p.suffix == ".npy" else torch.save(value, f)
        tmp.rename(p)


def train_run(
    policy: DiTPolicy, algo: FlowGrpoConfig, iters: int, keep: set[int], cache: Cache
) -> tuple[dict[int, Any], dict[str, Any]]:
    """Real Flow-GRPO iterations (the trainer's prompts and seeds); θ_v for v in ``keep``."""
    stored = {v: cache.load(f"theta_{v}.pt") for v in keep}
    meta = cache.load("train_meta.pt")
    if all(s is not None for s in stored.values()) and meta is not None:
        print(f"  {len(keep)} weight versions from the cache", flush=True)
        return stored, meta
    by_kind = train_by_kind()
    opt = torch.optim.AdamW(policy.parameters(), lr=algo.lr, weight_decay=algo.weight_decay)
    states = {0: copy.deepcopy(policy.state_dict())}
    log: list[dict[str, float]] = []
    t_all = time.perf_counter()
    for k in range(iters):
        prompts = iteration_prompts(by_kind, 0, k, algo.prompts_per_iter)
        pairs = [p for p in prompts for _ in range(algo.group_size)]
        seeds = iteration_seeds(0, k, algo.batch_size)
        t0 = time.perf_counter()
        stats, _ = flow_grpo_iteration(policy, opt, pairs, seeds, reward_fn(), algo, shuffle_seed=k)
        log.append(
            {
                "reward": stats.reward.mean,
                "zero_std": stats.reward.zero_std_group_frac,
                "grad_norm": stats.grad_norm,
                "s": time.perf_counter() - t0,
            }
        )
        print(
            f"  iter {k + 1}: reward {stats.reward.mean:.3f} zero-std "
            f"{stats.reward.zero_std_group_frac:.2f} ({log[-1]['s']:.1f}s)",
            flush=True,
        )
        if k + 1 in keep:
            states[k + 1] = copy.deepcopy(policy.state_dict())
    meta = {"train_s": time.perf_counter() - t_all, "iterations": log}
    for v, state in states.items():
        cache.save(f"theta_{v}.pt", state)
    cache.save("train_meta.pt", meta)
    return {v: states[v] for v in keep}, meta


_REWARD: list[Any] = []


def reward_fn() -> Any:
    if not _REWARD:
        _REWARD.append(build_reward("geneval"))
    return _REWARD[0]


def explore_settings(name: str, trainer: SamplerConfig) -> tuple[ExploreSettings, int]:
    if name == ROLLOUT:
        return ExploreSettings(trainer_sampler=trainer, micro_batch=128), trainer.num_steps
    mode, steps, own = CHEAP[name]
    base = trainer if own else None
    return ExploreSettings(mode=mode, trainer_sampler=base, micro_batch=128), steps  # type: ignore[arg-type]


def score(
    policy: DiTPolicy,
    states: dict[int, Any],
    name: str,
    versions: list[int],
    prompts: list[str],
    seeds: list[int],
    trainer: SamplerConfig,
    cache: Cache,
    *,
    tag: str | None = None,
) -> tuple[dict[int, np.ndarray], float | None]:
    """Rewards [prompt, seed] of setting ``name`` under θ_v; and seconds per seed (if run)."""
    settings, steps = explore_settings(name, trainer)
    ps = [p for p in prompts for _ in seeds]
    ss = [s for _ in prompts for s in seeds]
    out = {}
    if tag is None:
        tag = name.split(" ")[0] + ("" if name == ROLLOUT or CHEAP[name][2] else "-default")
    for v in versions:
        cached = cache.load(f"score_{tag}_{v}.npy")
        if cached is None:
            policy.load_state_dict(states[v])
            t0 = time.perf_counter()
            r = explore_rewards(policy, ps, ss, reward_fn(), num_steps=steps, settings=settings)
            cost = np.array([time.perf_counter() - t0, len(ps)])
            cached = r.reshape(len(prompts), len(seeds))
            cache.save(f"score_{tag}_{v}.npy", cached)
            cache.save(f"cost_{tag}_{v}.npy", cost)
            print(f"  scored {name} under θ_{v}: {cost[0] / cost[1] * 1e3:.1f} ms/seed", flush=True)
        out[v] = cached
    costs = [c for v in versions if (c := cache.load(f"cost_{tag}_{v}.npy")) is not None]
    if not costs:
        return out, None
    return out, float(sum(c[0] for c in costs) / sum(c[1] for c in costs))


def summary(values: list[float]) -> dict[str, Any]:
    a = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if not a.size:
        return {"mean": math.nan, "median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {
        "mean": float(a.mean()),
        "median": float(np.median(a)),
        "min": float(a.min()),
        "max": float(a.max()),
        "n": int(a.size),
    }


def prompt_spearman(a_PK: np.ndarray, b_PK: np.ndarray) -> np.ndarray:
    """Per prompt; NaN where either side has no spread (a rank needs distinct rewards)."""
    out = np.full(len(a_PK), np.nan)
    for i, (a, b) in enumerate(zip(a_PK, b_PK, strict=True)):
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            out[i] = spearmanr(a, b).statistic
    return out


def spearman_by_lag(
    explore: dict[int, np.ndarray], rollout: dict[int, np.ndarray], lags: list[int]
) -> dict[str, dict[str, Any]]:
    out = {}
    for lag in lags:
        pairs = [(j - lag, j) for j in sorted(rollout) if j - lag in explore]
        per_pair = [float(np.nanmean(prompt_spearman(explore[i], rollout[j]))) for i, j in pairs]
        if pairs:
            out[str(lag)] = {**summary(per_pair), "pairs": [list(p) for p in pairs]}
    return out


def zero_std_prob(r_K: np.ndarray, g: int) -> float:
    """Exact probability that a random ``g``-subset of ``r_K`` has all rewards equal."""
    _, counts = np.unique(r_K, return_counts=True)
    return sum(math.comb(int(c), g) for c in counts) / math.comb(r_K.size, g)


def choose(r_K: np.ndarray, g: int, rule: str) -> list[int]:
    """Indices of the group: the bandit's max-variance subset or the symmetric extremes."""
    if rule == "maxvar":
        bandit = ExplorationBandit(["p"], BanditConfig(group_size=g))
        for s, r in enumerate(r_K):
            bandit.observe("p", s, float(r))
        return list(bandit.select_group("p", fresh_seed_start=r_K.size).seeds)
    order = np.lexsort((np.arange(r_K.size), r_K))
    return [int(i) for i in (*order[: g // 2], *order[r_K.size - (g - g // 2) :])]


def lag1_targets(rollout: dict[int, np.ndarray]) -> list[int]:
    """Versions j whose θ_{j−1} was scored: where an explorer one version behind applies."""
    return [j for j in sorted(rollout) if j - 1 in rollout]


def selection(
    explore: dict[int, np.ndarray],
    rollout: dict[int, np.ndarray],
    prompts: list[str],
    g: int,
    *,
    rule: str = "maxvar",
    lag: int = 1,
    k: int | None = None,
) -> dict[str, Any]:
    """Groups chosen from the first ``k`` seeds under θ_{j−lag}, rolled out under θ_j, vs
    random G-subsets of the same seeds under θ_j. ``lag=0`` is the perfect-ranking ceiling."""
    rng = np.random.default_rng(0)
    rows = []  # (pair j, prompt, selected std, random std, selected zero, random zero prob)
    for j in lag1_targets(rollout):  # the same prompt instances whatever the lag
        if j - lag not in explore:
            continue
        for p in range(len(prompts)):
            ex, ro = explore[j - lag][p, :k], rollout[j][p, :k]
            std = float(ro[choose(ex, g, rule)].std())
            rnd = np.mean([ro[rng.choice(ro.size, g, replace=False)].std() for _ in range(300)])
            rows.append((j, p, std, float(rnd), std < 1e-9, zero_std_prob(ro, g)))
    a = np.array(rows, dtype=np.float64)
    sel, rnd = a[:, 2], a[:, 3]
    per_pair = [sel[a[:, 0] == j].mean() / rnd[a[:, 0] == j].mean() for j in np.unique(a[:, 0])]
    kinds = np.array([prompt_kind_of(prompts[int(p)]) for p in a[:, 1]])
    return {
        "selected_std": float(sel.mean()),
        "random_std": float(rnd.mean()),
        "selected_std_over_random_std": float(sel.mean() / max(rnd.mean(), 1e-12)),
        "ratio_over_pairs": summary(per_pair),
        "ratio_by_kind": {
            kd: float(sel[kinds == kd].mean() / max(rnd[kinds == kd].mean(), 1e-12))
            for kd in KINDS
            if (kinds == kd).any()
        },
        "zero_std_frac_selected": float(a[:, 4].mean()),
        "zero_std_frac_random": float(a[:, 5].mean()),
        "prompt_instances": len(a),
    }


def iid_normal_ceiling(k: int, g: int, draws: int = 4000) -> float:
    """Selected/random std with perfect ranking on i.i.d. normal rewards: what K and G allow."""
    r = np.random.default_rng(0).normal(size=(draws, k))
    random_std = r[:, :g].std(axis=1).mean()  # the first g of i.i.d. draws are a random group
    r = np.sort(r, axis=1)
    sel = np.concatenate([r[:, : g // 2], r[:, k - (g - g // 2) :]], axis=1).std(axis=1)
    return float(sel.mean() / random_std)


def spend(
    ex_PK: np.ndarray, order_PK: np.ndarray, budget: int, g: int, *, bandit_rounds: bool
) -> tuple[list[list[int]], int]:
    """``budget`` explored seeds (bandit rounds like the planner, or uniform); the chosen
    groups (seed indices) and the seeds actually explored."""
    n_prompts, k = ex_PK.shape
    names = [f"p{i}" for i in range(n_prompts)]
    bandit = ExplorationBandit(names, BanditConfig(group_size=g), seed=0)
    taken = [0] * n_prompts

    def reveal(i: int, n: int) -> int:
        n = min(n, k - taken[i])
        for s in order_PK[i, taken[i] : taken[i] + n]:
            bandit.observe(names[i], int(s), float(ex_PK[i, s]))
        taken[i] += n
        return n

    if bandit_rounds:
        cfg = PlannerConfig()
        left = budget - sum(reveal(i, cfg.initial_seeds) for i in range(n_prompts))
        while left > 0:
            plan = bandit.allocate_seeds(max(1, int(left * cfg.round_fraction)))
            got = sum(reveal(i, plan[name]) for i, name in enumerate(names))
            if got == 0:
                break
            left -= got
    else:
        for i in range(n_prompts):
            reveal(i, budget // n_prompts)
    groups = []
    for i, name in enumerate(names):
        chosen = [s for s in bandit.select_group(name, fresh_seed_start=k).seeds if s < k]
        # Fallback seeds are fresh random seeds: unexplored seeds of the pool stand in for them.
        groups.append(chosen + [int(s) for s in order_PK[i, taken[i] :]][: g - len(chosen)])
    return groups, sum(taken)


def _gain(a: dict[str, np.ndarray], rows: np.ndarray, key: str, sec_per_seed: float) -> float:
    """Variance over random groups per exploration GPU-second, on the ``rows`` selected."""
    extra = a[key][rows].mean() - a["r"][rows].mean()
    return float(extra / (a["s" + key][rows].mean() * sec_per_seed))


def bandit_vs_uniform(
    explore: dict[int, np.ndarray],
    rollout: dict[int, np.ndarray],
    size: dict[str, Any],
    sec_per_seed: float,
) -> dict[str, Any]:
    """Same budget, same run, batches of ``batch`` prompts of mixed difficulty."""
    g, n_batch = size["group"], size["batch"]
    pairs = [(j - 1, j) for j in sorted(rollout) if j - 1 in explore]
    out: dict[str, Any] = {}
    for per_prompt in size["budgets"]:
        acc: dict[str, list[float]] = {"b": [], "u": [], "r": [], "sb": [], "su": [], "pair": []}
        for i, j in pairs:
            rng = np.random.default_rng(1000 * j + per_prompt)
            for _ in range(size["repeats"]):
                batch = rng.choice(rollout[j].shape[0], n_batch, replace=False)
                ex, ro = explore[i][batch], rollout[j][batch]
                order = np.stack([rng.permutation(ro.shape[1]) for _ in batch])
                for key, rounds in (("b", True), ("u", False)):
                    groups, spent = spend(ex, order, per_prompt * n_batch, g, bandit_rounds=rounds)
                    acc[key].append(
                        float(np.mean([ro[p, grp].var() for p, grp in enumerate(groups)]))
                    )
                    acc["s" + key].append(spent)
                # E[population variance of a random G-subset] = (G−1)/G · S² (S²: ddof=1).
                acc["r"].append(float(np.mean(ro.var(axis=1, ddof=1) * (g - 1) / g)))
                acc["pair"].append(j)
        a = {key: np.asarray(v) for key, v in acc.items()}
        every = np.ones(a["r"].size, dtype=bool)
        gb, gu = _gain(a, every, "b", sec_per_seed), _gain(a, every, "u", sec_per_seed)
        per_pair = [
            _gain(a, a["pair"] == j, "b", sec_per_seed)
            / _gain(a, a["pair"] == j, "u", sec_per_seed)
            for _, j in pairs
        ]
        out[str(per_prompt)] = {
            "bandit_selected_variance": float(a["b"].mean()),
            "uniform_selected_variance": float(a["u"].mean()),
            "random_group_variance": float(a["r"].mean()),
            "bandit_seeds_spent": float(a["sb"].mean()),
            "uniform_seeds_spent": float(a["su"].mean()),
            "bandit_gain_per_gpu_s": gb,
            "uniform_gain_per_gpu_s": gu,
            "bandit_vs_uniform_variance_gain": gb / gu if gu > 0 else math.nan,
            "ratio_over_pairs": summary(per_pair),
            "batches": int(a["r"].size),
        }
    return out


async def actor_run(
    policy: DiTPolicy, size: dict[str, Any], trainer: SamplerConfig
) -> dict[str, Any]:
    """Scheduler + 2 explorers + planner in one runtime; a trainer loop of real iterations."""
    cfg = learning_algo({"prompts_per_iter": size["actor_prompts"], "group_size": size["group"]})
    by_kind = train_by_kind()
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    async with Runtime(RuntimeConfig(ask_timeout_s=30.0)) as rt:
        sched = await rt.spawn(
            SchedulerActor, name="explore-scheduler", config=SchedulingConfig(lease_ttl_s=60.0)
        )
        bandit = BanditConfig(group_size=cfg.group_size, seconds_per_seed=0.05)
        planner = await rt.spawn(
            PlannerActor,
            name="planner",
            scheduler=sched,
            config=PlannerConfig(
                bandit=bandit, explore_steps=trainer.num_steps, default_iteration_s=5.0
            ),
        )
        settings = ExploreSettings(
            trainer_sampler=trainer, micro_batch=32, pull_batch=16, idle_pull_s=0.05
        )
        for i in range(2):
            await rt.spawn(
                ExplorerActor,
                name=f"explorer-{i}",
                scheduler=sched,
                worker_id=f"explorer-{i}",
                settings=settings,
                model=policy.config,
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
        rows: dict[str, list[float]] = {"wait": [], "floor": [], "answer": [], "fb": [], "ex": []}
        batches = [
            iteration_prompts(by_kind, 1, k, cfg.prompts_per_iter)
            for k in range(size["actor_iters"] + 1)
        ]
        for k in range(size["actor_iters"]):
            t_start = time.time()
            await planner.plan.ask(f"b{k + 1}", batches[k + 1], t_start, timeout=10.0)
            t0 = time.perf_counter()
            await planner.statistics.ask(timeout=10.0)
            rows["floor"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            plan = await seeds_for_iteration(planner, f"b{k}", batches[k], cfg.group_size)
            rows["wait"].append(time.perf_counter() - t0)
            rows["answer"].append(plan.answer_s)
            rows["fb"].append(plan.fallback_seeds)
            rows["ex"].append(plan.explored_seeds)
            ps, ss = flatten(plan)
            await asyncio.to_thread(flow_grpo_iteration, policy, opt, ps, ss, reward_fn(), cfg)
            await planner.record_iteration.tell(time.time() - t_start)
            state = copy.deepcopy(policy.state_dict())
            for ref in explorers.values():
                await ref.load_weights.tell(k + 1, state)
        stats = await planner.statistics.ask(timeout=10.0)
    tolerance = 0.010
    excess = [max(0.0, w - f - tolerance) for w, f in zip(rows["wait"], rows["floor"], strict=True)]
    return {
        "trainer_wait_s_due_to_exploration": float(sum(excess)),
        "take_groups_ask_s": rows["wait"],
        "plain_ask_s": rows["floor"],
        "planner_answer_s": rows["answer"],
        "wait_tolerance_s": tolerance,
        "fallback_seeds_per_batch": rows["fb"],
        "explored_seeds_per_batch": rows["ex"],
        "late_results": stats.late_results,
        "skipped_results": stats.skipped_results,
        "measured_seconds_per_seed": stats.seconds_per_seed,
        "note": "batch b0 has no plan (first iteration): all fallback by design",
    }


def collect(args: argparse.Namespace, size: dict[str, Any]) -> dict[str, Any]:
    """Train, then score every (setting, version) (resumable through ``--cache``)."""
    policy, base_desc = find_base(args.base)
    print(f"base: {base_desc}", flush=True)
    initial = copy.deepcopy(policy.state_dict())
    algo = learning_algo(size["train"])
    trainer = algo.sampler
    by_kind = train_by_kind()
    trained = {
        p
        for k in range(size["iters"])
        for p in iteration_prompts(by_kind, 0, k, algo.prompts_per_iter)
    }
    prompts = eval_prompts(size["per_kind"], trained)
    seeds = [int(s) for s in np.random.default_rng(12).integers(0, 2**31 - 1, size["seeds"])]
    conditions = {
        "base": base_desc,
        "algo": repr(algo),
        "iters": size["iters"],
        "prompts": prompts,
        "seeds": seeds,
    }
    cache = Cache(args.cache, conditions)
    extra = size.get("extra")
    versions = set(size["roll_versions"]).union(*size["cheap"].values())
    versions |= set(extra["versions"]) if extra else set()
    states, train_meta = train_run(policy, algo, size["iters"], versions, cache)
    score_args = (prompts, seeds, trainer, cache)
    rollout, sps = score(policy, states, ROLLOUT, size["roll_versions"], *score_args)
    assert sps is not None, "every scored version has its cost in the cache"
    cost: dict[str, float | None] = {ROLLOUT: sps}
    cheap = {}
    for cname, vs in size["cheap"].items():
        cheap[cname], cost[cname] = score(policy, states, cname, vs, *score_args)
    wide: dict[int, np.ndarray] = {}
    if extra:  # more seeds for a few versions: what a larger K buys
        more = [int(s) for s in np.random.default_rng(13).integers(0, 2**31 - 1, extra["seeds"])]
        add, _ = score(
            policy,
            states,
            ROLLOUT,
            extra["versions"],
            prompts,
            more,
            trainer,
            cache,
            tag=f"rollout-x{extra['seeds']}",
        )
        wide = {v: np.concatenate([rollout[v], add[v]], axis=1) for v in extra["versions"]}
    policy.load_state_dict(initial)
    return {
        "policy": policy,
        "base": base_desc,
        "algo": algo,
        "prompts": prompts,
        "train_meta": train_meta,
        "rollout": rollout,
        "cheap": cheap,
        "cost": cost,
        "wide": wide,
    }


_TOP = {
    "ratio_over_pairs": "selected_std_over_random_std_over_pairs",
    "ratio_by_kind": "selected_std_over_random_std_by_kind",
}
"""Names of ``selection``'s keys at the top level of the result."""


def analyse(d: dict[str, Any], size: dict[str, Any]) -> dict[str, Any]:
    """Every figure of the issue from the scored rewards (pure numpy; seconds)."""
    rollout, cheap, prompts, g = d["rollout"], d["cheap"], d["prompts"], size["group"]
    lags = [lag for lag in (1, 2, 4, 8, 16) if any(j - lag in rollout for j in rollout)]
    detail = {ROLLOUT: spearman_by_lag(rollout, rollout, lags)}
    detail.update({n: spearman_by_lag(r, rollout, [0, *lags]) for n, r in cheap.items()})
    kind_of = np.array([prompt_kind_of(p) for p in prompts])
    lag1_by_kind = {
        kd: float(
            np.nanmean(
                [
                    np.nanmean(prompt_spearman(rollout[j - 1], rollout[j])[kind_of == kd])
                    for j in lag1_targets(rollout)
                ]
            )
        )
        for kd in KINDS
    }
    trainer, base_r = d["algo"].sampler, rollout[0]
    result: dict[str, Any] = {
        "mode": "quick" if size is SIZES["quick"] else "full",
        "base": d["base"],
        "conditions": {
            "training": {
                "iterations": size["iters"],
                "algo": repr(d["algo"]),
                "source": "benchmarks/results/learning.json settings",
                "train_s": d["train_meta"]["train_s"],
                "train_reward": [r["reward"] for r in d["train_meta"]["iterations"]],
            },
            "eval_prompts": prompts,
            "explored_seeds_K": size["seeds"],
            "group_G": g,
            "rollout_versions": size["roll_versions"],
            "cheap_versions": size["cheap"],
            "rollout_setting": f"{ROLLOUT}: noise {trainer.noise_level}, SDE window "
            f"{trainer.sde_window}, shift {trainer.shift}",
            "prompt_mean_reward_theta0": [float(x) for x in base_r.mean(axis=1)],
            "prompt_std_theta0": [float(x) for x in base_r.std(axis=1)],
            "torch_threads": torch.get_num_threads(),
            "nice": os.nice(0),
        },
        "seed_rank_spearman_lag1": detail[ROLLOUT]["1"]["mean"],
        "seed_rank_spearman_by_lag": {
            n: {lag: v["mean"] for lag, v in dd.items()} for n, dd in detail.items()
        },
        "seed_rank_spearman_detail": detail,
        "seed_rank_spearman_lag1_by_kind": lag1_by_kind,
        **{_TOP.get(k, k): v for k, v in selection(rollout, rollout, prompts, g).items()},
        "selected_std_over_random_std_symmetric_extremes": selection(
            rollout, rollout, prompts, g, rule="extremes"
        )["selected_std_over_random_std"],
        "selected_std_over_random_std_by_explored_k": {
            str(n): selection(rollout, rollout, prompts, g, k=n)["selected_std_over_random_std"]
            for n in sorted({2 * g, size["seeds"] // 2, size["seeds"]})
            if n >= g
        },
        "selected_std_over_random_std_oracle_lag0": selection(rollout, rollout, prompts, g, lag=0)[
            "selected_std_over_random_std"
        ],
        "selected_std_over_random_std_iid_normal_ceiling": iid_normal_ceiling(size["seeds"], g),
        "selection_with_cheap_exploration": {
            n: {
                k: v
                for k, v in selection(r, rollout, prompts, g).items()
                if k in ("selected_std_over_random_std", "zero_std_frac_selected")
            }
            for n, r in cheap.items()
            if any(j - 1 in r for j in rollout)
        },
        "seconds_per_seed": d["cost"],
    }
    if d["wide"]:
        result["larger_k"] = larger_k(d["wide"], prompts, g, size, d["cost"][ROLLOUT])
    t0 = time.perf_counter()
    bvu = bandit_vs_uniform(rollout, rollout, size, d["cost"][ROLLOUT])
    headline = str(size["headline_budget"])
    result["bandit_vs_uniform_variance_gain"] = bvu[headline]["bandit_vs_uniform_variance_gain"]
    result["bandit_vs_uniform_headline_budget_seeds_per_prompt"] = int(headline)
    result["bandit_vs_uniform_by_budget"] = bvu
    result["bandit_analysis_s"] = time.perf_counter() - t0
    return result


def larger_k(
    wide: dict[int, np.ndarray], prompts: list[str], g: int, size: dict[str, Any], sps: float
) -> dict[str, Any]:
    """Selection and bandit figures on the versions scored with twice the seeds."""
    k = next(iter(wide.values())).shape[1]
    ratio = {
        str(n): selection(wide, wide, prompts, g, k=n)["selected_std_over_random_std"]
        for n in (size["seeds"], k)
    }
    sel = selection(wide, wide, prompts, g)
    wide_size = {**size, "seeds": k, "budgets": [size["seeds"] // 2, size["seeds"]]}
    return {
        "explored_seeds_K": k,
        "pairs": [[j - 1, j] for j in lag1_targets(wide)],
        "selected_std_over_random_std_by_explored_k": ratio,
        "selected_std_over_random_std_ratio_over_pairs": sel["ratio_over_pairs"],
        "zero_std_frac_selected": sel["zero_std_frac_selected"],
        "zero_std_frac_random": sel["zero_std_frac_random"],
        "selected_std_over_random_std_oracle_lag0": selection(wide, wide, prompts, g, lag=0)[
            "selected_std_over_random_std"
        ],
        "selected_std_over_random_std_iid_normal_ceiling": iid_normal_ceiling(k, g),
        "bandit_vs_uniform_by_budget": bandit_vs_uniform(wide, wide, wide_size, sps),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, < 60 s")
    ap.add_argument("--base", default=None, help="base checkpoint directory (default: shipped)")
    ap.add_argument("--out", default=None, help="result JSON (default: benchmarks/results/)")
    ap.add_argument("--cache", default=None, help="resume directory for weights and scores")
    ap.add_argument("--skip-actors", action="store_true", help="leave out the actor run")
    args = ap.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    name = "exploration_quick.json" if args.quick else "exploration.json"
    out = Path(args.out or REPO / "benchmarks/results" / name)
    previous = json.loads(out.read_text()) if out.is_file() else None
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
    t_all = time.perf_counter()
    load_start = os.getloadavg()[0]
    data = collect(args, size)
    result = analyse(data, size)
    if not args.skip_actors:
        result.update(asyncio.run(actor_run(data["policy"], size, data["algo"].sampler)))
    result["load_avg_1m"] = {"start": load_start, "end": os.getloadavg()[0]}
    result["wall_s"] = time.perf_counter() - t_all
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    report(result, previous)
    print(f"wrote {out} in {result['wall_s']:.1f}s", flush=True)
    return 0


def report(r: dict[str, Any], prev: dict[str, Any] | None) -> None:
    """Each figure beside its target (ratio to it) and the previous run's value in the file."""

    def was(key: str) -> str:
        v = (prev or {}).get(key)
        return f"  (previous run: {v:.3f})" if isinstance(v, (int, float)) else ""

    zr, zs = r["zero_std_frac_random"], r["zero_std_frac_selected"]
    sp = r["seed_rank_spearman_detail"][ROLLOUT]["1"]
    sel = r["selected_std_over_random_std_over_pairs"]
    bvu = r["bandit_vs_uniform_by_budget"][
        str(r["bandit_vs_uniform_headline_budget_seeds_per_prompt"])
    ]
    print(
        f"\nbase: {r['base']}; K={r['conditions']['explored_seeds_K']} G={r['conditions']['group_G']}"
    )
    s = r["seed_rank_spearman_lag1"]
    print(
        f"  Spearman lag 1          {s:6.3f}  target >= 0.7: {s / 0.7:.2f}x  "
        f"{'MET' if s >= 0.7 else 'MISSED'}  median {sp['median']:.3f} over {sp['n']} "
        f"iteration pairs, range {sp['min']:.3f}-{sp['max']:.3f}{was('seed_rank_spearman_lag1')}"
    )
    v = r["selected_std_over_random_std"]
    print(
        f"  selected/random std     {v:6.3f}  target >= 2: {v / 2:.2f}x  "
        f"{'MET' if v >= 2 else 'MISSED'}  median {sel['median']:.3f} over {sel['n']} pairs, "
        f"range {sel['min']:.3f}-{sel['max']:.3f}; perfect ranking "
        f"{r['selected_std_over_random_std_oracle_lag0']:.3f}, i.i.d.-normal ceiling "
        f"{r['selected_std_over_random_std_iid_normal_ceiling']:.3f}"
        f"{was('selected_std_over_random_std')}"
    )
    zratio = zr / zs if zs > 0 else (math.inf if zr > 0 else math.nan)
    verdict = "MET" if zratio >= 2 else "MISSED"
    if zr < 0.01:
        verdict += " (trivially: random groups are almost never flat under this reward)"
    print(
        f"  zero-std frac           random {zr:.4f} -> selected {zs:.4f}: {zratio:.2f}x "
        f"fewer, target >= 2x  {verdict}"
    )
    b = r["bandit_vs_uniform_variance_gain"]
    pairs = bvu["ratio_over_pairs"]
    print(
        f"  bandit/uniform gain/GPU-s {b:5.3f}  target > 1: {'MET' if b > 1 else 'MISSED'}  "
        f"median {pairs['median']:.3f} over {pairs['n']} pairs, range {pairs['min']:.3f}-"
        f"{pairs['max']:.3f}; by budget/prompt "
        + ", ".join(
            f"{k}: {x['bandit_vs_uniform_variance_gain']:.3f}"
            for k, x in r["bandit_vs_uniform_by_budget"].items()
        )
        + was("bandit_vs_uniform_variance_gain")
    )
    if "trainer_wait_s_due_to_exploration" in r:
        w = r["trainer_wait_s_due_to_exploration"]
        print(f"  trainer wait (s)        {w:6.3f}  target 0  {'MET' if w <= 0 else 'MISSED'}")
    if "larger_k" in r:
        lk = r["larger_k"]
        print(
            f"  with K={lk['explored_seeds_K']} on pairs {lk['pairs']}: selected/random std "
            + ", ".join(
                f"K={k} {x:.3f}"
                for k, x in lk["selected_std_over_random_std_by_explored_k"].items()
            )
            + f" (target 2; perfect ranking {lk['selected_std_over_random_std_oracle_lag0']:.3f},"
            f" i.i.d.-normal {lk['selected_std_over_random_std_iid_normal_ceiling']:.3f});"
            " bandit/uniform by budget/prompt "
            + ", ".join(
                f"{k}: {x['bandit_vs_uniform_variance_gain']:.3f}"
                for k, x in lk["bandit_vs_uniform_by_budget"].items()
            )
        )
    for name, lagd in r["seed_rank_spearman_by_lag"].items():
        print(f"  spearman {name:42s} " + " ".join(f"lag{k}={x:.2f}" for k, x in lagd.items()))
    print(
        "  seconds per seed: "
        + ", ".join(f"{k} {x * 1e3:.0f} ms" for k, x in r["seconds_per_seed"].items() if x)
    )


if __name__ == "__main__":
    sys.exit(main())
