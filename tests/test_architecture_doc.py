"""docs/architecture.md names real modules: every ``spotlight/...py`` path and every
``dir/file.py`` relative to ``spotlight/actors`` or ``spotlight`` exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"


def test_every_named_module_exists() -> None:
    text = DOC.read_text()
    named = set(re.findall(r"[\w/]+\.py", text))
    assert len(named) > 20, "the picture names too few modules to be a map"
    missing = []
    for path in sorted(named):
        candidates = [ROOT / path, ROOT / "spotlight" / path, ROOT / "spotlight" / "actors" / path]
        if "/" not in path:  # a bare file name: somewhere under spotlight/
            candidates = list((ROOT / "spotlight").rglob(path))
        if not any(c.is_file() for c in candidates):
            missing.append(path)
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_every_named_package_exists() -> None:
    for module in set(re.findall(r"spotlight(?:\.\w+)+", DOC.read_text())):
        parts = module.split(".")
        assert (ROOT.joinpath(*parts).with_suffix(".py")).is_file() or (
            ROOT.joinpath(*parts) / "__init__.py"
        ).is_file(), module
