"""The GenEval-style reward in both directions: ground truth ≈ 1, violations clearly lower."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
from scipy import ndimage

from spotlight.models.rewards import (
    REWARD_NAMES,
    GenEvalConfig,
    GenEvalReward,
    Reward,
    build_reward,
)
from spotlight.models.scenes import (
    BACKGROUND,
    KINDS,
    PromptError,
    PromptSpec,
    Scene,
    Shape,
    parse_prompt,
    prompts_by_kind,
    render,
    sample_scene,
)
from spotlight.models.vocab import COLORS, SHAPES

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def prompts_per_kind(rng: np.random.Generator, n: int) -> list[str]:
    out: list[str] = []
    for k in KINDS:
        ps = prompts_by_kind()[k]
        out.extend(ps[i] for i in rng.choice(len(ps), size=min(n, len(ps)), replace=False))
    return out


def degrade(img: np.ndarray, rng: np.random.Generator, *, sigma: float, noise: float) -> np.ndarray:
    """Gaussian blur of ``sigma`` px and additive Gaussian noise of std ``noise`` (0-255 units)."""
    f: np.ndarray = img.astype(np.float32)
    if sigma > 0:
        f = ndimage.gaussian_filter(f, (sigma, sigma, 0))
    f = f + rng.normal(0.0, noise, f.shape)
    return np.clip(np.round(f), 0, 255).astype(np.uint8)


def _other(values: tuple[str, ...], v: str, rng: np.random.Generator) -> str:
    return str(rng.choice([x for x in values if x != v]))


def violate(spec: PromptSpec, how: str, rng: np.random.Generator) -> str:
    """A caption whose scene breaks ``spec`` in one way: colour, shape, count, position, binding."""
    objs = list(spec.objects)
    i = int(rng.integers(len(objs)))
    o = objs[i]
    if how == "color":
        objs[i] = dataclasses.replace(o, color=_other(COLORS, o.color, rng))
    elif how == "shape":
        objs[i] = dataclasses.replace(o, shape=_other(SHAPES, o.shape, rng))
    elif how == "count":
        total = spec.total_objects
        choices = [
            (j, n)
            for j, oj in enumerate(objs)
            for n in range(1, 5)
            if n != oj.count and total - oj.count + n <= 4
        ]
        j, n = choices[int(rng.integers(len(choices)))]
        objs[j] = dataclasses.replace(objs[j], count=n)
    elif how == "position":
        assert spec.relation is not None
        return PromptSpec(spec.kind, spec.objects, OPPOSITE[spec.relation]).caption()
    elif how == "binding":
        a, b = objs
        objs = [dataclasses.replace(a, color=b.color), dataclasses.replace(b, color=a.color)]
    else:
        raise AssertionError(how)
    if len(objs) == 2 and (objs[0].color, objs[0].shape) == (objs[1].color, objs[1].shape):
        # Merged into one group by the change: draw it as one group of the summed count.
        objs = [dataclasses.replace(objs[0], count=objs[0].count + objs[1].count)]
        return PromptSpec("counting", tuple(objs), None).caption()
    return PromptSpec(spec.kind, tuple(objs), spec.relation).caption()


@pytest.fixture(scope="module")
def reward() -> GenEvalReward:
    return GenEvalReward()


def _scores(
    reward: GenEvalReward, prompts: list[str], drawn: list[str], seed: int, **deg: float
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    imgs = np.stack([render(sample_scene(d, rng)) for d in drawn])
    if deg:
        imgs = np.stack([degrade(im, rng, sigma=deg["sigma"], noise=deg["noise"]) for im in imgs])
    return reward(imgs, prompts)


def test_ground_truth_scenes_score_near_one(reward: GenEvalReward) -> None:
    rng = np.random.default_rng(0)
    prompts = prompts_per_kind(rng, 40) * 2  # every kind, two seeds each
    scores = _scores(reward, prompts, prompts, seed=1)
    assert scores.dtype == np.float32 and scores.shape == (len(prompts),)
    assert scores.mean() >= 0.98, scores.mean()
    assert np.quantile(scores, 0.05) >= 0.9


def test_ground_truth_survives_mild_blur_and_noise(reward: GenEvalReward) -> None:
    rng = np.random.default_rng(1)
    prompts = prompts_per_kind(rng, 30)
    scores = _scores(reward, prompts, prompts, seed=2, sigma=0.8, noise=8.0)
    assert scores.mean() >= 0.95, scores.mean()


@pytest.mark.parametrize("how", ["color", "shape", "count", "position", "binding"])
def test_violated_scenes_score_clearly_lower(reward: GenEvalReward, how: str) -> None:
    rng = np.random.default_rng(2)
    if how == "position":
        prompts = [p for p in prompts_per_kind(rng, 60) if parse_prompt(p).relation is not None]
    elif how == "binding":
        prompts = list(rng.choice(prompts_by_kind()["color_binding"], size=40, replace=False))
    else:
        prompts = prompts_per_kind(rng, 15)
    drawn = [violate(parse_prompt(p), how, rng) for p in prompts]
    bad = _scores(reward, prompts, drawn, seed=3)
    good = _scores(reward, prompts, prompts, seed=3)
    assert (bad < good - 0.05).mean() >= 0.95, how
    assert bad.mean() <= 0.8 and good.mean() - bad.mean() >= 0.25, (how, bad.mean())


def test_background_and_noise_images_score_low(reward: GenEvalReward) -> None:
    rng = np.random.default_rng(4)
    prompts = prompts_per_kind(rng, 8)
    n = len(prompts)
    background = np.broadcast_to(np.array(BACKGROUND, dtype=np.uint8), (n, 32, 32, 3)).copy()
    assert np.all(reward(background, prompts) == 0.0)
    grey_noise = np.stack([degrade(im, rng, sigma=0.0, noise=12.0) for im in background])
    assert reward(grey_noise, prompts).max() <= 0.05
    # Uniform RGB noise is saturated everywhere; its same-hue clusters are thin and sprawling,
    # which the solidity filter (min_core_frac) rejects. Without it this scored ≈ 0.2.
    uniform = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    assert reward(uniform, prompts).mean() <= 0.05


def test_partial_credit_is_graded(reward: GenEvalReward) -> None:
    """Count off by one beats off by three; right colour with wrong shape beats nothing."""

    def img(shapes: list[Shape]) -> np.ndarray:
        return render(Scene("", tuple(shapes)))

    row = [Shape("circle", "blue", 6.0 + 7.0 * i, 16.0, 6.0) for i in range(4)]
    s = {n: reward.score(img(row[:n]), "four blue circles").total for n in range(5)}
    assert s[4] > s[3] > s[2] > s[1] > s[0] == 0.0
    one = [Shape("circle", "red", 16.0, 16.0, 9.0)]
    wrong_shape = reward.score(img([dataclasses.replace(one[0], shape="square")]), "a red circle")
    wrong_both = reward.score(img([Shape("square", "green", 16.0, 16.0, 9.0)]), "a red circle")
    assert 0.0 < wrong_both.total < wrong_shape.total < 1.0
    assert wrong_shape.color == 1.0 and wrong_shape.shape == 0.0 and wrong_shape.binding == 0.0
    # Position: credit rises smoothly as the first object moves to the correct side.
    prompt = "a red circle left of a blue square"
    totals = [
        reward.score(
            img([Shape("circle", "red", x, 16.0, 8.0), Shape("square", "blue", 16.0, 5.0, 8.0)]),
            prompt,
        ).position
        for x in (26.0, 20.0, 16.0, 12.0, 6.0)
    ]
    assert all(t is not None for t in totals)
    assert totals == sorted(totals) and totals[0] == 0.0 and totals[-1] == 1.0  # type: ignore[type-var]


def test_spare_objects_never_buy_position_credit(reward: GenEvalReward) -> None:
    """Scattering spare copies gives the matching more candidates for the relation; the
    position part is scaled by #slots / #detections so that never pays (RL found it did)."""

    def img(shapes: list[Shape]) -> np.ndarray:
        return render(Scene("", tuple(shapes)))

    prompt = "a red circle left of a blue square"
    wrong = [Shape("circle", "red", 24.0, 16.0, 7.0), Shape("square", "blue", 8.0, 16.0, 7.0)]
    spares = [Shape("circle", "red", 5.0, 5.0, 6.0), Shape("square", "blue", 27.0, 27.0, 6.0)]
    exact = reward.score(img(wrong), prompt)
    scattered = reward.score(img(wrong + spares), prompt)
    right = [Shape("circle", "red", 8.0, 16.0, 7.0), Shape("square", "blue", 24.0, 16.0, 7.0)]
    assert exact.position == 0.0 and scattered.n_detected == 4
    # The spares satisfy the relation, but at half credit: 4 detections for 2 slots.
    assert scattered.position == pytest.approx(0.5, abs=0.05)
    assert scattered.total < 0.75 < reward.score(img(right), prompt).total


