"""The base's validation score and the testbed diagnostics its card records.

The validation score is the number every time-to-target figure uses: the mean reward over a
fixed set of held-out prompts × fixed seeds with the ODE sampler. For the latent testbed the
card also records what decides whether RL *can* learn from this base (issue 18's gates):

- ``strict_acc``: images whose every check passed (GenEval's own accuracy);
- ``check_pass1`` / ``check_pass8``: per check, the pass rate of one seed and of the best of 8
  seeds — a check the base passes sometimes (pass@1 0.6–0.8) but almost always within 8 seeds
  (pass@8 ≥ 0.95) is a learnable mistake;
- ``shape_acc``: among detections of a colour the prompt names, the fraction with the shape
  it names — shapes must be drawn recognisably before shape checks are a fair signal;
- ``zero_std_frac``: prompts whose 8 validation rewards are all equal (flat groups).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from spotlight.models import scenes
from spotlight.models.bases import load_checkpoint
from spotlight.models.checkpoint import save_checkpoint
from spotlight.models.dit import DiTPolicy
from spotlight.models.flow_grpo import ValidationResult, decode, generate, validate
from spotlight.models.rewards import build_reward
from spotlight.models.rewards.checks import GenEvalChecks, strict_accuracy
from spotlight.models.rewards.geneval import GenEvalReward
from spotlight.models.sampler import SamplerConfig

__all__ = [
    "DEFAULT_REWARD",
    "VAL_PROMPTS",
    "VAL_SEEDS",
    "score_checkpoint",
    "seed_spread",
    "testbed_diagnostics",
    "validation_prompts",
    "validation_score",
]

VAL_PROMPTS = 64
"""Held-out prompts in the base validation score (evenly spaced over the sorted held-out split)."""
VAL_SEEDS: tuple[int, ...] = tuple(range(1_000_000, 1_000_008))
"""Fixed evaluation seeds, far from the small seeds RL rollouts use."""
DEFAULT_REWARD = "checks"
"""The reward of the validation score: GenEval-style binary checks, averaged (checks.py)."""


def validation_prompts(n: int = VAL_PROMPTS) -> list[str]:
    """A fixed, kind-mixed subset of the held-out prompts (all of them if ``n`` ≥ their count)."""
    held_out = sorted(scenes.prompt_split()[1])
    if n >= len(held_out):
        return held_out
    idx = np.linspace(0, len(held_out) - 1, n).round().astype(int)
    return [held_out[i] for i in idx]


def validation_score(
    policy: DiTPolicy,
    *,
    prompts: Sequence[str] | None = None,
    seeds: Sequence[int] = VAL_SEEDS,
    sampler: SamplerConfig | None = None,
    reward: str = DEFAULT_REWARD,
) -> ValidationResult:
    """Mean ``reward`` over held-out prompts × ``seeds`` with the ODE sampler (flow_grpo.validate)."""
    return validate(
        policy,
        list(prompts) if prompts is not None else validation_prompts(),
        list(seeds),
        build_reward(reward),
        sampler or SamplerConfig(),
    )


def seed_spread(result: ValidationResult) -> float:
    """Mean over prompts of the std of rewards across seeds: the variance GRPO groups see."""
    return float(result.rewards_PS.std(axis=1).mean())


def _shape_hits(detector: GenEvalReward, image: np.ndarray, prompt: str) -> tuple[int, int]:
    """(detections whose colour the prompt names with the shape it names, such detections)."""
    spec = scenes.parse_prompt(prompt)
    wanted = {(o.color, o.shape) for o in spec.objects}
    colors = {c for c, _ in wanted}
    dets = [d for d in detector.detect(image) if d.color in colors]
    return sum((d.color, d.shape) in wanted for d in dets), len(dets)


def testbed_diagnostics(
    policy: DiTPolicy,
    *,
    prompts: Sequence[str] | None = None,
    seeds: Sequence[int] = VAL_SEEDS,
    sampler: SamplerConfig | None = None,
) -> dict[str, Any]:
    """The gates of the module docstring, from one ODE pass over prompts × seeds."""
    prompts = list(prompts) if prompts is not None else validation_prompts()
    pairs_p = [p for p in prompts for _ in seeds]
    pairs_s = [s for _ in prompts for s in seeds]
    states, _ = generate(
        policy, pairs_p, pairs_s, sampler or SamplerConfig(), micro_batch=64, mode="ode"
    )
    images = decode(policy, states)
    checker = GenEvalChecks()
    results = [checker.check(img, p) for img, p in zip(images, pairs_p, strict=True)]
    scores = np.array([r.score for r in results]).reshape(len(prompts), len(seeds))
    by_check: dict[str, list[list[bool]]] = {}
    for i in range(len(prompts)):
        names = results[i * len(seeds)].checks
        for name in names:
            row = [results[i * len(seeds) + j].checks[name] for j in range(len(seeds))]
            by_check.setdefault("count" if name.startswith("count_") else name, []).append(row)
    hits = [_shape_hits(checker._detector, img, p) for img, p in zip(images, pairs_p, strict=True)]
    right, seen = (sum(h[k] for h in hits) for k in (0, 1))
    return {
        "score": float(scores.mean()),
        "strict_acc": strict_accuracy(scores.ravel()),
        "check_pass1": {k: float(np.mean(v)) for k, v in by_check.items()},
        "check_pass8": {k: float(np.mean([any(r) for r in v])) for k, v in by_check.items()},
        "shape_acc": right / seen if seen else 0.0,
        "zero_std_frac": float((scores.std(axis=1) == 0).mean()),
        "per_seed_scores": scores.mean(axis=0).tolist(),
        "prompts": len(prompts),
        "seeds": len(seeds),
    }


def score_checkpoint(path: str | os.PathLike[str], **kwargs: Any) -> ValidationResult:
    """Compute the validation score of a saved checkpoint and write it into its card."""
    policy, card = load_checkpoint(path)
    sampler = kwargs.get("sampler") or SamplerConfig()
    result = validation_score(policy, **kwargs)
    metrics = {
        **card.metrics,
        "val_score_seed_spread": seed_spread(result),
        "val_score_spread_over_seed_sets": result.spread,
        "val_protocol": {
            "prompts": len(result.per_prompt),
            "seeds": list(kwargs.get("seeds", VAL_SEEDS)),
            "sampler": dataclasses.asdict(sampler),
            "reward": kwargs.get("reward", DEFAULT_REWARD),
        },
        "val_per_prompt": {
            p: [round(float(r), 4) for r in row]
            for p, row in zip(result.per_prompt, result.rewards_PS, strict=True)
        },
    }
    if policy.config.vae is not None:
        metrics["testbed"] = testbed_diagnostics(policy, sampler=sampler)
    save_checkpoint(
        policy, path, dataclasses.replace(card, val_score=result.score, metrics=metrics)
    )
    return result
