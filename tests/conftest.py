"""Fixtures shared across test folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.micro import save_micro_base


@pytest.fixture(scope="session")
def micro_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised one-layer checkpoint the trainer can use as its base (no
    pretraining). Spot nodes explore it too: the coordinator sends them its full DiTConfig."""
    return save_micro_base(tmp_path_factory.mktemp("base") / "micro")
