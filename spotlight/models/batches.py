"""Which prompts and seeds an iteration uses, and the fixed validation set.

Every choice is a pure function of (run seed, iteration), so a resumed run, another
data-parallel rank and the local trainer all draw the same batch without talking.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VAL_SEED_OFFSET = 10**12
"""Validation seeds are offset far from training seeds so a held-out score never reuses a
training seed's noise."""


def iteration_prompts(
    train_by_kind: dict[str, list[str]], run_seed: int, iteration: int, count: int
) -> list[str]:
    """``count`` distinct-draw prompts for ``iteration``: a kind uniformly, then a caption.

    Kind-balanced like the validation set, so RL does not spend 80% of its samples on
    position captions (the most numerous kind of the grammar).
    """
    rng = np.random.default_rng([run_seed, iteration, 1])
    kinds = sorted(k for k, v in train_by_kind.items() if v)
    out = []
    for _ in range(count):
        kind = kinds[int(rng.integers(len(kinds)))]
        out.append(train_by_kind[kind][int(rng.integers(len(train_by_kind[kind])))])
    return out


def iteration_seeds(run_seed: int, iteration: int, count: int) -> list[int]:
    """Distinct seeds for every (run, iteration, sample) (up to 4096 samples an iteration)."""
    if count > 4096:
        raise ValueError(f"at most 4096 samples per iteration, got {count}")
    return [(run_seed * 1_000_003 + iteration) * 4096 + i for i in range(count)]


def validation_set(
    held_out: Sequence[str], per_kind: int, n_seeds: int
) -> tuple[list[str], list[int]]:
    """A fixed stratified subset of held-out prompts and the fixed validation seeds."""
    from spotlight.models.scenes import KINDS, prompt_kind_of

    by_kind: dict[str, list[str]] = {k: [] for k in KINDS}
    for p in held_out:
        by_kind[prompt_kind_of(p)].append(p)
    prompts = [p for k in KINDS for p in by_kind[k][:per_kind]]
    return prompts, [VAL_SEED_OFFSET + i for i in range(n_seeds)]
