"""The configuration tree of `spotlight run`: one frozen, validated object built from a file.

Why one tree: the trainer, the planner, the spot pool and the bill are set together (the
planner's group size is the trainer's, the pool's time scale is the bill's clock), so they
are validated together, once, before any process starts. A run directory stores the
resolved tree (``config.json``) and ``--resume`` continues with exactly it.

Sources, later ones win::

    defaults (the dataclasses below)  <  --config FILE|PRESET (YAML or TOML)  <  plain flags
    (--iterations, --run-dir, --no-spot)  <  --set section.key=value (repeatable)

A file or ``--set`` naming a key that does not exist is an error naming the key and the
valid ones (a setting that is silently ignored is a bug). ``--set`` values are parsed by
the field's type: ``--set trainer.lr=2e-5``, ``--set spot.trace=none``,
``--set trainer.sde_window=0:3``.

Sections (every field is documented where it is declared):

- ``run``: iterations, time budget, validation and checkpoint periods, run seed, run dir.
- ``trainer``: the Flow-GRPO algorithm, reward, base checkpoint, ``seeds: random|explored``.
- ``planner``: the exploration planner's knobs (used when ``trainer.seeds: explored``).
- ``spot``: the simulated spot pool (trace, time scale, notice lead, node command).
- ``prices``: GPU-hour prices (a preset, optionally overridden).
- ``rewards``: reward worker processes the trainer scores through (0: in process).
- ``rollout``: where the trainer's own rollouts are sampled (pull-scheduled workers or the
  trainer's thread) and the timing of their leases.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spotlight.config.build import _coerce, _hints
from spotlight.config.checks import ConfigError
from spotlight.config.presets import preset_names, preset_path
from spotlight.config.system import SystemConfig

__all__ = ["apply_overrides", "config_path", "load_config", "read_file"]


def apply_overrides(config: SystemConfig, overrides: Sequence[str]) -> SystemConfig:
    """``section.key=value`` strings applied in order (values parsed by the field type)."""
    data = config.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. trainer.lr=2e-5")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(
                f"--set {item!r}: expected section.key=value with one dot; sections: "
                f"{', '.join(f.name for f in dataclasses.fields(SystemConfig))}"
            )
        section, name = parts
        if section not in data:
            raise ConfigError(
                f"unknown config section {section!r} in --set {item!r}; valid sections: "
                f"{', '.join(f.name for f in dataclasses.fields(SystemConfig))}"
            )
        sec_cls = _hints(SystemConfig)[section]
        valid = [f.name for f in dataclasses.fields(sec_cls)]
        if name not in valid:
            raise ConfigError(
                f"unknown config key {key!r} in --set; valid keys of {section!r}: "
                f"{', '.join(valid)}"
            )
        data[section][name] = _coerce(text.strip(), _hints(sec_cls)[name], key, from_text=True)
    return SystemConfig.from_dict(data)


def config_path(name: str | Path) -> Path:
    """``--config``'s argument as a file: a path that exists, else a shipped preset's file
    (``tiny-cpu``); ConfigError naming both when it is neither."""
    p = Path(name)
    if p.is_file():
        return p
    preset = preset_path(str(name))
    if preset is not None:
        return preset
    raise ConfigError(
        f"--config {name}: no such file, and no preset of that name; presets: "
        f"{', '.join(preset_names())} (spotlight config show --config NAME prints one)"
    )


def read_file(path: str | Path) -> dict[str, Any]:
    """A YAML (.yaml/.yml) or TOML (.toml) config file, or a preset's, as nested plain data."""
    p = config_path(path)
    text = p.read_text()
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"--config {p}: unknown format {suffix!r}; use .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--config {p}: {exc}") from None
    except Exception as exc:  # yaml.YAMLError; yaml is imported lazily
        if isinstance(exc, ConfigError) or type(exc).__module__.split(".")[0] != "yaml":
            raise
        raise ConfigError(f"--config {p}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {p}: the top level must be a mapping of sections")
    return data


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> SystemConfig:
    """Defaults < file < ``flags`` ({"section.key": value}, already typed) < ``overrides``."""
    data: dict[str, Any] = read_file(path) if path is not None else {}
    config = SystemConfig.from_dict(data)
    if flags:
        merged = config.to_dict()
        for key, value in flags.items():
            section, name = key.split(".")
            merged[section][name] = value
        config = SystemConfig.from_dict(merged)
    return apply_overrides(config, overrides)
