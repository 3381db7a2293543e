"""`spotlight pretrain`: train the tiny base model by flow matching and save it with its card.

Without ``--out`` the base goes to the cache (``$SPOTLIGHT_CACHE`` or ``~/.cache/spotlight``)
under the hash of config + recipe, exactly where the main job looks for it, so running this
once ahead of time saves the main job the build.
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
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument(
        "--no-eval",
        action="store_true",
        help="with --out: skip the base validation score (the cache always has it)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from spotlight.models.base import PretrainRecipe, build_base, ensure_base
    from spotlight.models.checkpoint import read_card

    recipe = PretrainRecipe(
        config=args.config,
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
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
            max_minutes=args.minutes,
            evaluate=not args.no_eval,
            progress=not args.no_progress,
        )
    card = read_card(path)
    m = card.metrics
    print(
        f"saved {path}: steps {card.steps}, loss {card.loss:.4f}, "
        f"val score {card.val_score if card.val_score is None else round(card.val_score, 3)}"
        f" (seed spread {m.get('val_seed_spread')}), {m.get('steps_per_s')} steps/s, "
        f"wall {m.get('wall_s')} s"
    )
    return 0
