"""Checkpoint round trip and every error a user can hit when loading one."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from spotlight.models.bases import load_checkpoint
from spotlight.models.checkpoint import (
    CARD_FILE,
    WEIGHTS_FILE,
    CheckpointCard,
    CheckpointError,
    read_card,
    save_checkpoint,
)
from spotlight.models.dit import build_policy, get_config

MICRO = dataclasses.replace(
    get_config("tiny"),
    num_layers=1,
    num_attention_heads=2,
    attention_head_dim=16,
    joint_attention_dim=32,
    axes_dims_rope=(4, 6, 6),
)


@pytest.fixture
def saved(tmp_path):
    policy = build_policy(MICRO, seed=3)
    card = CheckpointCard(
        config=MICRO, steps=20, loss=0.5, val_score=0.4, recipe={"lr": 1e-3}, metrics={"a": [1, 2]}
    )
    return policy, save_checkpoint(policy, tmp_path / "ckpt", card)


def test_round_trip(saved):
    policy, path = saved
    loaded, card = load_checkpoint(path, config=MICRO)
    a, b = policy.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (card.config, card.steps, card.loss, card.val_score) == (MICRO, 20, 0.5, 0.4)
    assert card.recipe == {"lr": 1e-3} and card.metrics == {"a": [1, 2]}
    assert {"torch", "diffusers", "spotlight"} <= card.versions.keys()
    x = torch.randn(1, MICRO.num_tokens, MICRO.token_dim)
    with torch.no_grad():
        text = policy.encode_prompts(["a red circle"])
        torch.testing.assert_close(
            loaded(x, torch.tensor([0.5]), text), policy(x, torch.tensor([0.5]), text)
        )
    assert not list(path.glob("*.tmp")), "temporary files left behind"


def test_missing(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=f"has no {CARD_FILE}"):
        load_checkpoint(tmp_path / "empty")


def test_missing_weights(saved):
    _, path = saved
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"has no {WEIGHTS_FILE}"):
        load_checkpoint(path)


def test_corrupt_weights(saved):
    _, path = saved
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    (path / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_corrupt_card(saved):
    _, path = saved
    (path / CARD_FILE).write_text("{broken")
    with pytest.raises(CheckpointError, match=r"card .* is corrupt"):
        read_card(path)
    (path / CARD_FILE).write_text(json.dumps({"format": 99}))
    with pytest.raises(CheckpointError, match="format 99"):
        read_card(path)


def test_other_config_is_refused(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="is for config 'tiny', asked for 'qwen-image'"):
        load_checkpoint(path, config="qwen-image")
    with pytest.raises(CheckpointError, match="different shape"):
        load_checkpoint(path, config="tiny")  # same name, other shape than MICRO


def test_weights_of_another_shape_are_refused(saved, tmp_path):
    _, path = saved
    other = dataclasses.replace(MICRO, num_layers=2)
    save_checkpoint(build_policy(other), tmp_path / "other", CheckpointCard(config=other))
    (path / WEIGHTS_FILE).write_bytes((tmp_path / "other" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(CheckpointError, match="do not match config"):
        load_checkpoint(path)


def test_card_must_match_policy(tmp_path):
    with pytest.raises(CheckpointError, match="card is for config"):
        save_checkpoint(
            build_policy(MICRO), tmp_path, CheckpointCard(config=get_config("qwen-image"))
        )
