"""`spotlight pretrain`: train the tiny base model by flow matching and save it with its card.

The main job uses the base shipped in the package (spotlight/assets); this command rebuilds it
from nothing: for the latent config, the autoencoder first (into ``OUT/vae``; ``--vae DIR``
reuses one), then the DiT, then its validation score and testbed diagnostics.
``scripts/ship_base.py OUT`` installs the result as the shipped base. Without ``--out`` the
base goes to the cache (``$SPOTLIGHT_CACHE`` or ``~/.cache/spotlight``) under the hash of
config + recipe.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spotlight.models.dit import CONFIGS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from spotlight.models.base import PretrainRecipe

    d = PretrainRecipe()
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="checkpoint directory (default: the cache, keyed by config + recipe)",
    )
    parser.add_argument(
        "--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})"
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="stop early after this much wall time (the step count then depends on the machine; "
        "such a run is never written to the cache, so it needs --out)",
    )
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed (default {d.seed})")
    parser.add_argument(
        "--config", choices=sorted(c for c in CONFIGS if c != "qwen-image"), default=d.config
    )
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument(
        "--pool-size",
        type=int,
        default=d.pool_size,
        help=f"rendered training scenes (default {d.pool_size})",
    )
    parser.add_argument(
        "--caption-noise",
        type=float,
        default=d.caption_noise,
        help=f"fraction of training captions made wrong (default {d.caption_noise})",
    )
    parser.add_argument(
        "--ae-steps",
        type=int,
        default=d.autoencoder.steps,
        help=f"autoencoder training steps for a latent config (default {d.autoencoder.steps})",
    )
    parser.add_argument(
        "--vae",
        type=Path,
        default=None,
        help="with --out: reuse an autoencoder trained before (a diffusers directory)",
    )
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument(
        "--no-eval",
        action="store_true",
        help="with --out: skip the base validation score (the cache always has it)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from spotlight.models.base import PretrainRecipe
    from spotlight.models.base_build import build_base, ensure_base
    from spotlight.models.checkpoint import read_card

    defaults = PretrainRecipe()
    recipe = PretrainRecipe(
        config=args.config,
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        caption_noise=args.caption_noise,
        pool_size=args.pool_size,
        autoencoder=dataclasses.replace(defaults.autoencoder, steps=args.ae_steps),
    )
    if args.vae is not None and args.out is None:
        raise SystemExit(
            "spotlight pretrain: --vae needs --out DIR (a reused autoencoder is "
            "not part of the cache key)"
        )
    if args.minutes is not None and args.out is None:
        raise SystemExit(
            "spotlight pretrain: --minutes makes the step count machine-dependent, so the "
            "result cannot go to the cache; give --out DIR as well"
        )
    if args.out is None:
        # Through ensure_base: locked, atomic, and a no-op when this recipe is already cached.
        print(f"pretraining {recipe.config} base into the cache (key {recipe.key()})")
        path = ensure_base(recipe=recipe, progress=not args.no_progress)
    else:
        print(f"pretraining {recipe.config} base ({recipe.steps} steps) -> {args.out}")
        path = build_base(
            args.out,
            recipe,
            vae_dir=args.vae,
            max_minutes=args.minutes,
            evaluate=not args.no_eval,
            progress=not args.no_progress,
        )
    card = read_card(path)
    m = card.metrics
    print(
        f"saved {path}: steps {card.steps}, loss {card.loss:.4f}, "
        f"val score {card.val_score if card.val_score is None else round(card.val_score, 3)}"
        f" (seed spread {m.get('val_score_seed_spread')}), {m.get('steps_per_s')} steps/s, "
        f"wall {m.get('wall_s')} s"
    )
    return 0
