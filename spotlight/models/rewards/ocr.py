"""OCR reward for text-rendering prompts: a real OCR model (RapidOCR, PP-OCRv4 det + rec as ONNX
files inside the ``rapidocr-onnxruntime`` wheel) run on CPU, offline.

Convention (the one public Flow-GRPO OCR reward uses, so numbers compare):
  target     = the prompt's text between double quotes: ``a sign that says "HELLO"`` -> ``HELLO``
               (several quoted parts are joined with a space; a prompt without quotes is an error)
  recognised = every text box the OCR finds, in its reading order, concatenated
  both are lower-cased and stripped of whitespace, then
  score      = 1 − min(edit_distance(recognised, target), len(target)) / len(target)   in [0, 1]
So a perfect rendering scores 1, one wrong letter in five 0.8, nothing readable 0.

The package is an optional dependency (``pip install spotlight[ocr]``): importing this module never
needs it; building an ``OcrReward`` checks for it and says how to install it. The engine itself is
loaded on first use, so the reward object stays cheap to construct and to hand to a worker process.
It reads its three model files from the installed package and makes no network call (the package
has no download code; checked in 1.4.4).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spotlight.models.rewards.batch import check_batch

__all__ = ["OcrConfig", "OcrReward", "edit_distance", "ocr_available", "ocr_score", "target_text"]

_PACKAGE = "rapidocr_onnxruntime"
_INSTALL_HINT = "pip install 'rapidocr-onnxruntime>=1.4,<1.5' (or: pip install 'spotlight[ocr]')"


def ocr_available() -> bool:
    """Whether the OCR package is importable (tests skip on this, naming the reason)."""
    return importlib.util.find_spec(_PACKAGE) is not None


@dataclass(frozen=True, kw_only=True)
class OcrConfig:
    """Engine knobs. Defaults suit one reward per worker process on a shared CPU."""

    threads: int = 1
    """onnxruntime intra-op threads; 1 because reward workers run side by side."""
    det_max_side: int = 960
    """Images whose longer side exceeds this are scaled down for detection; smaller ones are left
    at their size (RapidOCR's default instead scales the SHORT side UP to 736 px, which is ~40×
    slower on a 64×256 text image and no more accurate on our test images)."""
    text_score: float = 0.5
    """Recognised boxes below this confidence are dropped (RapidOCR's default)."""

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"OcrConfig.threads={self.threads} must be ≥ 1")
        if self.det_max_side < 32:
            raise ValueError(f"OcrConfig.det_max_side={self.det_max_side} must be ≥ 32")
        if not 0.0 <= self.text_score < 1.0:
            raise ValueError(f"OcrConfig.text_score={self.text_score} must lie in [0, 1)")


def target_text(prompt: str) -> str:
    """The text a prompt asks to render: its double-quoted part(s), joined with a space."""
    parts = prompt.split('"')
    if len(parts) < 3 or len(parts) % 2 == 0:
        raise ValueError(
            f"OCR prompt {prompt!r} must put the text to render in double quotes, "
            "e.g. 'a sign that says \"HELLO\"'"
        )
    quoted = [p for p in parts[1::2]]
    if not any(q.strip() for q in quoted):
        raise ValueError(f"OCR prompt {prompt!r} quotes no text to render")
    return " ".join(quoted)


def _normalise(text: str) -> str:
    return "".join(text.split()).lower()


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def ocr_score(recognised: str, target: str) -> float:
    """1 − normalised edit distance after lower-casing and removing whitespace (see module doc)."""
    t = _normalise(target)
    if not t:
        raise ValueError(f"target text {target!r} is empty after removing whitespace")
    d = edit_distance(_normalise(recognised), t)
    return 1.0 - min(d, len(t)) / len(t)


class OcrReward:
    """OCR reward over a batch: uint8 B×H×W×3 images and prompts with quoted text -> float32 [B]."""

    name = "ocr"

    def __init__(self, config: OcrConfig | None = None) -> None:
        if not ocr_available():
            raise ImportError(f"the OCR reward needs the {_PACKAGE} package: {_INSTALL_HINT}")
        self.config = config if config is not None else OcrConfig()
        self._engine: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # The ONNX sessions do not pickle; a copy sent to a worker rebuilds its own on first use.
        return {"config": self.config, "_engine": None}

    def _get_engine(self) -> Any:
        if self._engine is None:
            from rapidocr_onnxruntime import RapidOCR

            c = self.config
            self._engine = RapidOCR(
                intra_op_num_threads=c.threads,
                inter_op_num_threads=1,
                det_limit_type="max",
                det_limit_side_len=c.det_max_side,
                text_score=c.text_score,
            )
        return self._engine

    def read(self, image: np.ndarray) -> str:
        """All text the OCR finds in one uint8 H×W×3 RGB image, boxes joined with spaces."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"read takes one uint8 H×W×3 image; got {image.dtype} {image.shape}")
        # RapidOCR expects OpenCV's BGR channel order for arrays.
        result, _ = self._get_engine()(np.ascontiguousarray(image[..., ::-1]))
        if not result:
            return ""
        return " ".join(str(box[1]) for box in result)

    def __call__(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        check_batch(images, prompts)
        targets = [target_text(p) for p in prompts]  # bad prompts fail before any OCR work
        return np.array(
            [ocr_score(self.read(img), t) for img, t in zip(images, targets, strict=True)],
            dtype=np.float32,
        )
