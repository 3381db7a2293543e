"""Seed selection as pure functions: explore candidate seeds with stale weights, keep the extremes.

Spotlight's central claim (PAPER.md): scoring K candidate seeds per prompt with the previous
iteration's weights θ_{k−1} (on spot GPUs, off the critical path) and rolling out the G seeds
whose rewards vary most makes each trainer iteration teach more than G random seeds. A seed
fixes a whole SDE trajectory's noise (sampler.py: all noise is a function of (seed, step)), so
the reward a seed earned under θ_{k−1} predicts the one it earns under θ_k as far as the seed
ranking survives one update (``exploration.json``: Spearman at lag 1).

The planner picks, among the explored seeds, the G whose rewards have the largest population
variance; that subset is always "the lowest G − j and the highest j" for some j
(``best_group``), which the bandit (actors) uses too.

Shape legend: P prompts, K candidates per prompt, G group size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spotlight.models.dit import DiTPolicy
from spotlight.models.flow_grpo import RewardFn, decode, generate
from spotlight.models.sampler import SamplerConfig

__all__ = ["Exploration", "best_group", "explore", "select_seeds"]


def best_group(sorted_r: np.ndarray, group_size: int) -> tuple[int, float]:
    """(j, variance) of the max-variance ``group_size``-subset of the ascending ``sorted_r``:
    the top j and the bottom ``group_size − j`` (with fewer values, all of them)."""
    n = sorted_r.size
    if n <= group_size:
        return n, float(sorted_r.var()) if n else 0.0
    best_j, best_var = 0, -1.0
    for j in range(group_size + 1):
        subset = np.concatenate([sorted_r[: group_size - j], sorted_r[n - j :]])
        var = float(subset.var())
        if var > best_var:
            best_j, best_var = j, var
    return best_j, best_var


@dataclass(frozen=True)
class Exploration:
    """Rewards of K candidate seeds per prompt under the explorer's weights."""

    prompts: list[str]
    seeds_PK: np.ndarray
    rewards_PK: np.ndarray


def explore(
    policy: DiTPolicy,
    prompts: Sequence[str],
    seeds_PK: np.ndarray,
    reward_fn: RewardFn,
    sampler: SamplerConfig,
    *,
    micro_batch: int = 64,
) -> Exploration:
    """Sample every (prompt, candidate seed) with the trainer's SDE sampler and score it."""
    k = seeds_PK.shape[1]
    pairs_p = [p for p in prompts for _ in range(k)]
    pairs_s = [int(s) for s in seeds_PK.ravel()]
    states, _ = generate(policy, pairs_p, pairs_s, sampler, micro_batch=micro_batch)
    rewards = np.asarray(reward_fn(decode(policy, states), pairs_p), dtype=np.float64)
    return Exploration(list(prompts), seeds_PK, rewards.reshape(len(prompts), k))


def select_seeds(exploration: Exploration, group_size: int) -> list[int]:
    """G seeds per prompt (prompt-major): the max-variance extremes of its candidates, ties
    broken by seed so the choice is deterministic."""
    chosen: list[int] = []
    for seeds_K, rewards_K in zip(exploration.seeds_PK, exploration.rewards_PK, strict=True):
        order = sorted(range(len(seeds_K)), key=lambda i: (rewards_K[i], seeds_K[i]))
        j, _ = best_group(rewards_K[order], group_size)
        keep = order[: group_size - j] + order[len(order) - j :]
        chosen.extend(int(seeds_K[i]) for i in keep)
    return chosen
