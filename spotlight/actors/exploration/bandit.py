"""The exploration bandit: how many more seeds each prompt gets, and which G seeds the trainer uses.

Why a bandit. A GRPO group teaches only when its rewards differ. Explorers (spot GPUs, previous
weights θ_{k−1}) sample candidate seeds; the trainer later rolls out, with θ_k, the G seeds per
prompt whose explored rewards spread the most. Exploration is paid in spot GPU-seconds and must
end before the trainer needs the batch, so the budget goes where one more seed raises the
achievable group variance the most. Prompts whose rewards are already spread (variance of the
best group saturated) or that look hopeless gain little; prompts with rare successes gain a lot.

The bandit, precisely:
- **Arms**: the prompts of the next batch. Pulling arm p = exploring one more seed of p.
- **Value of a prompt's explored set S**: V_G(S) = the largest population variance of any
  G-subset of S's rewards. The maximising subset is always made of extremes (the top j and the
  bottom G−j rewards for some j), so V_G costs a sort and G+1 evaluations.
- **Value estimate of m more pulls** (expected improvement): E[V_G(S ∪ R_m)] − V_G(S), with R_m
  drawn m at a time from a posterior predictive: with probability w0 / (n + w0) a reward from
  the prior (uniform on [0, 1], rewards being partial credits in that range), otherwise a
  resample of an observed reward plus Gaussian jitter of width ``jitter``. Monte Carlo with
  ``mc_draws`` draws from a seeded generator, so a plan is reproducible.
- **Exploration bonus**: a UCB term β·sqrt(ln(N + 1) / (n_p + 1)) (N = seeds explored in all,
  n_p = for p) scaled by the prompt's reward range so far, so an under-sampled prompt is not
  starved by a noisy early estimate. β = 0 gives the pure expected-improvement greedy.
- **Cost model**: every explored seed of p costs ``seconds_per_seed`` spot GPU-seconds (measured
  by the explorers; it depends on denoising steps and resolution, not on the prompt). The budget
  is ``ExplorationBudget``: GPU-seconds that fit before the trainer's next batch deadline.
  ``allocate`` converts it to seeds with the configured cost; a caller that tracks the measured
  cost itself (the planner) converts first and calls ``allocate_seeds`` with a seed count.
- **Allocation**: first every prompt is filled up to G explored seeds (``fill_to_group``),
  fewest first, one seed at a time; then greedy on marginal value per GPU-second over
  m = 1..``max_per_prompt`` extra seeds per prompt, the standard approximation for a knapsack
  of diminishing returns. Why the fill: a prompt with fewer than G explored seeds is padded
  with random seeds whose rewards nobody chose, yet V_G of a short set is the variance of
  the few seeds seen, so two lucky extremes make a prompt look saturated (on a micro base,
  4 prompts × 16 seeds, G = 4: 0.89× the variance gain per GPU-second of a uniform split
  without the fill, 1.00× with it).
- **Measured** (scripts/bench_exploration.py on the real tiny base, 16 Flow-GRPO iterations,
  25 kind-stratified prompts × 32 seeds explored under θ_{k−1}, batches of 8 prompts, G = 8,
  groups rolled out under θ_k): the bandit's groups gain 1.10× the variance per exploration
  GPU-second of a uniform split at 16 seeds per prompt (1.14× at 12, 1.05× at 24; 1.00–1.19×
  over 5 iteration pairs). The gain is modest because every prompt of this base has a spread
  (per-prompt reward std 0.14–0.34); it grows with flat, saturated or rare-success prompts
  (tests/actors/test_bandit.py) — see benchmarks/results/exploration.json.

The planner never delays the trainer: ``select_group`` always returns G seeds, filling from fresh
random seeds when a prompt has fewer than G explored, and says so (``fallback_seeds``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from spotlight.models.selection import best_group


@dataclass(frozen=True, kw_only=True)
class BanditConfig:
    group_size: int = 8
    """G: seeds per prompt the trainer rolls out."""
    seconds_per_seed: float = 1.0
    """Spot GPU-seconds one explored seed costs (measured by the explorers)."""
    prior_weight: float = 1.0
    """w0: pseudo-observations of the uniform prior; keeps never-varied prompts slightly alive."""
    jitter: float = 0.05
    """Std of the Gaussian kernel around resampled rewards (reward units)."""
    exploration_bonus: float = 0.02
    """β of the UCB bonus; 0 is pure expected improvement."""
    mc_draws: int = 128
    """Monte Carlo draws per value estimate."""
    max_per_prompt: int = 16
    """Most extra seeds one prompt may get in one allocation round."""
    fill_to_group: bool = True
    """Fill every prompt up to ``group_size`` explored seeds before the greedy (see above)."""

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"group_size={self.group_size}: a GRPO group needs at least 2 seeds")
        if self.seconds_per_seed <= 0:
            raise ValueError(f"seconds_per_seed={self.seconds_per_seed} must be > 0")
        for name in ("prior_weight", "jitter", "exploration_bonus"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.mc_draws < 1 or self.max_per_prompt < 1:
            raise ValueError("mc_draws and max_per_prompt must be >= 1")


def best_group_variance(rewards: Sequence[float] | np.ndarray, group_size: int) -> float:
    """V_G: the largest population variance over all ``group_size``-subsets of ``rewards``.

    With fewer rewards than ``group_size`` it is the variance of all of them (the trainer will
    pad the group with random seeds, whose rewards are unknown).
    """
    return float(best_group(np.sort(np.asarray(rewards, dtype=np.float64)), group_size)[1])


def _best_group_variance_batch(rewards_DK: np.ndarray, group_size: int) -> np.ndarray:
    """V_G of each row of ``rewards_DK`` (rows already sorted), vectorised over rows."""
    d, k = rewards_DK.shape
    if k <= group_size:
        return rewards_DK.var(axis=1)
    best = np.full(d, -1.0)
    for j in range(group_size + 1):
        subset = np.concatenate([rewards_DK[:, : group_size - j], rewards_DK[:, k - j :]], axis=1)
        best = np.maximum(best, subset.var(axis=1))
    return best


@dataclass(frozen=True)
class ExplorationBudget:
    """Spot GPU-seconds exploration may spend before the trainer needs the next batch."""

    gpu_seconds: float

    @classmethod
    def predict(
        cls,
        *,
        recent_iteration_s: Sequence[float],
        elapsed_in_iteration_s: float,
        spot_gpus: int,
        safety: float = 0.8,
        recent_busy_s: Sequence[float] = (),
    ) -> ExplorationBudget:
        """Budget from the trainer's measured iteration times and the spot GPUs alive now.

        The median of recent iterations predicts when the next batch is due; ``safety`` keeps
        a margin for stragglers, because a late exploration falls back rather than waits.
        ``recent_busy_s``: how long the spot GPUs served the trainer's rollouts at the start
        of recent iterations (the rollout pool); exploration only has the time after that.
        """
        if not recent_iteration_s:
            raise ValueError("need at least one measured iteration time to predict a budget")
        if not 0 < safety <= 1:
            raise ValueError(f"safety={safety} must be in (0, 1]")
        busy_until = float(np.median(recent_busy_s)) if len(recent_busy_s) else 0.0
        free_from = max(elapsed_in_iteration_s, busy_until)
        remaining = max(0.0, float(np.median(recent_iteration_s)) - free_from)
        return cls(gpu_seconds=remaining * max(0, spot_gpus) * safety)


@dataclass(frozen=True)
class GroupChoice:
    prompt: str
    seeds: tuple[int, ...]
    explored_variance: float
    """Variance of the chosen seeds' explored rewards (θ_{k−1}); the rollout re-measures it."""
    fallback_seeds: int
    """How many of the seeds are fresh random ones because exploration had too few."""


