"""Typed metric records for tests (spotlight/actors/monitor/records.py), filled with defaults
so a test names only the fields it is about."""

from __future__ import annotations

from typing import Any

from spotlight.actors.monitor.records import NodeRecord, TrainerRecord, ValidationRecord


def trainer_fields(iteration: int, **overrides: Any) -> dict[str, Any]:
    """A valid ``trainer`` record's fields for ``iteration``."""
    rec = TrainerRecord(
        iteration=iteration,
        loss=0.1,
        reward_mean=0.5,
        reward_std=0.2,
        zero_std_fraction=0.0,
        iteration_s=1.0,
        weight_version=iteration,
        world=1,
    )
    return rec.fields() | overrides


def validation_fields(iteration: int, score: float, **overrides: Any) -> dict[str, Any]:
    rec = ValidationRecord(iteration=iteration, score=score, spread=0.01, val_s=0.5)
    return rec.fields() | overrides


def node_fields(kind: str, status: str, **overrides: Any) -> dict[str, Any]:
    rec = NodeRecord(kind=kind, status=status, gpus=1, gpu_hours=0.0, cost_usd=0.0)
    return rec.fields() | overrides
