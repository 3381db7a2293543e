"""Save and load a tiny policy: ``model.safetensors`` (weights) + ``card.json`` (what it is).

A checkpoint is a directory. The card records the config (so a checkpoint of another shape is
refused with a message naming both, instead of a wall of size-mismatch errors), the training
steps, final loss, base validation score, the recipe that made it, and library versions.
safetensors, not pickle: loading a checkpoint never runs code from the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from spotlight.models.dit import DiTConfig, DiTPolicy
from spotlight.models.lora import tunable_state

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
CARD_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or made for another config."""


@dataclass(frozen=True, kw_only=True)
class CheckpointCard:
    """What a checkpoint is; stored as JSON beside the weights."""

    config: DiTConfig
    """Shape of the policy the weights belong to."""
    steps: int = 0
    """Optimizer steps that produced the weights."""
    loss: float | None = None
    """Final training loss (flow matching for the base, GRPO loss after RL)."""
    val_score: float | None = None
    """Validation score (mean reward on held-out prompts × fixed seeds, ODE sampler)."""
    recipe: dict[str, Any] = field(default_factory=dict)
    """How the weights were made (the pretraining recipe, RL settings, ...)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping: loss curve, per-prompt scores, wall time."""
    versions: dict[str, str] = field(default_factory=dict)
    """Library versions at save time (filled in by :func:`save_checkpoint`)."""
    lora: dict[str, Any] | None = None
    """The policy's LoRA settings when its weights include adapters (filled in by
    :func:`save_checkpoint`); loading attaches the same adapters before the weights."""
    base: str | None = None
    """A pipeline directory (bases.py) the adapters sit on: the weights file then holds the
    adapters only (a 20B base is never copied into a run), and loading reads the base first."""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CARD_FORMAT,
            "config": self.config.to_dict(),
            "steps": self.steps,
            "loss": self.loss,
            "val_score": self.val_score,
            "recipe": self.recipe,
            "metrics": self.metrics,
            "versions": self.versions,
            "lora": self.lora,
            "base": self.base,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckpointCard:
        if data.get("format") != CARD_FORMAT:
            raise CheckpointError(
                f"card format {data.get('format')!r} is not supported (expected {CARD_FORMAT})"
            )
        return cls(
            config=DiTConfig.from_dict(data["config"]),
            steps=int(data["steps"]),
            loss=data.get("loss"),
            val_score=data.get("val_score"),
            recipe=dict(data.get("recipe") or {}),
            metrics=dict(data.get("metrics") or {}),
            versions=dict(data.get("versions") or {}),
            lora=data.get("lora"),
            base=data.get("base"),
        )


def _versions() -> dict[str, str]:
    import diffusers

    from spotlight import __version__

    return {
        "spotlight": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }


def save_checkpoint(policy: DiTPolicy, path: str | os.PathLike[str], card: CheckpointCard) -> Path:
    """Write ``policy``'s weights and ``card`` into directory ``path`` (created if needed).

    Each file is written to a temporary name and renamed, so a crash mid-save never leaves a
    half-written checkpoint that looks complete.
    """
    if card.config != policy.config:
        raise CheckpointError(
            f"card is for config {card.config.name!r} but the policy is {policy.config.name!r}"
        )
    if card.base is not None and policy.lora is None:
        raise CheckpointError(
            f"a checkpoint on the base {card.base} holds adapters only, and the policy has none"
        )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    weights = tunable_state(policy) if card.base is not None else policy.state_dict()
    state = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    full = CheckpointCard(
        config=card.config,
        steps=card.steps,
        loss=card.loss,
        val_score=card.val_score,
        recipe=card.recipe,
        metrics=card.metrics,
        versions={**_versions(), **card.versions},
        lora=None if policy.lora is None else policy.lora.to_dict(),
        base=card.base,
    )
    with tempfile.NamedTemporaryFile(dir=out, suffix=".tmp", delete=False) as f:
        tmp_weights = Path(f.name)
    save_file(state, str(tmp_weights), metadata={"config": policy.config.name})
    tmp_weights.replace(out / WEIGHTS_FILE)
    tmp_card = out / (CARD_FILE + ".tmp")
    tmp_card.write_text(json.dumps(full.to_json(), indent=2) + "\n")
    tmp_card.replace(out / CARD_FILE)
    return out


def read_card(path: str | os.PathLike[str]) -> CheckpointCard:
    """The card of the checkpoint directory ``path`` (CheckpointError if missing or corrupt)."""
    card_path = Path(path) / CARD_FILE
    if not Path(path).is_dir():
        raise CheckpointError(f"no checkpoint directory at {path}")
    if not card_path.is_file():
        raise CheckpointError(f"checkpoint {path} has no {CARD_FILE}")
    try:
        return CheckpointCard.from_json(json.loads(card_path.read_text()))
    except CheckpointError:
        raise
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint card {card_path} is corrupt: {e}") from e
