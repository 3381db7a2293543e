"""The closed caption language of the tiny model, shared by the scene generator and the text encoder.

It lives in its own module so that the procedural dataset (which writes captions) and the
policy's tokenizer (which reads them) cannot drift apart: a caption the generator writes is
always one the tokenizer accepts, and a user's prompt outside this language fails loudly
instead of being silently mapped to an "unknown" token the model never learned.

Grammar (every caption is one of):
    single / counting:  "<count> <colour> <shape>"          "three blue triangles"
    two objects:        "<obj> and <obj>"                   "a red circle and a green square"
    relative position:  "<obj> <relation> <obj>"            "a red circle left of a green square"
where <count> is "a" for one, else a number word, and the shape takes its plural after a number.
"""

from __future__ import annotations

COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COUNT_WORDS: dict[int, str] = {1: "a", 2: "two", 3: "three", 4: "four"}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

PAD = "<pad>"
VOCAB: tuple[str, ...] = (
    PAD,
    *COUNT_WORDS.values(),
    *COLORS,
    *SHAPES,
    *(s + "s" for s in SHAPES),
    "and",
    "left",
    "right",
    "of",
    "above",
    "below",
)
PAD_ID = 0
MAX_PROMPT_TOKENS = 10

_WORD_TO_ID: dict[str, int] = {w: i for i, w in enumerate(VOCAB)}


class PromptError(ValueError):
    """A prompt uses words or a length the tiny model's language does not have."""


def tokenize(prompt: str, *, max_tokens: int = MAX_PROMPT_TOKENS) -> list[int]:
    """Token ids of ``prompt`` (lower-cased, whitespace-split), without padding.

    Raises PromptError naming the unknown words and the accepted vocabulary, because a
    prompt the model never saw a word of would otherwise train or sample garbage silently.
    """
    words = prompt.lower().split()
    if not words:
        raise PromptError("empty prompt: give a caption such as 'two red circles'")
    unknown = [w for w in words if w not in _WORD_TO_ID or w == PAD]
    if unknown:
        raise PromptError(
            f"prompt {prompt!r} uses words outside the tiny model's vocabulary: {unknown}; "
            f"valid words: {', '.join(VOCAB[1:])}"
        )
    if len(words) > max_tokens:
        raise PromptError(
            f"prompt {prompt!r} has {len(words)} words; the tiny model reads at most {max_tokens}"
        )
    return [_WORD_TO_ID[w] for w in words]


def pad_tokens(
    ids: list[int], *, max_tokens: int = MAX_PROMPT_TOKENS
) -> tuple[list[int], list[int]]:
    """``ids`` right-padded to ``max_tokens``, with the attention mask (1 = real token)."""
    n = len(ids)
    return ids + [PAD_ID] * (max_tokens - n), [1] * n + [0] * (max_tokens - n)
