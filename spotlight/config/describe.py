"""The configuration tree described from the code: every key's type, default and doc.

Why from the code: the docs live where each field is declared (an attribute docstring under
it), so ``spotlight config show``, ``spotlight config schema`` and docs/configuration.md all
read them from there and cannot say something the dataclasses do not. A field with no
docstring is a bug (``tests/test_config_cli.py`` fails on one).

Attribute docstrings are not kept by Python at run time, so they are read from the source
with :mod:`ast` (the string statement right after each annotated field of the class).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from spotlight.config.build import _hints
from spotlight.config.system import SystemConfig

__all__ = ["KeyInfo", "describe", "field_docs", "section_docs", "type_text"]


@cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass, read from its source (dedented, one space
    between lines of a paragraph); a field without one is absent."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef)).body
    docs: dict[str, str] = {}
    for stmt, after in zip(body, [*body[1:], None], strict=True):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        if (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = _one_paragraph(after.value.value)
    return docs


def section_docs() -> dict[str, str]:
    """``{section: the first paragraph of its class docstring}``."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(SystemConfig):
        doc = inspect.getdoc(_hints(SystemConfig)[f.name]) or ""
        out[f.name] = _one_paragraph(doc.split("\n\n")[0])
    return out


def _one_paragraph(text: str) -> str:
    return " ".join(inspect.cleandoc(text).split())


def type_text(hint: Any) -> str:
    """A field type as a reader writes it: ``int``, ``float | None``, ``trace | external``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in typing.get_args(hint))
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


@dataclass(frozen=True, kw_only=True)
class KeyInfo:
    """One leaf of the tree: ``section.name`` with its type, default, value and doc."""

    key: str
    type: Any
    default: Any
    value: Any
    doc: str

    @property
    def section(self) -> str:
        return self.key.split(".")[0]

    @property
    def changed(self) -> bool:
        return bool(self.value != self.default)


def describe(config: SystemConfig | None = None) -> list[KeyInfo]:
    """Every key of the tree in declaration order, with ``config``'s values (default: the
    built-in defaults)."""
    config = config if config is not None else SystemConfig()
    defaults = SystemConfig()
    rows: list[KeyInfo] = []
    for sec in dataclasses.fields(SystemConfig):
        cls = _hints(SystemConfig)[sec.name]
        hints, docs = _hints(cls), field_docs(cls)
        for f in dataclasses.fields(cls):
            rows.append(
                KeyInfo(
                    key=f"{sec.name}.{f.name}",
                    type=hints[f.name],
                    default=getattr(getattr(defaults, sec.name), f.name),
                    value=getattr(getattr(config, sec.name), f.name),
                    doc=docs.get(f.name, ""),
                )
            )
    return rows
