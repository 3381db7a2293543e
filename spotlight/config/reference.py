"""The configuration tree written out for people: a commented YAML file and a Markdown page.

``spotlight config show`` prints :func:`commented_yaml` (the resolved tree as a config file
that loads back to the same tree, each key under its doc, type and default) and
``spotlight config docs`` writes :func:`markdown_reference` (docs/configuration.md; a test
fails when the committed page differs from what the code generates).
"""

from __future__ import annotations

import textwrap
from typing import Any

import yaml

from spotlight.config.describe import KeyInfo, describe, section_docs, type_text
from spotlight.config.presets import preset_names, preset_path
from spotlight.config.system import SystemConfig

__all__ = ["commented_yaml", "markdown_reference", "preset_summary"]

_WIDTH = 96


def _scalar(value: Any) -> str:
    """One YAML scalar (``null``, ``8``, ``'0:2'``) as it would appear after ``key:``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def commented_yaml(config: SystemConfig, *, header: str = "") -> str:
    """``config`` as a YAML config file: every key, each with its doc, type and default as
    comments above it, a changed value marked. Loading it gives ``config`` back."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    sections = section_docs()
    current = ""
    for row in describe(config):
        if row.section != current:
            current = row.section
            lines += ["", *_comment(sections[current], indent=""), f"{current}:"]
        lines += _comment(row.doc, indent="  ")
        mark = "  (changed)" if row.changed else ""
        lines.append(f"  # {type_text(row.type)}; default {_scalar(row.default)}{mark}")
        lines.append(f"  {row.key.split('.', 1)[1]}: {_scalar(row.value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def _comment(text: str, *, indent: str) -> list[str]:
    width = _WIDTH - len(indent) - 2
    return [f"{indent}# {line}" for line in textwrap.wrap(text, width)]


def preset_summary(name: str) -> str:
    """The first comment paragraph of a preset's file, without its ``Preset NAME:`` lead."""
    path = preset_path(name)
    assert path is not None, name
    lines: list[str] = []
    for line in path.read_text().splitlines():
        text = line.lstrip("#").strip()
        if not line.startswith("#") or not text:
            break
        lines.append(text)
    first = " ".join(lines)
    return first.split(":", 1)[1].strip() if first.startswith("Preset ") else first


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(row: KeyInfo) -> str:
    return (
        f"| `{row.key}` | {_cell(type_text(row.type))} | `{_cell(_scalar(row.default))}` "
        f"| {_cell(row.doc)} |"
    )


_INTRO = """\
How a configuration is put together (later sources win):

```
built-in defaults  <  --config FILE or PRESET  <  plain flags (--iterations, --run-dir, ...)
                   <  --set section.key=value (repeatable)
```

A file is YAML, TOML or JSON with the sections below, every key optional; an unknown key or a
bad value is an error that names it and what is valid. `--set` values are parsed by the key's
type (`--set trainer.lr=2e-5`, `--set spot.trace=none`). Paths are relative to the directory
the run starts in.

- `spotlight config show [--config FILE|PRESET] [--set ...]` prints the resolved tree as a
  config file, each key under its doc, type and default (`--json` for a program).
- `spotlight config schema --output spotlight.schema.json` writes a JSON Schema for editors
  (e.g. `# yaml-language-server: $schema=spotlight.schema.json` atop a YAML file).
- `spotlight config docs --output docs/configuration.md` regenerates this page.
"""


def markdown_reference() -> str:
    """docs/configuration.md: presets, then one table per section, in declaration order."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from spotlight/config/ by `spotlight config docs --output "
        "docs/configuration.md`: edit the docstrings there, not this page "
        "(tests/test_config_cli.py fails when they differ). -->",
        "",
        _INTRO,
        "## Presets",
        "",
        "Shipped in `spotlight/config/presets/` and loaded by name: `spotlight run --config NAME`.",
        "",
        "| preset | what it is |",
        "|---|---|",
        *(f"| `{name}` | {_cell(preset_summary(name))} |" for name in preset_names()),
    ]
    sections = section_docs()
    current = ""
    for row in describe():
        if row.section != current:
            current = row.section
            out += ["", f"## `{current}`", "", sections[current], ""]
            out += ["| key | type | default | what it does |", "|---|---|---|---|"]
        out.append(_row(row))
    return "\n".join(out) + "\n"