class ExplorationBandit:
    """Explored (seed, reward) pairs per prompt, and the allocation/selection decisions on them."""

    def __init__(self, prompts: Sequence[str], config: BanditConfig, *, seed: int = 0) -> None:
        if len(set(prompts)) != len(prompts):
            raise ValueError("prompts must be unique: one arm per prompt")
        self.config = config
        self._rewards: dict[str, dict[int, float]] = {p: {} for p in prompts}
        self._rng = np.random.default_rng(seed)

    @property
    def prompts(self) -> list[str]:
        return list(self._rewards)

    def snapshot(self) -> ExplorationBandit:
        """An independent copy (rewards and random stream) to allocate from on another
        thread while this one keeps observing results on the event loop."""
        twin = ExplorationBandit.__new__(ExplorationBandit)
        twin.config = self.config
        twin._rewards = {p: dict(r) for p, r in self._rewards.items()}
        twin._rng = copy.deepcopy(self._rng)
        return twin

    def adopt_rng(self, twin: ExplorationBandit) -> None:
        """Continue the random stream where ``twin`` (a :meth:`snapshot`) left it."""
        self._rng = twin._rng

    def observe(self, prompt: str, seed: int, reward: float) -> None:
        """Record an explored seed's reward (a repeat of the same seed overwrites)."""
        if prompt not in self._rewards:
            raise KeyError(f"prompt {prompt!r} is not in this batch; known: {self.prompts}")
        if not math.isfinite(reward):
            raise ValueError(f"reward for {prompt!r} seed {seed} is {reward}")
        self._rewards[prompt][seed] = float(reward)

    def explored(self, prompt: str) -> Mapping[int, float]:
        return dict(self._rewards[prompt])

    def expected_gains(self, prompt: str, max_more: int) -> np.ndarray:
        """E[V_G(S ∪ R_m)] − V_G(S) for m = 1..max_more (the value estimate, see module doc)."""
        cfg = self.config
        observed = np.fromiter(self._rewards[prompt].values(), dtype=np.float64)
        n = observed.size
        base = best_group_variance(observed, cfg.group_size)
        draws = cfg.mc_draws
        from_prior = self._rng.random((draws, max_more)) < cfg.prior_weight / (n + cfg.prior_weight)
        prior = self._rng.random((draws, max_more))
        if n:
            resampled = observed[self._rng.integers(0, n, (draws, max_more))]
            resampled = np.clip(resampled + self._rng.normal(0, cfg.jitter, resampled.shape), 0, 1)
            new = np.where(from_prior, prior, resampled)
        else:
            new = prior
        gains = np.empty(max_more)
        for m in range(1, max_more + 1):
            pooled = np.sort(np.concatenate([np.tile(observed, (draws, 1)), new[:, :m]], axis=1))
            gains[m - 1] = _best_group_variance_batch(pooled, cfg.group_size).mean() - base
        return np.maximum(gains, 0.0)

    def allocate(self, budget: ExplorationBudget) -> dict[str, int]:
        """How many more seeds each prompt gets within ``budget`` (greedy on marginal value/cost),
        at the configured ``seconds_per_seed``."""
        return self.allocate_seeds(int(budget.gpu_seconds // self.config.seconds_per_seed))

    def allocate_seeds(self, affordable: int) -> dict[str, int]:
        """How many more seeds each prompt gets, ``affordable`` seeds in all at most.

        For a caller that converts GPU-seconds to seeds itself with a cost it measures (the
        planner's running estimate): every seed costs the same, so the greedy on marginal value
        per GPU-second is the greedy on marginal value per seed, and a budget in seeds avoids
        converting with a second, stale cost.
        """
        if not isinstance(affordable, (int, np.integer)) or isinstance(affordable, bool):
            raise ValueError(f"affordable={affordable!r} must be an int number of seeds")
        cfg = self.config
        affordable = int(affordable)
        if affordable <= 0:
            return {p: 0 for p in self._rewards}
        total = sum(len(r) for r in self._rewards.values())
        marginal: dict[str, np.ndarray] = {}
        for prompt, rewards in self._rewards.items():
            gains = self.expected_gains(prompt, cfg.max_per_prompt)
            steps = np.diff(np.concatenate([[0.0], gains]))
            spread = (max(rewards.values()) - min(rewards.values())) if rewards else 1.0
            bonus = (
                cfg.exploration_bonus
                * max(spread, 0.1)
                * math.sqrt(math.log(total + 1) / (len(rewards) + 1))
            )
            marginal[prompt] = steps + bonus / cfg.max_per_prompt
        plan = {p: 0 for p in self._rewards}
        if cfg.fill_to_group:
            affordable -= self._fill(plan, affordable)
        for _ in range(affordable):
            candidates = [(marginal[p][plan[p]], p) for p in plan if plan[p] < cfg.max_per_prompt]
            if not candidates:
                break
            value, prompt = max(candidates)
            if value <= 0:
                break
            plan[prompt] += 1
        return plan

    def _fill(self, plan: dict[str, int], affordable: int) -> int:
        """Give prompts short of G explored seeds one seed at a time, fewest first; returns
        the seeds given (each prompt's greedy then continues from its new count)."""
        g, cap = self.config.group_size, self.config.max_per_prompt
        given = 0
        while given < affordable:
            short = [
                (len(self._rewards[p]) + plan[p], p)
                for p in plan
                if len(self._rewards[p]) + plan[p] < g and plan[p] < cap
            ]
            if not short:
                break
            plan[min(short)[1]] += 1
            given += 1
        return given

    def select_group(self, prompt: str, *, fresh_seed_start: int) -> GroupChoice:
        """The G seeds the trainer rolls out for ``prompt``: the max-variance extremes.

        With fewer than G explored seeds the group is padded with fresh seeds counting up from
        ``fresh_seed_start`` (skipping explored ones), so the trainer is never kept waiting.
        """
        g = self.config.group_size
        explored = sorted(self._rewards[prompt].items(), key=lambda kv: (kv[1], kv[0]))
        if len(explored) >= g:
            j, variance = best_group(np.array([r for _, r in explored]), g)
            chosen = explored[: g - j] + explored[len(explored) - j :]
            return GroupChoice(prompt, tuple(s for s, _ in chosen), variance, 0)
        seeds = [s for s, _ in explored]
        taken = set(seeds)
        candidate = fresh_seed_start
        while len(seeds) < g:
            if candidate not in taken:
                seeds.append(candidate)
            candidate += 1
        variance = float(np.var([r for _, r in explored])) if explored else 0.0
        return GroupChoice(prompt, tuple(seeds), variance, g - len(explored))
