"""`spotlight train --local`: Flow-GRPO on the tiny base in one process.

The system's trainer loop (``spotlight.actors.trainer.loop``) with one rank, no planner and
random seeds; this module only maps command-line settings onto it:

    run dir/
      run.json        settings (what ``--resume`` continues with)
      trainer.jsonl   one JSON object per line: {"kind": "iteration"|"validation", ...}
      plans.jsonl     the prompts and seeds of every iteration, written before use
      curve.png       train reward and validation score against iteration
      checkpoint/     latest policy (checkpoint.py format) + optimizer.pt + state.json

Every random choice is a function of (run seed, iteration): the prompts of iteration i,
their seeds, the SDE noise (sampler.py), the minibatch order. A checkpoint therefore holds
only weights, optimizer state and the iteration count, and ``--resume RUN_DIR`` continues
exactly as the uninterrupted run would have (tested bit for bit).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from spotlight.models.flow_grpo import FlowGrpoConfig

# torch and the models are imported inside the functions that need them so that
# `spotlight train --help` stays instant (cli.py imports this module for the parser).


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """A local training run; stored as run.json in the run directory."""

    algo: FlowGrpoConfig
    """The algorithm of each iteration."""
    iterations: int = 100
    """Iterations to run (a time budget may stop earlier)."""
    time_budget_s: float | None = None
    """Stop after the iteration that crosses this wall time (then validate and checkpoint)."""
    val_every: int = 10
    """Validate every this many iterations (and at 0 and at the end)."""
    val_per_kind: int = 6
    """Held-out prompts per caption kind in the validation set (fewer where a kind has fewer)."""
    val_seeds: int = 8
    """Fixed seeds per validation prompt."""
    ckpt_every: int = 10
    """Checkpoint every this many iterations (and at the end)."""
    seed: int = 0
    """Run seed: prompts, seeds, noise and minibatch order derive from it."""
    reward: str = "geneval"
    base: str | None = None
    """Base checkpoint directory; None = the cached default base (built on first use)."""
    train_prompts: str = "train"
    """``train`` (the training split) or ``validation`` (the overfit control of
    ``TrainerLoopConfig.train_prompts``; bench_learning's ``--train-prompts``)."""

    def __post_init__(self) -> None:
        for name in ("iterations", "val_every", "val_per_kind", "val_seeds", "ckpt_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RunSettings.{name} must be an integer >= 1, got {value!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0, got {self.time_budget_s!r}")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSettings:
        from spotlight.models.flow_grpo import FlowGrpoConfig
        from spotlight.models.grpo import GrpoConfig
        from spotlight.models.nft import NftConfig
        from spotlight.models.sampler import SamplerConfig

        algo = dict(data["algo"])
        sampler = dict(algo.pop("sampler"))
        if sampler.get("sde_window") is not None:
            sampler["sde_window"] = tuple(sampler["sde_window"])
        grpo = GrpoConfig(**algo.pop("grpo"))
        nft = NftConfig(**algo.pop("nft", {}))
        config = FlowGrpoConfig(sampler=SamplerConfig(**sampler), grpo=grpo, nft=nft, **algo)
        rest = {k: v for k, v in data.items() if k != "algo"}
        return cls(algo=config, **rest)


class _Progress:
    """rich progress bar on a terminal, plain lines otherwise (logs, CI)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.fancy = enabled and sys.stdout.isatty()
        self.total = total
        self._bar: Any = None
        if self.fancy:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]flow-grpo"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
            )
            self._bar.start()
            self._task = self._bar.add_task("", total=total)
        self.enabled = enabled

    def update(self, done: int, text: str) -> None:
        if self.fancy:
            self._bar.update(self._task, completed=done, description=text)
        elif self.enabled:
            print(f"[{done}/{self.total}] {text}", flush=True)

    def close(self) -> None:
        if self.fancy:
            self._bar.stop()


def train_local(
    settings: RunSettings,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    reward_fn: Callable[[np.ndarray, list[str]], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a local Flow-GRPO run; returns a summary of base/final validation.

    A local run is the system's own trainer loop (actors/trainer/loop.py) with one rank, no
    planner and random seeds: one loop to keep right, and a local result predicts what the
    same settings do inside `spotlight run`."""
    import asyncio

    from spotlight.actors.trainer.loop import TrainerLoop, TrainerLoopConfig

    run_dir.mkdir(parents=True, exist_ok=True)
    state = run_dir / "checkpoint" / "state.json"
    if resume and not state.is_file():
        raise ValueError(f"--resume {run_dir}: no checkpoint/state.json there to resume from")
    base = settings.base
    if base is None:
        from spotlight.models.base_build import ensure_base

        base = str(ensure_base(progress=progress))
    (run_dir / "run.json").write_text(json.dumps(settings.to_json(), indent=2) + "\n")
    config = TrainerLoopConfig(
        algo=settings.algo,
        iterations=settings.iterations,
        time_budget_s=settings.time_budget_s,
        val_every=settings.val_every,
        ckpt_every=settings.ckpt_every,
        val_per_kind=settings.val_per_kind,
        val_seeds=settings.val_seeds,
        seed=settings.seed,
        reward=settings.reward,
        base=base,
        train_prompts=settings.train_prompts,  # type: ignore[arg-type]  # checked there
        dedicated_torch_thread=True,  # one process, the host's cores are the trainer's
    )
    done = [int(json.loads(state.read_text())["iteration"]) if resume else 0]
    bar = _Progress(settings.iterations, progress)

    def advance(text: str) -> None:
        done[0] += 1
        bar.update(done[0], text)

    loop = TrainerLoop(config, run_dir, resume=resume, reward_fn=reward_fn, progress=advance)
    try:
        summary = asyncio.run(loop.run())
    finally:
        bar.close()
    vals = summary.validations
    its = [r for r in loop.trainer_log.records if r["kind"] == "iteration"]
    return {
        "base_val_score": vals[0]["val_score"] if vals else math.nan,
        "base_val_spread": vals[0]["val_spread"] if vals else math.nan,
        "final_val_score": vals[-1]["val_score"] if vals else math.nan,
        "final_val_spread": vals[-1]["val_spread"] if vals else math.nan,
        "iterations": summary.iterations,
        "wall_s": summary.wall_s,
        "zero_std_group_frac": float(np.mean([r["zero_std_group_frac"] for r in its]))
        if its
        else math.nan,
        "validations": vals,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--local", action="store_true", help="train in this one process (the only mode so far)"
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        help="where metrics, curve and checkpoints go (default runs/train-<time>)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its checkpoint",
    )
    parser.add_argument(
        "--base", type=str, help="base checkpoint directory (default: the cached tiny base)"
    )
    parser.add_argument(
        "--iterations",
        type=int,
        help="iterations to run (default 100; with --resume: the run's own)",
    )
    parser.add_argument(
        "--time-budget", type=float, help="stop after this many seconds of training"
    )
    parser.add_argument("--prompts-per-iter", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--num-steps", type=int, default=6, help="denoising steps")
    parser.add_argument("--noise-level", type=float, default=1.0, help="Flow-GRPO noise level a")
    parser.add_argument(
        "--sde-window", type=str, default="0:2", help="'start:stop' SDE steps, or 'all'"
    )
    parser.add_argument("--shift", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--clip-range", type=float, default=1e-2)
    parser.add_argument("--kl-beta", type=float, default=0.0)
    parser.add_argument(
        "--objective",
        choices=("flow_grpo", "nft"),
        default="flow_grpo",
        help="gradient estimator: Flow-GRPO's clipped ratio, or DiffusionNFT (lower variance)",
    )
    parser.add_argument("--nft-beta", type=float, default=1.0, help="DiffusionNFT's β")
    parser.add_argument(
        "--nft-timesteps", type=int, default=2, help="DiffusionNFT noise levels per sample"
    )
    parser.add_argument("--inner-epochs", type=int, default=1)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--chunks-per-update", type=int, default=1)
    parser.add_argument("--val-every", type=int, default=10)
    parser.add_argument(
        "--val-per-kind", type=int, default=6, help="held-out validation prompts per caption kind"
    )
    parser.add_argument("--val-seeds", type=int, default=8)
    parser.add_argument("--ckpt-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reward", type=str, default="geneval")
    parser.add_argument("--no-progress", action="store_true")


def _parse_window(text: str) -> tuple[int, int] | None:
    if text == "all":
        return None
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(
            f"--sde-window {text!r}: expected 'start:stop' (e.g. 0:3) or 'all'"
        ) from None
    return a, b


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    from spotlight.models.flow_grpo import FlowGrpoConfig
    from spotlight.models.grpo import GrpoConfig
    from spotlight.models.nft import NftConfig
    from spotlight.models.sampler import SamplerConfig

    algo = FlowGrpoConfig(
        prompts_per_iter=args.prompts_per_iter,
        group_size=args.group_size,
        sampler=SamplerConfig(
            num_steps=args.num_steps,
            noise_level=args.noise_level,
            sde_window=_parse_window(args.sde_window),
            shift=args.shift,
        ),
        grpo=GrpoConfig(clip_range=args.clip_range, kl_beta=args.kl_beta),
        lr=args.lr,
        inner_epochs=args.inner_epochs,
        micro_batch=args.micro_batch,
        chunks_per_update=args.chunks_per_update,
        objective=args.objective,
        nft=NftConfig(beta=args.nft_beta, timesteps_per_sample=args.nft_timesteps),
    )
    return RunSettings(
        algo=algo,
        iterations=args.iterations if args.iterations is not None else 100,
        time_budget_s=args.time_budget,
        val_every=args.val_every,
        val_per_kind=args.val_per_kind,
        val_seeds=args.val_seeds,
        ckpt_every=args.ckpt_every,
        seed=args.seed,
        reward=args.reward,
        base=args.base,
    )


def run(args: argparse.Namespace) -> int:
    if not args.local:
        print(
            "spotlight train: only --local (one process) exists so far; pass --local",
            file=sys.stderr,
        )
        return 2
    try:
        if args.resume is not None:
            run_dir = args.resume
            data = json.loads((run_dir / "run.json").read_text())
            settings = RunSettings.from_json(data)
            if args.iterations is not None:
                settings = dataclasses.replace(settings, iterations=args.iterations)
            resume = True
        else:
            settings = settings_from_args(args)
            run_dir = args.run_dir or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
            resume = False
        summary = train_local(settings, run_dir, resume=resume, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"spotlight train: {e}", file=sys.stderr)
        return 2
    print(
        f"base {summary['base_val_score']:.3f} → final {summary['final_val_score']:.3f} "
        f"(±{summary['final_val_spread']:.3f}) after {summary['iterations']} iterations; "
        f"metrics in {run_dir / 'trainer.jsonl'}, curve in {run_dir / 'curve.png'}"
    )
    return 0
