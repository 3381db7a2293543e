"""Shipped configuration presets: ``spotlight run --config NAME`` loads ``NAME.yaml`` here.

Why files inside the package: a ``pip install`` has no repository around it, and a preset is
read the same way as any ``--config FILE`` (so it cannot hold what a file could not).
``spotlight config show --config NAME`` prints one resolved, with every key's doc.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PRESETS_DIR", "preset_names", "preset_path"]

PRESETS_DIR = Path(__file__).resolve().parent


def preset_names() -> list[str]:
    """The shipped presets, sorted."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path | None:
    """The file of preset ``name``, or None when there is no such preset."""
    if name not in preset_names():
        return None
    return PRESETS_DIR / f"{name}.yaml"
