import itertools

import numpy as np
import pytest

from spotlight.models.scenes import (
    BACKGROUND,
    KIND_WEIGHTS,
    KINDS,
    MAX_OBJECTS,
    PALETTE,
    ObjectSpec,
    PromptError,
    PromptSpec,
    Scene,
    Shape,
    all_prompts,
    parse_prompt,
    prompt_split,
    prompts_by_kind,
    random_batch,
    relation_holds,
    render,
    sample_prompts,
    sample_scene,
)
from spotlight.models.vocab import tokenize


def test_every_caption_tokenizes_and_round_trips_through_the_parser() -> None:
    prompts = all_prompts()
    assert len(prompts) == len(set(prompts))
    assert prompts == all_prompts()  # deterministic order
    for p in prompts:
        tokenize(p)
        spec = parse_prompt(p)
        assert spec.caption() == p
        assert 1 <= spec.total_objects <= MAX_OBJECTS
    assert {parse_prompt(p).kind for p in prompts} == set(KINDS)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red circle", PromptSpec("single", (ObjectSpec(1, "red", "circle"),), None)),
        (
            "Three  Blue triangles",
            PromptSpec("counting", (ObjectSpec(3, "blue", "triangle"),), None),
        ),
        (
            "a red circle and a blue square",
            PromptSpec(
                "color_binding",
                (ObjectSpec(1, "red", "circle"), ObjectSpec(1, "blue", "square")),
                None,
            ),
        ),
        (
            "two red circles and a red square",
            PromptSpec(
                "two_objects",
                (ObjectSpec(2, "red", "circle"), ObjectSpec(1, "red", "square")),
                None,
            ),
        ),
        (
            "two red circles left of a blue square",
            PromptSpec(
                "position",
                (ObjectSpec(2, "red", "circle"), ObjectSpec(1, "blue", "square")),
                "left of",
            ),
        ),
        (
            "a green triangle below a yellow circle",
            PromptSpec(
                "position",
                (ObjectSpec(1, "green", "triangle"), ObjectSpec(1, "yellow", "circle")),
                "below",
            ),
        ),
    ],
)
def test_parse_prompt_reads_the_meaning(prompt: str, expected: PromptSpec) -> None:
    assert parse_prompt(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "needle"),
    [
        ("a purple circle", "purple"),
        ("", "empty"),
        ("a red circles", "circle"),
        ("two red circle", "circles"),
        ("red circle", "not a caption"),
        ("a red circle and", "not a caption"),
        ("a red circle and a red circle", "both sides"),
        ("three red circles and two blue squares", "at most 4"),
        ("a red red", "should be one of"),
        ("a circle circle", "not a colour"),
        ("a red circle left a blue square", "not a caption"),
    ],
)
def test_parse_prompt_rejects_captions_outside_the_grammar(prompt: str, needle: str) -> None:
    with pytest.raises(PromptError, match=needle):
        parse_prompt(prompt)
    assert issubclass(PromptError, ValueError)


def test_split_is_deterministic_disjoint_and_covers_every_kind() -> None:
    train, held = prompt_split(seed=0)
    assert (train, held) == prompt_split(seed=0)
    assert prompt_split(seed=1)[1] != held
    assert set(train).isdisjoint(held)
    assert sorted(train + held) == sorted(all_prompts())
    assert {parse_prompt(p).kind for p in held} == set(KINDS)
    assert 0.05 < len(held) / len(all_prompts()) < 0.15
    with pytest.raises(ValueError, match="held_out_frac"):
        prompt_split(held_out_frac=1.5)


def _check_layout(scene: Scene, size: int) -> None:
    spec = parse_prompt(scene.prompt)
    want = sorted((o.color, o.shape) for o in spec.objects for _ in range(o.count))
    assert sorted((s.color, s.shape) for s in scene.shapes) == want
    for s in scene.shapes:
        assert s.size >= 7 * size / 32
        assert s.size / 2 <= s.cx <= size - s.size / 2 and s.size / 2 <= s.cy <= size - s.size / 2
    for a, b in itertools.combinations(scene.shapes, 2):
        need = (a.size + b.size) / 2
        assert abs(a.cx - b.cx) >= need or abs(a.cy - b.cy) >= need, "objects overlap"
    if spec.relation is not None:
        first = [
            s
            for s in scene.shapes
            if (s.color, s.shape) == (spec.objects[0].color, spec.objects[0].shape)
        ]
        second = [
            s
            for s in scene.shapes
            if (s.color, s.shape) == (spec.objects[1].color, spec.objects[1].shape)
        ]
        for a, b in itertools.product(first, second):
            assert relation_holds(a, b, spec.relation, scale=size / 32)
            ax, ay = a.centroid
            bx, by = b.centroid
            if spec.relation == "left of":
                assert ax < bx
            elif spec.relation == "right of":
                assert ax > bx
            elif spec.relation == "above":
                assert ay < by
            else:
                assert ay > by


