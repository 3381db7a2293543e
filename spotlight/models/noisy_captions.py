"""Caption noise for pretraining: a base that is sometimes right and sometimes wrong on one prompt.

RL can only raise the probability of outputs the base already draws. A base pretrained on clean
captions is either right on a prompt (every seed: nothing to learn, the group is flat) or wrong
in ways it cannot fix (shapes it never learned to draw). Web alt-text is noisy in specific ways
— a count off by one, left and right swapped, colours attached to the wrong object — and a base
trained on such captions learns a *mixture*: for "a red circle left of a blue square" it draws
the right layout most of the time and the swapped one sometimes. Those are learnable mistakes:
the right answer is already in the base's distribution, so Flow-GRPO has a signal to push.

``corrupt_caption`` applies one of three corruptions that keep the caption inside the grammar:

    count     one object group's count ±1            "three red circles" -> "two red circles"
    relation  the relation reversed                  "left of" -> "right of", "above" -> "below"
    binding   the two groups' colours swapped        "a red circle and a blue square"
                                                     -> "a blue circle and a red square"

a kind chosen uniformly among those that apply to the caption, then one valid corruption of that
kind uniformly (so a position caption's relation is reversed in a third of its corruptions, not
drowned by its four count changes). The image stays
the one rendered for the true caption, so the caption no longer describes it: exactly alt-text
noise. ``noisy_captions`` corrupts a fraction ``rate`` of a batch, deterministically in its rng.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from spotlight.models.scenes import MAX_OBJECTS, PromptError, PromptSpec, parse_prompt

__all__ = ["NOISE_KINDS", "corrupt_caption", "noisy_captions"]

NOISE_KINDS: tuple[str, ...] = ("count", "relation", "binding")

_REVERSED = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _valid(specs: list[PromptSpec]) -> list[PromptSpec]:
    valid: list[PromptSpec] = []
    for cand in specs:
        try:
            valid.append(parse_prompt(cand.caption()))
        except PromptError:
            continue  # e.g. a count that makes both sides the same object, or > MAX_OBJECTS
    return valid


def _candidates(spec: PromptSpec) -> dict[str, list[PromptSpec]]:
    """Every valid one-step corruption of ``spec``, by kind (kinds with none are left out)."""
    counts: list[PromptSpec] = []
    for gi, obj in enumerate(spec.objects):
        for delta in (-1, 1):
            if not 1 <= obj.count + delta <= MAX_OBJECTS:
                continue
            objects = list(spec.objects)
            objects[gi] = dataclasses.replace(obj, count=obj.count + delta)
            counts.append(dataclasses.replace(spec, objects=tuple(objects)))
    out = {"count": _valid(counts)}
    if spec.relation is not None:
        out["relation"] = _valid([dataclasses.replace(spec, relation=_REVERSED[spec.relation])])
    if len(spec.objects) == 2 and spec.objects[0].color != spec.objects[1].color:
        a, b = spec.objects
        swapped = (dataclasses.replace(a, color=b.color), dataclasses.replace(b, color=a.color))
        out["binding"] = _valid([dataclasses.replace(spec, objects=swapped)])
    return {kind: cands for kind, cands in out.items() if cands}


def corrupt_caption(prompt: str, rng: np.random.Generator) -> str:
    """A wrong caption for the scene ``prompt`` describes (``prompt`` itself if none applies)."""
    by_kind = _candidates(parse_prompt(prompt))
    if not by_kind:
        return prompt
    kinds = sorted(by_kind, key=NOISE_KINDS.index)
    cands = by_kind[kinds[int(rng.integers(0, len(kinds)))]]
    return cands[int(rng.integers(0, len(cands)))].caption()


def noisy_captions(captions: Sequence[str], rng: np.random.Generator, rate: float) -> list[str]:
    """``captions`` with each one corrupted with probability ``rate`` (0 returns them unchanged)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"caption noise rate must lie in [0, 1), got {rate}")
    if rate == 0.0:
        return list(captions)
    flips = rng.random(len(captions)) < rate
    return [corrupt_caption(c, rng) if f else c for c, f in zip(captions, flips, strict=True)]
