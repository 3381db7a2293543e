"""The base model that ships in the package, and the checks that it is the one its card describes.

``make run`` on a fresh clone must start RL at once, not after a 15-minute pretraining, so the
tiny latent base and its autoencoder are committed under ``spotlight/assets/`` (safetensors, a
few MB) with a card: config, data, steps, loss, validation score and the exact command that
rebuilds it. Before anything uses them, ``shipped_base()`` checks that the files are there,
that their SHA-256 match the card, and that the card's config is the config this code defines
under that name; anything else is a ``ShippedBaseError`` that says how to restore or rebuild.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from spotlight.models.autoencoder import ASSETS_DIR, resolve_vae
from spotlight.models.bases import load_checkpoint
from spotlight.models.checkpoint import (
    CARD_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    read_card,
    save_checkpoint,
)
from spotlight.models.dit import get_config

__all__ = [
    "REBUILD_HINT",
    "SHIPPED_BASE_DIR",
    "ShippedBaseError",
    "file_sha256",
    "install_base",
    "shipped_base",
]

SHIPPED_BASE_DIR = ASSETS_DIR / "base-tiny-latent"
VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
REBUILD_HINT = (
    "restore it with `git checkout -- spotlight/assets` or rebuild it with "
    "`spotlight pretrain --out runs/base && python scripts/ship_base.py runs/base` "
    "(see spotlight/assets/README.md)"
)


class ShippedBaseError(CheckpointError):
    """The shipped base is missing, corrupt, or does not match the code's config."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected_hashes(base_dir: Path) -> dict[str, str]:
    card = json.loads((base_dir / CARD_FILE).read_text())
    hashes = card.get("metrics", {}).get("sha256")
    if not isinstance(hashes, dict) or not hashes:
        raise ShippedBaseError(f"the card of {base_dir} records no file hashes; {REBUILD_HINT}")
    return {str(k): str(v) for k, v in hashes.items()}


def shipped_base(base_dir: Path = SHIPPED_BASE_DIR) -> Path:
    """The shipped base checkpoint directory, verified (ShippedBaseError naming the fix)."""
    try:
        card = read_card(base_dir)
    except CheckpointError as e:
        raise ShippedBaseError(f"the shipped tiny base is unusable: {e}; {REBUILD_HINT}") from e
    try:
        code_config = get_config(card.config.name)
    except ValueError as e:
        raise ShippedBaseError(f"{base_dir}: {e}; {REBUILD_HINT}") from e
    if code_config != card.config:
        raise ShippedBaseError(
            f"the shipped base {base_dir} was built for {card.config}, but the code now defines "
            f"{card.config.name!r} as {code_config}; {REBUILD_HINT}"
        )
    files = {WEIGHTS_FILE: base_dir / WEIGHTS_FILE}
    if card.config.vae is not None:
        try:
            vae_dir = resolve_vae(card.config.vae)
        except FileNotFoundError as e:
            raise ShippedBaseError(str(e)) from e
        files.update({f"vae/{name}": vae_dir / name for name in VAE_FILES})
    for name, want in _expected_hashes(base_dir).items():
        path = files.get(name)
        if path is None or not path.is_file():
            raise ShippedBaseError(f"the shipped base lacks {name} ({path}); {REBUILD_HINT}")
        if file_sha256(path) != want:
            raise ShippedBaseError(
                f"{path} does not match the SHA-256 its card records (corrupt or replaced); "
                f"{REBUILD_HINT}"
            )
    return base_dir


def install_base(
    built: Path, *, vae_name: str = "tiny-scenes", extra: dict[str, Any] | None = None
) -> Path:
    """Copy a base built by ``spotlight pretrain --out DIR`` into the package assets: the
    autoencoder as ``vae-<vae_name>``, the base with its config's ``vae`` set to that name and
    its card extended with the files' hashes (and ``extra``). Returns the shipped base dir."""

    policy, card = load_checkpoint(built)
    if card.config.vae is None:
        raise ValueError(f"{built} is a pixel-space base; only latent bases are shipped")
    vae_src = resolve_vae(card.config.vae)
    vae_dst = ASSETS_DIR / f"vae-{vae_name}"
    if vae_dst.resolve() != vae_src.resolve():
        shutil.rmtree(vae_dst, ignore_errors=True)
        vae_dst.mkdir(parents=True)
        for name in VAE_FILES:
            shutil.copyfile(vae_src / name, vae_dst / name)
    config = dataclasses.replace(card.config, vae=vae_name)
    policy.config = config
    hashes = {f"vae/{name}": file_sha256(vae_dst / name) for name in VAE_FILES}
    metrics = {**card.metrics, **(extra or {})}
    save_checkpoint(
        policy,
        SHIPPED_BASE_DIR,
        dataclasses.replace(card, config=config, metrics={**metrics, "sha256": hashes}),
    )
    # The weights' own hash can only go into the card after they are written.
    hashes[WEIGHTS_FILE] = file_sha256(SHIPPED_BASE_DIR / WEIGHTS_FILE)
    card_path = SHIPPED_BASE_DIR / CARD_FILE
    data = json.loads(card_path.read_text())
    data["metrics"]["sha256"] = hashes
    card_path.write_text(json.dumps(data, indent=2) + "\n")
    return shipped_base()
