"""Procedural GenEval-style scenes: captions, random layouts that satisfy them, and rendering.

The tiny base model is pretrained on these images, and the GenEval-style reward reads the same
geometry back, so the two agree on what "a red circle left of a blue square" looks like.

Caption kinds (all captions are in the closed language of ``spotlight.models.vocab``):

    single         "a red circle"                         one object
    counting       "three blue triangles"                 2-4 objects of one kind
    two_objects    "two red circles and a red square"     "<obj> and <obj>", any other pair
    color_binding  "a red circle and a blue square"       "<obj> and <obj>", one each, colours
                                                          AND shapes differ (swapping them is wrong)
    position       "a red circle left of a blue square"   "<obj> <relation> <obj>"

Two-object captions never repeat the same (colour, shape) on both sides (that is a counting
caption) and hold at most ``MAX_OBJECTS`` = 4 objects in all, so every layout fits a 32×32 image
with objects of at least 7 px.

Rendering choices, made so objects stay segmentable after a small diffusion model blurs them:
a neutral mid-grey background (zero chroma, so colour = "not background" by saturation alone,
and it is the zero of a [-1, 1] pixel normalisation); four saturated colours whose hues lie
≥ 50° apart (red 0°, yellow ~53°, green ~128°, blue ~227°); shapes 7-11 px at 32×32 (scaled with
``size``), upright, separated by a gap of ≥ 2 px; anti-aliased by drawing at 4× and box-filtering.

Pretraining prompt weighting (``random_batch``/``sample_prompts``, default ``by_kind=True``, with
or without a ``prompts`` list such as the training split): a kind is drawn with ``KIND_WEIGHTS``
(single 0.15, counting 0.25, two_objects 0.20, color_binding 0.15, position 0.25; renormalised over
the kinds present), then a caption uniformly within that kind. Without this, position captions
(3,168 of the 4,008 captions, 79%) would drown single objects (12) and counting (36).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from spotlight.models.vocab import COLORS, COUNT_WORDS, RELATIONS, SHAPES, PromptError, tokenize

__all__ = [
    "BACKGROUND",
    "KINDS",
    "KIND_WEIGHTS",
    "MAX_OBJECTS",
    "PALETTE",
    "ObjectSpec",
    "PromptError",
    "PromptSpec",
    "Scene",
    "Shape",
    "all_prompts",
    "parse_prompt",
    "prompt_kind_of",
    "prompt_split",
    "prompts_by_kind",
    "random_batch",
    "relation_holds",
    "render",
    "sample_prompts",
    "sample_scene",
]

KINDS: tuple[str, ...] = ("single", "counting", "two_objects", "color_binding", "position")
KIND_WEIGHTS: dict[str, float] = {
    "single": 0.15,
    "counting": 0.25,
    "two_objects": 0.20,
    "color_binding": 0.15,
    "position": 0.25,
}
MAX_OBJECTS = 4
BACKGROUND: tuple[int, int, int] = (128, 128, 128)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 190, 50),
    "blue": (30, 70, 230),
    "yellow": (240, 220, 20),
}
assert set(PALETTE) == set(COLORS), "palette must cover the caption colours"

# Geometry in units of a 32-px image; scaled by size / 32 for other sizes.
_MIN_SIZE, _MAX_SIZE = 7.0, 11.0
_GAP = 2.0  # minimum empty pixels between two objects' bounding boxes
_BORDER = 1.0  # minimum distance from a bounding box to the image edge
# A relation holds in a generated layout when the centroid offset along the relation axis is at
# least this (px at 32) and the offset points within 45° of the axis. The reward accepts from
# 0.1·size on (see rewards/geneval.py), so a ground-truth layout is never near its threshold.
_REL_MIN_PROJ = 5.0
_REL_MIN_COS = 0.7
_SUPERSAMPLE = 4
_MAX_TRIES = 2000

RELATION_AXES: dict[str, tuple[float, float]] = {
    # unit vector (dx, dy) from the first object to the second that the relation asks for,
    # in image coordinates (y grows downwards): "A left of B" means B lies to the right of A.
    "left of": (1.0, 0.0),
    "right of": (-1.0, 0.0),
    "above": (0.0, 1.0),
    "below": (0.0, -1.0),
}
assert set(RELATION_AXES) == set(RELATIONS)

_NUMBER_WORDS = {w: n for n, w in COUNT_WORDS.items()}


@dataclass(frozen=True)
class ObjectSpec:
    """``count`` objects of one colour and shape, as one side of a caption names them."""

    count: int
    color: str
    shape: str

    def phrase(self) -> str:
        """The caption words for this object group ("a red circle", "three blue squares")."""
        noun = self.shape if self.count == 1 else self.shape + "s"
        return f"{COUNT_WORDS[self.count]} {self.color} {noun}"


@dataclass(frozen=True)
class PromptSpec:
    """The parsed meaning of a caption: its kind, one or two object groups, an optional relation.

    For ``position``, ``relation`` reads "objects[0] <relation> objects[1]".
    """

    kind: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None

    def caption(self) -> str:
        """The canonical caption text (``parse_prompt(spec.caption()) == spec``)."""
        if len(self.objects) == 1:
            return self.objects[0].phrase()
        joiner = "and" if self.relation is None else self.relation
        return f"{self.objects[0].phrase()} {joiner} {self.objects[1].phrase()}"

    @property
    def total_objects(self) -> int:
        return sum(o.count for o in self.objects)


def _two_object_kind(a: ObjectSpec, b: ObjectSpec) -> str:
    if a.count == 1 and b.count == 1 and a.color != b.color and a.shape != b.shape:
        return "color_binding"
    return "two_objects"


def _parse_object(words: list[str], prompt: str) -> ObjectSpec:
    if len(words) != 3:
        raise PromptError(
            f"prompt {prompt!r}: expected '<count> <colour> <shape>' but got {' '.join(words)!r}"
        )
    count_word, color, noun = words
    if count_word not in _NUMBER_WORDS:
        raise PromptError(
            f"prompt {prompt!r}: {count_word!r} is not a count; valid: {', '.join(_NUMBER_WORDS)}"
        )
    count = _NUMBER_WORDS[count_word]
    if color not in COLORS:
        raise PromptError(
            f"prompt {prompt!r}: {color!r} is not a colour; valid: {', '.join(COLORS)}"
        )
    shape = noun[:-1] if count > 1 and noun.endswith("s") else noun
    expected = shape if count == 1 else shape + "s"
    if shape not in SHAPES or noun != expected:
        raise PromptError(
            f"prompt {prompt!r}: {noun!r} after {count_word!r} should be one of "
            f"{', '.join(s if count == 1 else s + 's' for s in SHAPES)}"
        )
    return ObjectSpec(count=count, color=color, shape=shape)


def parse_prompt(prompt: str) -> PromptSpec:
    """The meaning of ``prompt``; raises PromptError (a ValueError) outside the caption grammar.

    Accepts any case and extra whitespace, because users type prompts; the canonical form is
    ``parse_prompt(p).caption()``.
    """
    tokenize(prompt)  # vocabulary and length errors, with the vocabulary listed
    words = prompt.lower().split()
    if len(words) == 3:
        obj = _parse_object(words, prompt)
        return PromptSpec(
            kind="single" if obj.count == 1 else "counting", objects=(obj,), relation=None
        )
    # Two objects: find the joiner ("and" or a relation) between two 3-word object phrases.
    joiners = {"and": None, **{r: r for r in RELATIONS}}
    for text, relation in joiners.items():
        jw = text.split()
        if len(words) == 6 + len(jw) and words[3 : 3 + len(jw)] == jw:
            a = _parse_object(words[:3], prompt)
            b = _parse_object(words[3 + len(jw) :], prompt)
            if (a.color, a.shape) == (b.color, b.shape):
                raise PromptError(
                    f"prompt {prompt!r} names {a.color} {a.shape}s on both sides; "
                    f"say it as one count instead (e.g. 'two {a.color} {a.shape}s')"
                )
            if a.count + b.count > MAX_OBJECTS:
                raise PromptError(
                    f"prompt {prompt!r} asks for {a.count + b.count} objects; at most {MAX_OBJECTS}"
                )
            kind = "position" if relation is not None else _two_object_kind(a, b)
            return PromptSpec(kind=kind, objects=(a, b), relation=relation)
    raise PromptError(
        f"prompt {prompt!r} is not a caption of the grammar: use '<count> <colour> <shape>', "
        f"'<obj> and <obj>' or '<obj> <relation> <obj>' with relation one of {', '.join(RELATIONS)}"
    )


def prompt_kind_of(prompt: str) -> str:
    """The kind of ``prompt`` (one of ``KINDS``)."""
    return parse_prompt(prompt).kind


def all_prompts() -> list[str]:
    """Every caption of the grammar, in a fixed order (kinds in ``KINDS`` order, then lexicographic
    by construction loops)."""
    objs1 = [ObjectSpec(n, c, s) for n in COUNT_WORDS for c in COLORS for s in SHAPES]
    by_kind: dict[str, list[str]] = {k: [] for k in KINDS}
    for o in objs1:
        by_kind["single" if o.count == 1 else "counting"].append(o.phrase())
    pairs = [
        (a, b)
        for a, b in itertools.product(objs1, objs1)
        if (a.color, a.shape) != (b.color, b.shape) and a.count + b.count <= MAX_OBJECTS
    ]
    for a, b in pairs:
        by_kind[_two_object_kind(a, b)].append(PromptSpec("two_objects", (a, b), None).caption())
    for rel in RELATIONS:
        for a, b in pairs:
            by_kind["position"].append(PromptSpec("position", (a, b), rel).caption())
    return [p for k in KINDS for p in by_kind[k]]


def prompt_split(*, seed: int = 0, held_out_frac: float = 0.1) -> tuple[list[str], list[str]]:
    """(train, held_out) captions, deterministic in ``seed``.

    Each kind is split on its own (at least one held-out caption per kind), so the validation
    score always covers single objects, counting, two objects, colour binding and position.
    """
    if not 0.0 < held_out_frac < 1.0:
        raise ValueError(f"held_out_frac={held_out_frac} must lie strictly between 0 and 1")
    rng = np.random.default_rng(seed)
    by_kind = prompts_by_kind()
    train: list[str] = []
    held: list[str] = []
    for k in KINDS:
        ps = by_kind[k]
        order = rng.permutation(len(ps))
        n_held = max(1, round(held_out_frac * len(ps)))
        held_idx = set(order[:n_held].tolist())
        held.extend(p for i, p in enumerate(ps) if i in held_idx)
        train.extend(p for i, p in enumerate(ps) if i not in held_idx)
    return train, held


@dataclass(frozen=True)
class Shape:
    """One drawn object, in pixel units: its upright bounding box is ``size`` wide and high,
    centred on (cx, cy); circles and squares fill it, a triangle has its apex at the top middle."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float

    @property
    def centroid(self) -> tuple[float, float]:
        """Centre of mass of the drawn area (a triangle's lies size/6 below its box centre)."""
        if self.shape == "triangle":
            return self.cx, self.cy + self.size / 6.0
        return self.cx, self.cy


