"""The error type of a bad configuration and the checks the sections share."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A bad configuration: the message names the key (dotted) and what is valid."""


def _positive_int(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{owner}.{name} must be an integer >= 1, got {value!r}")


def _positive_float(owner: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{owner}.{name} must be a finite number {bound}, got {value!r}")
