import pytest

from spotlight.models.vocab import (
    MAX_PROMPT_TOKENS,
    PAD_ID,
    VOCAB,
    PromptError,
    pad_tokens,
    tokenize,
)


def test_tokenize_round_trips_known_words() -> None:
    ids = tokenize("Three blue triangles left of a red square")
    assert [VOCAB[i] for i in ids] == [
        "three",
        "blue",
        "triangles",
        "left",
        "of",
        "a",
        "red",
        "square",
    ]
    padded, mask = pad_tokens(ids)
    assert len(padded) == len(mask) == MAX_PROMPT_TOKENS
    assert padded[len(ids) :] == [PAD_ID] * (MAX_PROMPT_TOKENS - len(ids))
    assert mask == [1] * len(ids) + [0] * (MAX_PROMPT_TOKENS - len(ids))


@pytest.mark.parametrize(
    ("prompt", "needle"),
    [
        ("a purple circle", "purple"),
        ("", "empty"),
        ("a <pad> circle", "<pad>"),
        ("a red circle " * 4, "at most"),
    ],
)
def test_tokenize_rejects_prompts_outside_the_language(prompt: str, needle: str) -> None:
    with pytest.raises(PromptError, match=needle):
        tokenize(prompt)
