"""What `spotlight run` does with a run directory that may already hold a run.

Why this exists: SkyPilot managed jobs, a Kubernetes Job's restarts and systemd all re-run
the *same* command after a failure or a preemption. ``--resume auto`` (or ``run.resume:
auto``) makes one command right for every attempt:

==============================================  ==========================================
the run directory holds                         what happens
==============================================  ==========================================
nothing (absent, empty, or only ``lost+found``)  a fresh run
this run's ``config.json``, no checkpoint yet   a fresh run (it died before its first one)
this run's ``config.json`` and ``checkpoint/``  resume from the checkpoint (settings that
                                                changed since are printed as a diff)
another run (a setting in :data:`IDENTITY_KEYS`  refused: the error names the settings that
differs)                                        differ and what to do
files but no ``config.json``                    refused: not a run directory
==============================================  ==========================================

"Another run" is decided by the settings that give the checkpoint and the recorded plans
their meaning (:data:`IDENTITY_KEYS`); any other change (iterations, learning rate, the
spot pool, ...) continues the run and is shown as ``key: old -> new``.

A crash in the middle of writing a checkpoint (``trainer/loop.py`` renames ``checkpoint``
to ``checkpoint.old`` and ``checkpoint.partial`` to ``checkpoint``) can leave no
``checkpoint/``: :func:`recover_checkpoint` puts the newest complete one back first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spotlight.config import ConfigError, SystemConfig

__all__ = [
    "CONFIG_FILE",
    "IDENTITY_KEYS",
    "Change",
    "RunDirPlan",
    "auto_resume",
    "format_changes",
    "recover_checkpoint",
    "settings_diff",
]

CONFIG_FILE = "config.json"

IDENTITY_KEYS = (
    "run.seed",
    "trainer.base",
    "trainer.reward",
    "trainer.prompts",
    "trainer.seeds",
    "trainer.objective",
    "trainer.lora_rank",
    "trainer.lora_alpha",
)
"""Settings that make a run directory hold *another* run when they differ: the checkpoint's
weights and adapters, the reward they were trained for, the prompts and seeds already
recorded in plans.jsonl."""

NOT_COMPARED = ("run.run_dir", "run.resume")
"""Where and how the command found the directory, not what the run is."""

IGNORED_ENTRIES = frozenset({"lost+found"})
"""What a fresh file system volume holds at its root (a PVC mounted as the run directory)."""


@dataclass(frozen=True)
class Change:
    """One setting that differs between the run directory's config and this command's."""

    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"


@dataclass(frozen=True)
class RunDirPlan:
    """What to do with the run directory: resume it or start fresh, and what changed."""

    resume: bool
    reason: str
    changes: list[Change] = field(default_factory=list)
    iteration: int | None = None


def settings_diff(old: SystemConfig, new: SystemConfig) -> list[Change]:
    """Every key whose value differs, in tree order (``run.run_dir``/``run.resume`` aside)."""
    a, b = old.to_dict(), new.to_dict()
    out: list[Change] = []
    for section, keys in b.items():
        for name, value in keys.items():
            key = f"{section}.{name}"
            if key not in NOT_COMPARED and a[section][name] != value:
                out.append(Change(key, a[section][name], value))
    return out


def format_changes(changes: list[Change]) -> str:
    return "\n".join(f"  {c}" for c in changes)


def recover_checkpoint(run_dir: Path) -> bool:
    """Put a checkpoint back after a crash mid-save; True if one was restored.

    The save writes ``checkpoint.partial`` completely (``state.json`` last), then renames
    ``checkpoint`` -> ``checkpoint.old`` and ``checkpoint.partial`` -> ``checkpoint``. So with
    no ``checkpoint``: a partial that has its ``state.json`` is complete and newest; else
    ``checkpoint.old`` is the last complete one.

    Every data-parallel rank calls this on the shared run directory at once: a rename that
    another rank already made fails here (the source is gone, or ``checkpoint`` is there and
    not empty), and that is success too, since ``checkpoint`` is then in place.
    """
    final = run_dir / "checkpoint"
    if final.exists():
        return False
    for candidate in (run_dir / "checkpoint.partial", run_dir / "checkpoint.old"):
        if (candidate / "state.json").is_file():
            try:
                os.replace(candidate, final)
            except OSError:
                if final.exists():  # another rank put one back first
                    return False
                raise
            return True
    return False


def _entries(run_dir: Path) -> list[str]:
    if not run_dir.exists():
        return []
    if not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file, not a directory")
    return sorted(
        p.name
        for p in run_dir.iterdir()
        # rank 0's config.json on its way in (write_atomic), seen by a rank deciding now
        if p.name not in IGNORED_ENTRIES and not p.name.startswith(f".{CONFIG_FILE}.tmp")
    )


def stored_config(run_dir: Path) -> SystemConfig:
    """The config a run directory was last run with; ConfigError if unreadable."""
    path = run_dir / CONFIG_FILE
    try:
        return SystemConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:  # ConfigError is a ValueError
        raise ConfigError(
            f"{path} is not a readable run configuration ({exc}); this directory cannot be "
            "resumed: give another --run-dir"
        ) from None


def auto_resume(run_dir: Path, cfg: SystemConfig) -> RunDirPlan:
    """``--resume auto``: the plan for ``run_dir`` given this command's ``cfg`` (see the
    module docstring); ConfigError, saying what to do, for a directory it must not touch."""
    entries = _entries(run_dir)
    if not entries:
        return RunDirPlan(resume=False, reason="empty: a fresh run")
    if CONFIG_FILE not in entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ConfigError(
            f"--resume auto: {run_dir} is not empty ({shown}) and holds no {CONFIG_FILE}, so it "
            "is not a spotlight run directory; give an empty or new --run-dir"
        )
    old = stored_config(run_dir)
    changes = settings_diff(old, cfg)
    other = [c for c in changes if c.key in IDENTITY_KEYS]
    if other:
        raise ConfigError(
            f"--resume auto: {run_dir} holds another run; these settings differ from it "
            f"(there -> this command):\n{format_changes(other)}\nGive another --run-dir for "
            f"a new run, or continue that one as it was with --resume {run_dir}"
        )
    recover_checkpoint(run_dir)
    state = run_dir / "checkpoint" / "state.json"
    if not state.is_file():
        return RunDirPlan(
            resume=False, reason="this run, with no checkpoint yet: a fresh start", changes=changes
        )
    try:
        iteration = int(json.loads(state.read_text())["iteration"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--resume auto: {state} is unreadable ({exc})") from None
    return RunDirPlan(resume=True, reason="its checkpoint", changes=changes, iteration=iteration)