@dataclass(frozen=True)
class Scene:
    prompt: str
    shapes: tuple[Shape, ...]


def relation_holds(a: Shape, b: Shape, relation: str, *, scale: float = 1.0) -> bool:
    """Whether "a <relation> b" holds with the generator's margin (not the reward's)."""
    ax, ay = a.centroid
    bx, by = b.centroid
    dx, dy = bx - ax, by - ay
    ux, uy = RELATION_AXES[relation]
    proj = dx * ux + dy * uy
    dist = float(np.hypot(dx, dy))
    return proj >= _REL_MIN_PROJ * scale and dist > 0 and proj / dist >= _REL_MIN_COS


def _fits(new: Shape, placed: list[Shape], gap: float) -> bool:
    for s in placed:
        need = (new.size + s.size) / 2.0 + gap
        if abs(new.cx - s.cx) < need and abs(new.cy - s.cy) < need:
            return False
    return True


def sample_scene(prompt: str, rng: np.random.Generator, *, size: int = 32) -> Scene:
    """A random layout that satisfies ``prompt``: inside the image, non-overlapping (≥ 2 px gaps at
    32 px), and for position captions every (first, second) object pair respects the relation with
    a margin. Rejection sampling; raises RuntimeError if no layout is found (not expected for
    captions of the grammar at ``size`` ≥ 32)."""
    if size < 16:
        raise ValueError(
            f"size={size} is too small; scenes need at least 16 px (32 is the default)"
        )
    spec = parse_prompt(prompt)
    scale = size / 32.0
    wanted = [(o.color, o.shape, gi) for gi, o in enumerate(spec.objects) for _ in range(o.count)]
    # Fewer objects get larger sizes on average; 4 objects cap at 10 px so they still fit.
    max_size = (_MAX_SIZE if len(wanted) <= 3 else _MAX_SIZE - 1.0) * scale
    min_size = _MIN_SIZE * scale
    for _ in range(_MAX_TRIES):
        placed: list[Shape] = []
        groups: list[int] = []
        ok = True
        for color, shape, gi in wanted:
            for _attempt in range(50):
                s = float(rng.uniform(min_size, max_size))
                lo = _BORDER * scale + s / 2.0
                hi = size - _BORDER * scale - s / 2.0
                x, y = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
                if spec.relation is not None:
                    # Propose the first group on the near side of the relation axis and the second
                    # on the far side: same distribution after rejection, far fewer rejections.
                    f = float(rng.uniform(0.0, 0.55) if gi == 0 else rng.uniform(0.45, 1.0))
                    ux, uy = RELATION_AXES[spec.relation]
                    t = lo + (hi - lo) * (f if ux + uy > 0 else 1.0 - f)
                    x, y = (t, y) if ux != 0 else (x, t)
                cand = Shape(shape, color, x, y, s)
                if not _fits(cand, placed, _GAP * scale):
                    continue
                if spec.relation is not None:
                    others = [p for p, g in zip(placed, groups, strict=True) if g != gi]
                    if gi == 0 and not all(
                        relation_holds(cand, o, spec.relation, scale=scale) for o in others
                    ):
                        continue
                    if gi == 1 and not all(
                        relation_holds(o, cand, spec.relation, scale=scale) for o in others
                    ):
                        continue
                placed.append(cand)
                groups.append(gi)
                break
            else:
                ok = False
                break
        if ok:
            order = rng.permutation(len(placed))  # drawing order carries no meaning
            return Scene(prompt=prompt, shapes=tuple(placed[i] for i in order))
    raise RuntimeError(f"no layout found for {prompt!r} at size {size} after {_MAX_TRIES} tries")