def test_sampled_layouts_satisfy_their_captions() -> None:
    rng = np.random.default_rng(0)
    prompts = all_prompts()
    for i in rng.choice(len(prompts), size=300, replace=False):
        _check_layout(sample_scene(prompts[i], rng), 32)
    for p in ("four yellow triangles", "a red circle above three blue squares"):
        _check_layout(sample_scene(p, rng, size=64), 64)


def test_sample_scene_is_deterministic_in_the_generator() -> None:
    p = "two red circles left of a blue square"
    assert sample_scene(p, np.random.default_rng(7)) == sample_scene(p, np.random.default_rng(7))
    assert sample_scene(p, np.random.default_rng(7)) != sample_scene(p, np.random.default_rng(8))


def test_render_draws_antialiased_shapes_on_a_plain_background() -> None:
    scene = Scene("a red square", (Shape("square", "red", 16.5, 16.0, 10.0),))
    img = render(scene)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == BACKGROUND
    assert tuple(img[16, 16]) == PALETTE["red"]
    # The square spans x 11.5..21.5: its left column is half-covered, so they blend with the background.
    edge = img[16, 11].astype(int)
    assert np.all(np.minimum(BACKGROUND, PALETTE["red"]) <= edge)
    assert tuple(edge) not in (BACKGROUND, PALETTE["red"])
    red_area = np.all(img == PALETTE["red"], axis=-1).sum()
    assert 64 <= red_area <= 100
    tri = render(Scene("a blue triangle", (Shape("triangle", "blue", 16.0, 16.0, 10.0),)))
    blue = np.all(tri == PALETTE["blue"], axis=-1)
    rows = blue.sum(axis=1)
    assert rows[19] > rows[13]  # wide base at the bottom, apex at the top


def test_random_batch_shapes_determinism_and_kind_weights() -> None:
    imgs, caps = random_batch(np.random.default_rng(3), 8)
    assert imgs.shape == (8, 32, 32, 3) and imgs.dtype == np.uint8 and len(caps) == 8
    imgs2, caps2 = random_batch(np.random.default_rng(3), 8)
    assert caps == caps2 and np.array_equal(imgs, imgs2)
    train, _ = prompt_split()
    _, caps = random_batch(np.random.default_rng(0), 16, prompts=train)
    assert set(caps) <= set(train)
    with pytest.raises(ValueError, match="batch_size"):
        random_batch(np.random.default_rng(0), 0)
    with pytest.raises(ValueError, match="empty"):
        random_batch(np.random.default_rng(0), 2, prompts=[])
    # Kind frequencies follow KIND_WEIGHTS, for the whole grammar and for a split (binomial std
    # at n=4000 is < 0.007); uniform sampling follows the list instead.
    for pool in (None, train):
        caps = sample_prompts(np.random.default_rng(0), 4000, prompts=pool)
        kinds = [parse_prompt(c).kind for c in caps]
        for k, w in KIND_WEIGHTS.items():
            assert abs(kinds.count(k) / len(kinds) - w) < 0.03, (pool is None, k)
    caps = sample_prompts(np.random.default_rng(0), 4000, prompts=train, by_kind=False)
    share = sum(parse_prompt(c).kind == "position" for c in caps) / len(caps)
    assert 0.75 < share < 0.83
    only_counting = [p for p in train if parse_prompt(p).kind == "counting"]
    assert set(sample_prompts(np.random.default_rng(0), 50, prompts=only_counting)) <= set(
        only_counting
    )
    assert sum(len(v) for v in prompts_by_kind().values()) == len(all_prompts())