def test_detect_finds_touching_shapes_and_ignores_specks(reward: GenEvalReward) -> None:
    touching = (Shape("circle", "red", 10.0, 16.0, 9.0), Shape("circle", "red", 18.5, 16.0, 9.0))
    im = render(Scene("", touching))
    im[2, 2] = (230, 30, 30)  # a one-pixel speck of the same colour
    im[28:30, 28:30] = (30, 70, 230)  # a 2×2 blue speck
    dets = reward.detect(im)
    assert [(d.color, d.shape) for d in dets] == [("red", "circle"), ("red", "circle")]
    assert sorted(round(d.cx) for d in dets) == [10, 18]
    assert reward.score(im, "two red circles").total == pytest.approx(1.0)


def test_detect_reads_size_64_images(reward: GenEvalReward) -> None:
    rng = np.random.default_rng(5)
    prompts = prompts_per_kind(rng, 4)
    imgs = np.stack([render(sample_scene(p, rng, size=64), size=64) for p in prompts])
    assert reward(imgs, prompts).mean() >= 0.95


def test_batch_api_errors_and_factory() -> None:
    r = build_reward("geneval", min_area=6.0)
    assert isinstance(r, Reward) and r.name == "geneval"
    assert pickle.loads(pickle.dumps(r)).config == GenEvalConfig(min_area=6.0)  # ships to workers
    imgs = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="one prompt per image"):
        r(imgs, ["a red circle"])
    with pytest.raises(ValueError, match="uint8"):
        r(imgs.astype(np.float32), ["a red circle"] * 2)
    with pytest.raises(ValueError, match="uint8"):
        r(imgs[0], ["a red circle"] * 32)
    with pytest.raises(PromptError, match="purple"):
        r(imgs, ["a red circle", "a purple circle"])
    with pytest.raises(ValueError, match="valid rewards: checks, geneval, ocr"):
        build_reward("clip")
    with pytest.raises(ValueError, match="valid settings"):
        build_reward("geneval", min_areaa=3)
    with pytest.raises(ValueError, match="chroma_frac"):
        GenEvalConfig(chroma_frac=1.5)
    assert REWARD_NAMES == ("checks", "geneval", "ocr")
