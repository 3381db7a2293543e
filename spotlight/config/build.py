"""Plain data (a file, ``--set`` text) to typed, validated config dataclasses."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from spotlight.config.checks import ConfigError


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # resolved in the module that declares ``cls``


def _coerce(value: Any, hint: Any, key: str, *, from_text: bool) -> Any:
    """``value`` as type ``hint``; text (from --set) is parsed by the type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if type(None) in args and (value is None or (from_text and value in ("none", "null"))):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, from_text=from_text)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}={value!r}; valid: {', '.join(map(str, choices))}")
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} is a section; give a mapping of its keys, got {value!r}")
        return _build(hint, value, key + ".")
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if from_text and str(value).lower() in (
                "true",
                "yes",
                "on",
                "1",
                "false",
                "no",
                "off",
                "0",
            ):
                return str(value).lower() in ("true", "yes", "on", "1")
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                return value
            if from_text:
                return int(str(value))
            raise ValueError
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int | float):
                return float(value)
            if from_text:
                return float(str(value))
            raise ValueError
        if hint is str:
            if isinstance(value, str):
                return value
            if from_text or (isinstance(value, int | float) and not isinstance(value, bool)):
                return str(value)
            raise ValueError
    except ValueError:
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{key}={value!r} is not a valid {name}") from None
    raise AssertionError(f"unsupported config type {hint!r} for {key}")


def _build(cls: type, data: Mapping[str, Any], prefix: str, *, from_text: bool = False) -> Any:
    hints = _hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in valid]
    if unknown:
        where = f"section {prefix[:-1]!r}" if prefix else "the top level"
        raise ConfigError(
            f"unknown config key {prefix + str(unknown[0])!r} in {where}; "
            f"valid keys: {', '.join(valid)}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k, from_text=from_text) for k, v in data.items()}
    return cls(**kwargs)
