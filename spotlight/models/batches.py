"""Which prompts and seeds an iteration uses, and the fixed validation set.

Every choice is a pure function of (run seed, iteration), so a resumed run, another
data-parallel rank and the local trainer all draw the same batch without talking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


FILE_KIND = "file"
"""The one kind of a prompt file's prompts (they carry no grammar to stratify by)."""


@dataclass(frozen=True)
class PromptSet:
    """Where a run's prompts come from: training prompts by kind, and the validation set."""

    train_by_kind: dict[str, list[str]]
    val_prompts: list[str]
    val_seeds: list[int]


def scene_prompt_set(per_kind: int, n_seeds: int, *, fit_validation: bool = False) -> PromptSet:
    """The procedural scene captions: train/held-out split, kind-stratified validation.

    ``fit_validation``: train on the validation prompts themselves (a diagnostic control)."""
    from spotlight.models.scenes import prompt_kind_of, prompt_split

    train, held_out = prompt_split()
    val_prompts, val_seeds = validation_set(held_out, per_kind, n_seeds)
    by_kind: dict[str, list[str]] = {}
    for p in val_prompts if fit_validation else train:
        by_kind.setdefault(prompt_kind_of(p), []).append(p)
    return PromptSet(by_kind, val_prompts, val_seeds)


def read_prompt_file(path: str | Path) -> list[str]:
    """A prompt file's prompts: one per line, blank lines and ``#`` comments skipped,
    duplicates kept once (first occurrence). ValueError naming the file when it cannot serve."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"prompt file {p} does not exist (one prompt per line)")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"prompt file {p} is not UTF-8 text: {e}") from None
    prompts = [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]
    unique = list(dict.fromkeys(prompts))
    if len(unique) < 2:
        raise ValueError(
            f"prompt file {p} has {len(unique)} distinct prompt(s); it needs at least 2 "
            "(one to train on, one held out for validation)"
        )
    return unique


def file_prompt_set(
    path: str | Path,
    n_val: int,
    n_seeds: int,
    *,
    held_out_frac: float = 0.1,
    seed: int = 0,
    fit_validation: bool = False,
) -> PromptSet:
    """A prompt file split like the scenes: a seeded ``held_out_frac`` (at least one prompt)
    is held out, and validation uses up to ``n_val`` of those with the fixed validation seeds.

    Why held out: the validation score must measure what the policy learned for prompts it
    never trained on, as the scene set's does."""
    prompts = read_prompt_file(path)
    order = np.random.default_rng(seed).permutation(len(prompts)).tolist()
    n_held = min(len(prompts) - 1, max(1, round(held_out_frac * len(prompts))))
    held_idx = set(order[:n_held])
    held_out = [q for i, q in enumerate(prompts) if i in held_idx]
    train = [q for i, q in enumerate(prompts) if i not in held_idx]
    val_prompts = held_out[:n_val]
    return PromptSet(
        {FILE_KIND: val_prompts if fit_validation else train},
        val_prompts,
        [VAL_SEED_OFFSET + i for i in range(n_seeds)],
    )
