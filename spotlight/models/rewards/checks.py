"""GenEval-style binary checks: the mean of pass/fail checks per image, and strict accuracy.

GenEval scores an image 1 when every requirement of its prompt holds and 0 otherwise. A group
of samples then often has zero spread (all right or all wrong), which is exactly where choosing
seeds can matter: a group that is flat teaches nothing, a mixed one does (DESIGN.md, "what the
literature says about selection"). The partial-credit reward (geneval.py) is almost never flat,
so variance selection had nothing to remove. Here each prompt gives a few binary checks:

    exact count, per object group   detections with that group's colour AND shape == its count
    nothing extra                   no detection beyond the caption's objects
    relation (position captions)    every (first, second) pair of matched objects lies on the
                                    asked side: offset along the axis ≥ ``margin``·size and
                                    within a 60° cone of the axis (GenEval's rule)

The reward is their mean (dense enough to learn from: one check of three flips the reward by
1/3), and ``strict`` (all checks pass, reward exactly 1) is reported beside it, as GenEval does.
Detection is geneval.py's, so the two rewards agree on what they see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spotlight.models.rewards.batch import check_batch
from spotlight.models.rewards.geneval import Detection, GenEvalConfig, GenEvalReward
from spotlight.models.scenes import RELATION_AXES, PromptSpec, parse_prompt

__all__ = ["CheckResult", "ChecksConfig", "GenEvalChecks", "strict_accuracy"]


@dataclass(frozen=True, kw_only=True)
class ChecksConfig:
    """Thresholds of the relation check (detection thresholds are geneval.py's defaults)."""

    margin: float = 0.1
    """Offset along the relation axis, as a fraction of the image side, that counts as a side."""
    min_cos: float = 0.5
    """Cosine of the angle to the relation axis (0.5: a 60° cone, GenEval's)."""
    all_or_nothing: bool = False
    """Reward 1 only when every check passes, else 0 (GenEval's own strict accuracy as the
    reward). Binary, so a group of G samples is flat far more often than under the mean of
    the checks: the regime in which seed selection has flat groups to remove."""

    def __post_init__(self) -> None:
        if not 0.0 < self.margin < 1.0:
            raise ValueError(f"ChecksConfig.margin={self.margin} must lie strictly in (0, 1)")
        if not 0.0 <= self.min_cos < 1.0:
            raise ValueError(f"ChecksConfig.min_cos={self.min_cos} must lie in [0, 1)")


@dataclass(frozen=True)
class CheckResult:
    """The named checks of one image (True = passed)."""

    checks: dict[str, bool]

    @property
    def score(self) -> float:
        return sum(self.checks.values()) / len(self.checks)

    @property
    def strict(self) -> bool:
        return all(self.checks.values())


def strict_accuracy(rewards: np.ndarray) -> float:
    """Fraction of images whose checks all passed (a checks reward of exactly 1)."""
    return float((np.asarray(rewards) >= 1.0 - 1e-6).mean()) if np.size(rewards) else 0.0


class GenEvalChecks:
    """Binary-check reward (see the module docstring). Stateless; one per worker is fine."""

    name = "checks"

    def __init__(self, config: ChecksConfig | None = None) -> None:
        self.config = config if config is not None else ChecksConfig()
        self._detector = GenEvalReward(GenEvalConfig())

    def check(self, image: np.ndarray, prompt: str) -> CheckResult:
        """The checks of one uint8 H×W×3 image against one caption."""
        spec = parse_prompt(prompt)
        return self.check_detections(
            self._detector.detect(image), spec, size=float(max(image.shape[:2]))
        )

    def check_detections(
        self, dets: Sequence[Detection], spec: PromptSpec, *, size: float
    ) -> CheckResult:
        checks: dict[str, bool] = {}
        groups: list[list[Detection]] = []
        for gi, obj in enumerate(spec.objects):
            mine = [d for d in dets if d.color == obj.color and d.shape == obj.shape]
            groups.append(mine)
            checks[f"count_{gi}"] = len(mine) == obj.count
        checks["no_extra"] = len(dets) == sum(o.count for o in spec.objects)
        if spec.relation is not None:
            checks["relation"] = self._relation_holds(groups, spec.relation, size)
        return CheckResult(checks)

    def _relation_holds(self, groups: list[list[Detection]], relation: str, size: float) -> bool:
        first, second = groups
        if not first or not second:
            return False
        ux, uy = RELATION_AXES[relation]
        margin = self.config.margin * size
        for a in first:
            for b in second:
                dx, dy = b.cx - a.cx, b.cy - a.cy
                proj = dx * ux + dy * uy
                dist = float(np.hypot(dx, dy))
                if proj < margin or dist == 0 or proj / dist < self.config.min_cos:
                    return False
        return True

    def __call__(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        """Mean of the checks (or all-or-nothing), float32 [B] in [0, 1], for uint8 B×H×W×3."""
        check_batch(images, prompts)
        specs = [parse_prompt(p) for p in prompts]  # fail on a bad prompt before any work
        size = float(max(images.shape[1:3]))
        out = np.empty(len(specs), dtype=np.float32)
        for i, spec in enumerate(specs):
            dets = self._detector.detect(images[i])
            result = self.check_detections(dets, spec, size=size)
            out[i] = float(result.strict) if self.config.all_or_nothing else result.score
        return out
