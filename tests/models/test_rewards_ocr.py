"""OCR reward: pure text scoring always; the real OCR model when rapidocr-onnxruntime is installed."""

from __future__ import annotations

import pickle
import socket

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from spotlight.models.rewards import OcrConfig, OcrReward, build_reward, ocr_available, target_text
from spotlight.models.rewards.ocr import edit_distance, ocr_score

needs_ocr = pytest.mark.skipif(
    not ocr_available(),
    reason="rapidocr-onnxruntime is not installed (optional extra: pip install 'spotlight[ocr]')",
)


def text_image(text: str, *, width: int = 320, height: int = 64, size: int = 32) -> np.ndarray:
    """Black text on white, in Pillow's bundled font (no system font needed)."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(img).text(
        (10, (height - size) // 2), text, fill=(0, 0, 0), font=ImageFont.load_default(size=size)
    )
    return np.asarray(img, dtype=np.uint8).copy()


def test_target_text_takes_the_quoted_part() -> None:
    assert target_text('a sign that says "HELLO"') == "HELLO"
    assert target_text('"OPEN" and "CLOSED" on two doors') == "OPEN CLOSED"
    for bad in ("a sign that says hello", 'a sign that says "hello', 'a sign that says ""'):
        with pytest.raises(ValueError, match=r"double quotes|quotes no text"):
            target_text(bad)


def test_score_is_one_minus_normalised_edit_distance() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "abc") == 0
    assert ocr_score("HELLO", "hello") == 1.0  # case-insensitive
    assert ocr_score("HEL LO", "HELLO") == 1.0  # whitespace ignored
    assert ocr_score("HELLO", "HELLO WORLD") == pytest.approx(0.5)
    assert ocr_score("HELXO", "HELLO") == pytest.approx(0.8)
    assert ocr_score("", "HELLO") == 0.0
    assert ocr_score("a much longer wrong reading", "HI") == 0.0  # clipped at 0
    with pytest.raises(ValueError, match="empty"):
        ocr_score("x", "  ")


def test_config_validation_and_factory_errors() -> None:
    with pytest.raises(ValueError, match="threads"):
        OcrConfig(threads=0)
    with pytest.raises(ValueError, match="valid settings"):
        build_reward("ocr", thread=2)


@pytest.fixture(scope="module")
def ocr() -> OcrReward:
    if not ocr_available():
        pytest.skip(
            "rapidocr-onnxruntime is not installed (optional extra: pip install 'spotlight[ocr]')"
        )
    return OcrReward()


WORDS = ["HELLO", "SPOTLIGHT", "Flow GRPO", "QUICK FOX", "2026", "reward"]


@needs_ocr
def test_rendered_text_reads_back_and_wrong_text_scores_low(ocr: OcrReward) -> None:
    imgs = np.stack([text_image(w) for w in WORDS])
    right = ocr(imgs, [f'a sign that says "{w}"' for w in WORDS])
    assert right.dtype == np.float32 and right.shape == (len(WORDS),)
    assert right.mean() >= 0.95 and right.min() >= 0.8, right
    wrong = ocr(imgs, [f'a sign that says "{w}"' for w in WORDS[1:] + WORDS[:1]])
    assert wrong.max() <= 0.4, wrong
    one_letter = ocr(text_image("HELXO")[None], ['"HELLO"'])
    assert one_letter[0] == pytest.approx(0.8)
    copy = pickle.loads(pickle.dumps(ocr))  # after use: the engine is rebuilt, not pickled
    assert copy.config == ocr.config and copy(imgs[:1], ['"HELLO"'])[0] == right[0]


@needs_ocr
def test_blank_and_noise_images_score_zero(ocr: OcrReward) -> None:
    rng = np.random.default_rng(0)
    blank = np.full((1, 64, 320, 3), 255, dtype=np.uint8)
    noise = rng.integers(0, 256, size=(1, 64, 320, 3), dtype=np.uint8)
    scores = ocr(np.concatenate([blank, noise]), ['"HELLO"', '"HELLO"'])
    assert scores.max() <= 0.2


@needs_ocr
def test_runs_offline_and_rejects_bad_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the OCR reward tried to open a connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    r = build_reward("ocr", threads=1)  # a fresh engine, built and run with the network cut
    assert r.name == "ocr"
    assert r(text_image("OFFLINE")[None], ['"OFFLINE"'])[0] >= 0.8
    with pytest.raises(ValueError, match="one prompt per image"):
        r(text_image("A")[None], ['"A"', '"B"'])
    with pytest.raises(ValueError, match="double quotes"):
        r(text_image("A")[None], ["no quotes here"])
    with pytest.raises(ValueError, match="uint8"):
        r(text_image("A")[None].astype(np.float32), ['"A"'])
