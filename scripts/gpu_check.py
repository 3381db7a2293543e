#!/usr/bin/env python
"""Run the GPU paths that have never run, and time them: ``scripts/gpu_check.sh`` calls this.

    scripts/gpu_check.sh                      # one CUDA machine, < 8 min on one H100
    python scripts/gpu_check.py --blocks 4 --resolutions 512,1024

On a reduced-depth Qwen-Image transformer at real width (``--blocks`` of the 60 blocks,
3072 wide, 24 heads x 128, text width 3584; random weights, nothing is downloaded):

* ``dit``: forward in bf16 at each resolution and at two depths (1 and ``--blocks``):
  seconds per sample-step and peak memory, fitted as ``a + b * blocks`` and projected
  to 60 blocks (``fit_per_block``);
* ``sampler``: the Flow-GRPO SDE sampler driving the bf16 model: log-probs must come
  back float32 and finite;
* ``lora``: LoRA (r=32, alpha=64) training steps with gradient checkpointing and AdamW:
  forward + backward seconds per sample-step at both depths, projected likewise, and the
  adapters must move;
* ``vae``: decode with a randomly initialised ``AutoencoderKLQwenImage`` (diffusers'
  default config) through ``QwenVaeDecoder``;
* ``weight_load``: safetensors from local disk to the GPU, GB/s (page cache warm: the
  file was just written), and the projected load of the 20B base;
* ``nccl`` and ``ulysses`` when >= 2 GPUs: an all-reduce's bus bandwidth, and Ulysses at
  degree 2 against the single-GPU forward (two processes, a TCPStore on 127.0.0.1).

Results: ``benchmarks/results/gpu_check.json``. Exit codes: 0 all checks passed, or no
CUDA device (a message says so and nothing is written; ``--require-cuda`` makes that
2); 1 some check failed (its error is in the JSON, the others still ran); 2 bad arguments.
``--device cpu`` runs the same code on the CPU at toy sizes (the tests use it).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

DEFAULT_OUT = REPO / "benchmarks" / "results" / "gpu_check.json"
FULL_BLOCKS = 60
CHECKS = ("dit", "sampler", "lora", "vae", "weight_load", "nccl", "ulysses")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
NO_CUDA = (
    "gpu_check: no CUDA device visible (no /dev/nvidia*, or torch.cuda.is_available() is False): "
    "nothing was run "
    "and nothing written. Run scripts/gpu_check.sh on a machine with an NVIDIA GPU and a CUDA "
    "build of torch (pip install torch --index-url https://download.pytorch.org/whl/cu124)."
)


# ---------------------------------------------------------------- arguments (CPU-tested)


def _resolutions(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolutions must be integers, got {text!r}") from None
    bad = [v for v in values if v < 16 or v % 16]
    if not values or bad:
        raise argparse.ArgumentTypeError(
            f"resolutions must be multiples of 16 (VAE 8 x patch 2), got {text!r}"
        )
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=3, help="transformer blocks (2..60; 3)")
    p.add_argument("--resolutions", type=_resolutions, default=(512, 1024), help="pixels")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per measurement (5)")
    p.add_argument("--train-steps", type=int, default=3, help="timed LoRA steps (3)")
    p.add_argument("--skip", default="", help=f"comma-separated checks to skip: {CHECKS}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    p.add_argument("--require-cuda", action="store_true", help="exit 2 without CUDA")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--heads", type=int, default=24, help=argparse.SUPPRESS)
    p.add_argument("--text-tokens", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=None, help=argparse.SUPPRESS)
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 2 <= args.blocks <= FULL_BLOCKS:
        parser.error(
            f"--blocks must be in 2..{FULL_BLOCKS} (two depths are fitted), got {args.blocks}"
        )
    for name in ("reps", "train_steps", "heads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = sorted(skip - set(CHECKS))
    if unknown:
        parser.error(f"--skip {','.join(unknown)}: unknown check(s); valid: {', '.join(CHECKS)}")
    args.skip = skip
    return args


# ---------------------------------------------------------------- arithmetic (CPU-tested)


def fit_per_block(points: Sequence[tuple[int, float]]) -> dict[str, float]:
    """Least-squares ``value = overhead + per_block * blocks`` over (blocks, value) points.

    Two depths of the same model separate what every block costs (``per_block``) from
    what runs once (embeddings, RoPE set-up, the final norm and projection: ``overhead``).
    """
    depths = {b for b, _ in points}
    if len(depths) < 2:
        raise ValueError(f"need points at two or more depths to fit, got depths {sorted(depths)}")
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    sxx = sum((b - mean_b) ** 2 for b, _ in points)
    sxy = sum((b - mean_b) * (v - mean_v) for b, v in points)
    per_block = sxy / sxx
    return {"per_block": per_block, "overhead": mean_v - per_block * mean_b}


def project(fit: dict[str, float], blocks: int = FULL_BLOCKS) -> float:
    """The fitted value at ``blocks`` blocks (60: the real model)."""
    return fit["overhead"] + fit["per_block"] * blocks


def scaled(points: Sequence[tuple[int, float]], unit: str) -> dict[str, Any]:
    """Measured points, the per-block fit and the 60-block projection, for the JSON."""
    fit = fit_per_block(points)
    return {
        "measured": [{"blocks": b, unit: v} for b, v in points],
        f"per_block_{unit}": fit["per_block"],
        f"overhead_{unit}": fit["overhead"],
        f"projected_{FULL_BLOCKS}_blocks_{unit}": project(fit),
    }


def run_check(name: str, fn: Callable[[], dict[str, Any]], results: dict[str, Any]) -> None:
    """Run one check; its result or its error (with the traceback's tail) goes in ``results``."""
    t0 = time.perf_counter()
    try:
        out = {"ok": True, **fn()}
    except Exception as exc:
        tail = traceback.format_exc().strip().splitlines()[-6:]
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback_tail": tail}
    out["wall_s"] = round(time.perf_counter() - t0, 3)
    results["checks"][name] = out
    status = "ok" if out["ok"] else f"FAILED: {out['error']}"
    print(f"gpu_check: {name:<12s} {out['wall_s']:>7.1f} s  {status}", flush=True)


def write_results(path: Path, results: dict[str, Any]) -> Path:
    """Write the JSON (directories created); ``ok`` is true only if every check passed."""
    results["ok"] = all(c.get("ok") for c in results["checks"].values())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path


def cuda_problem() -> str | None:
    """Why the CUDA checks cannot run here, or None when they can.

    No NVIDIA device node and no ``nvidia-smi``: answered without importing torch (seconds
    saved on every CPU machine, where this is the whole run)."""
    if not any(Path("/dev").glob("nvidia[0-9]*")) and shutil.which("nvidia-smi") is None:
        return NO_CUDA
    import torch

    if not torch.cuda.is_available():
        return NO_CUDA
    return None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse already printed the message
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    if args.device == "cuda":
        problem = cuda_problem()
        if problem is not None:
            print(problem, file=sys.stderr)
            return EXIT_USAGE if args.require_cuda else EXIT_OK
    from gpu_check_runs import run_all  # torch, diffusers: only past this point

    results: dict[str, Any] = {
        "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checks": {},
    }
    t0 = time.perf_counter()
    run_all(args, results)
    results["duration_s"] = round(time.perf_counter() - t0, 1)
    path = write_results(args.out, results)
    print(f"gpu_check: wrote {path} ({results['duration_s']} s)")
    return EXIT_OK if results["ok"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
