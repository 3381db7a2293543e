"""Building the base: the autoencoder and DiT training of ``spotlight pretrain``, and the cache.

``ensure_base()`` is what the system asks for: without a recipe, the base shipped in the
package (verified, shipped.py); with one, a cached build of that recipe, built once under a
file lock and renamed into place so an interrupted build never looks complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from rich.console import Console

from spotlight.models.autoencoder import AutoencoderRecipe, train_autoencoder
from spotlight.models.base import PretrainRecipe, pretrain, progress_bar
from spotlight.models.base_eval import score_checkpoint
from spotlight.models.checkpoint import read_card, save_checkpoint
from spotlight.models.shipped import shipped_base

__all__ = ["build_base", "cached_base_path", "default_cache_dir", "ensure_base"]


def default_cache_dir() -> Path:
    """``$SPOTLIGHT_CACHE`` or ``~/.cache/spotlight``."""
    env = os.environ.get("SPOTLIGHT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "spotlight"


def build_base(
    out: str | os.PathLike[str],
    recipe: PretrainRecipe | None = None,
    *,
    vae_dir: str | os.PathLike[str] | None = None,
    max_minutes: float | None = None,
    evaluate: bool = True,
    progress: bool = True,
    console: Console | None = None,
) -> Path:
    """Pretrain, save to ``out`` and (``evaluate``) score the base on held-out prompts.

    A latent config first trains its autoencoder into ``out/vae`` (or copies ``vae_dir``, an
    autoencoder trained before) and records that directory as the config's ``vae``;
    ``scripts/ship_base.py`` then installs the result into the package assets.
    """
    recipe = recipe or PretrainRecipe()
    console = console or Console(stderr=True)
    cfg = recipe.dit_config
    out_path = Path(out).resolve()
    ae_metrics: dict[str, object] = {}
    if cfg.vae is not None:
        vae_out = out_path / "vae"
        if vae_dir is not None:
            shutil.copytree(vae_dir, vae_out, dirs_exist_ok=True)
        else:
            ae_metrics = _train_autoencoder(recipe.autoencoder, vae_out, console, progress)
        cfg = dataclasses.replace(cfg, vae=str(vae_out))
    result = pretrain(
        recipe, max_minutes=max_minutes, progress=progress, console=console, dit_config=cfg
    )
    metrics = {**result.card.metrics, "autoencoder": ae_metrics or {"from": str(vae_dir)}}
    path = save_checkpoint(
        result.policy, out_path, dataclasses.replace(result.card, metrics=metrics)
    )
    if evaluate:
        score_checkpoint(path)
    return path


def _train_autoencoder(
    recipe: AutoencoderRecipe, out: Path, console: Console, progress: bool
) -> dict[str, object]:
    with progress_bar(console, progress) as bar:
        task = bar.add_task("training autoencoder", total=recipe.steps, info="")
        result = train_autoencoder(
            recipe, on_step=lambda _s, loss: bar.update(task, advance=1, info=f"L1 {loss:.4f}")
        )
    result.codec.save(out)
    return result.metrics


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so two processes asking for the same base build it once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_base_path(
    recipe: PretrainRecipe | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    recipe = recipe or PretrainRecipe()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"base-{recipe.config}-{recipe.key()}"


def ensure_base(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    recipe: PretrainRecipe | None = None,
    progress: bool = True,
    log: TextIO | None = None,
) -> Path:
    """The base checkpoint: without ``recipe`` the one shipped in the package (verified; see
    shipped.py), else the cached build of ``recipe``, building it first if absent (says so).

    The build runs once per cache key; concurrent callers wait on a file lock and then reuse
    it. A build is written to a temporary directory and renamed, so an interrupted build never
    leaves a checkpoint that looks complete.
    """
    if recipe is None:
        return shipped_base()
    path = cached_base_path(recipe, cache_dir)
    log = log or sys.stderr
    if (path / "card.json").is_file():
        return path
    with _file_lock(path.with_name(path.name + ".lock")):
        if (path / "card.json").is_file():
            return path
        print(
            f"spotlight: building the tiny base model once ({recipe.steps} steps, roughly 15 "
            f"minutes on a 2-core CPU); it will be cached at {path}",
            file=log,
            flush=True,
        )
        tmp = path.with_name(path.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        build_base(tmp, recipe, progress=progress)
        tmp.replace(path)
    read_card(path)
    return path