def render(scene: Scene, *, size: int = 32) -> np.ndarray:
    """The scene as uint8 H×W×3: drawn at 4× resolution and box-filtered down (anti-aliasing)."""
    k = _SUPERSAMPLE
    img = Image.new("RGB", (size * k, size * k), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        x0, y0 = (s.cx - s.size / 2.0) * k, (s.cy - s.size / 2.0) * k
        # PIL boxes include their last pixel, hence the -1: the drawn extent is exactly `size`.
        x1, y1 = (s.cx + s.size / 2.0) * k - 1, (s.cy + s.size / 2.0) * k - 1
        fill = PALETTE[s.color]
        if s.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif s.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif s.shape == "triangle":
            draw.polygon([(s.cx * k, y0), (x1, y1), (x0, y1)], fill=fill)
        else:
            raise ValueError(f"unknown shape {s.shape!r}; valid: {', '.join(SHAPES)}")
    img = img.reduce(k)
    return np.asarray(img, dtype=np.uint8).copy()


@functools.cache
def prompts_by_kind() -> dict[str, tuple[str, ...]]:
    """All captions grouped by kind (memoised: the grammar is fixed and pretraining asks often)."""
    by_kind: dict[str, list[str]] = {k: [] for k in KINDS}
    for p in all_prompts():
        by_kind[prompt_kind_of(p)].append(p)
    return {k: tuple(v) for k, v in by_kind.items()}


@functools.lru_cache(maxsize=16)
def _group_by_kind(prompts: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    # Cached: callers pass the same split every batch, and parsing 3,600 captions takes ~40 ms.
    grouped: dict[str, list[str]] = {}
    for p in prompts:
        grouped.setdefault(prompt_kind_of(p), []).append(p)
    return {k: tuple(grouped[k]) for k in KINDS if k in grouped}


def sample_prompts(
    rng: np.random.Generator,
    n: int,
    *,
    prompts: Sequence[str] | None = None,
    by_kind: bool = True,
) -> list[str]:
    """``n`` captions drawn from ``prompts`` (default: the whole grammar).

    ``by_kind=True``: a kind is drawn with ``KIND_WEIGHTS`` (renormalised over the kinds present
    in ``prompts``), then a caption uniformly within it. ``by_kind=False``: uniform over
    ``prompts``, so the kinds appear as often as the list holds them (position ≈ 80%).
    """
    if prompts is None:
        groups = prompts_by_kind()
    else:
        if len(prompts) == 0:
            raise ValueError(
                "prompts is empty; pass None for the whole grammar or at least one caption"
            )
        if not by_kind:
            idx = rng.integers(0, len(prompts), size=n)
            return [prompts[i] for i in idx]
        groups = _group_by_kind(tuple(prompts))
    if not by_kind:
        flat = [p for k in KINDS for p in groups[k]]
        return [flat[i] for i in rng.integers(0, len(flat), size=n)]
    kinds = list(groups)
    w = np.array([KIND_WEIGHTS[k] for k in kinds])
    chosen = rng.choice(len(kinds), size=n, p=w / w.sum())
    return [groups[kinds[k]][int(rng.integers(0, len(groups[kinds[k]])))] for k in chosen]


def random_batch(
    rng: np.random.Generator,
    batch_size: int,
    *,
    prompts: Sequence[str] | None = None,
    size: int = 32,
    by_kind: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """``batch_size`` rendered scenes (uint8 B×H×W×3) and their captions, deterministic in ``rng``.

    Captions come from ``prompts`` (default: the whole grammar; e.g. the training split from
    ``prompt_split``), weighted by kind (``KIND_WEIGHTS``) unless ``by_kind=False`` (uniform).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    caps = sample_prompts(rng, batch_size, prompts=prompts, by_kind=by_kind)
    images = np.stack([render(sample_scene(p, rng, size=size), size=size) for p in caps])
    return images, caps
