"""Install a base built by `spotlight pretrain --out DIR` as the base the package ships.

    spotlight pretrain --out runs/base          # autoencoder, DiT, validation (see its card)
    python scripts/ship_base.py runs/base       # -> spotlight/assets/{base-tiny-latent,vae-tiny-scenes}

The autoencoder is copied as ``vae-tiny-scenes``, the base's config is pointed at that name, and
the card records the SHA-256 of every shipped file (checked by ``shipped.shipped_base()`` before
each use) plus the rebuild command and how long the build took (``--built-s``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spotlight.models.checkpoint import read_card
from spotlight.models.shipped import install_base


def main() -> int:
    parser = argparse.ArgumentParser(prog="ship_base.py", description=__doc__)
    parser.add_argument("built", type=Path, help="the directory `spotlight pretrain --out` wrote")
    parser.add_argument(
        "--command",
        default="spotlight pretrain --out runs/base",
        help="the exact command that built it (recorded in the card)",
    )
    parser.add_argument("--built-s", type=float, default=None, help="wall seconds of that build")
    args = parser.parse_args()
    path = install_base(
        args.built,
        extra={"rebuild_command": args.command, "rebuild_wall_s": args.built_s},
    )
    card = read_card(path)
    print(f"shipped {path}: {card.steps} steps, val score {card.val_score}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
