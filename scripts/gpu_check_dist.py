"""The two-process checks of ``gpu_check.py``: NCCL all-reduce and Ulysses at degree 2.

Two processes (``torch.multiprocessing``, spawn), one GPU each, joined through the repo's
own ``new_group_from_store`` over a ``TCPStore`` on 127.0.0.1 (the NCCL path of
``spotlight/models/process_groups.py`` that the CPU machines never ran). Each writes
its numbers to a JSON file; the parent waits under a deadline and kills stragglers by
PID. On the CPU (``--device cpu --world 2``) the same code runs over gloo.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

DEADLINE_S = 240.0
GB = 1e9


def _allreduce(group: Any, device: torch.device, cuda: bool, timed: Any) -> dict[str, Any]:
    world = group.size()
    probe = torch.full((4,), float(group.rank() + 1), device=device)
    group.allreduce([probe]).wait()
    expected = world * (world + 1) / 2
    if not torch.all(probe == expected):
        raise RuntimeError(f"all-reduce gave {probe.tolist()}, expected {expected}")
    numel = (64 << 20) if cuda else (1 << 18)  # 128 MiB of bf16 on GPUs
    buf = torch.ones(numel, dtype=torch.bfloat16 if cuda else torch.float32, device=device)
    secs = timed(lambda: group.allreduce([buf]).wait(), 5)
    nbytes = buf.numel() * buf.element_size()
    return {
        "bytes": nbytes,
        "s": secs,
        "bus_gb_per_s": 2 * (world - 1) / world * nbytes / secs / GB,  # nccl-tests' busbw
    }


def _ulysses_at(args: argparse.Namespace, env: Any, group: Any, res: int) -> dict[str, Any]:
    from spotlight.models.ulysses import ulysses_forward

    policy = env.policy(args.blocks, res)  # same seed: identical weights on every rank
    x, sigma, text = env.inputs(policy.config)
    kwargs = policy.transformer_kwargs(x.to(env.device), sigma, text)
    transformer = policy.transformer
    with torch.no_grad():  # single-GPU first: ulysses_forward installs its processors
        ref = transformer(**kwargs, return_dict=False)[0]
        single_s = env.timed(lambda: transformer(**kwargs, return_dict=False), args.reps)
        sp = ulysses_forward(transformer, group, **kwargs)
        sp_s = env.timed(lambda: ulysses_forward(transformer, group, **kwargs), args.reps)
    rel = float((sp.float() - ref.float()).abs().max() / ref.float().abs().max())
    # bf16 attention reduced in another order over split heads: ~1e-2 relative is
    # rounding; a wrong shard (tokens swapped, heads misrouted) is O(1).
    if rel > 5e-2:
        raise RuntimeError(f"Ulysses output differs from single-GPU by {rel:.3g} (relative)")
    return {
        "max_rel_diff_vs_single": rel,
        "single_forward_s": single_s,
        "ulysses_forward_s": sp_s,
        "speedup": single_s / sp_s,
    }


def _ulysses(args: argparse.Namespace, env: Any, group: Any) -> dict[str, Any]:
    return {f"{res}px": _ulysses_at(args, env, group, res) for res in args.resolutions}


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out_dir: str) -> None:
    """One rank: group, all-reduce, Ulysses; results (or the error) to ``rank<r>.json``."""
    result: dict[str, Any] = {"rank": rank}
    code = 0
    try:
        from gpu_check_runs import Env
        from torch.distributed import TCPStore

        from spotlight.models.process_groups import new_group_from_store

        cuda = args.device == "cuda"
        device = torch.device("cuda", rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        env = Env(args, device=device)
        store = TCPStore("127.0.0.1", port, world, rank == 0, timeout=timedelta(seconds=120))
        t0 = time.perf_counter()
        group = new_group_from_store(
            store, "gpu_check/0", rank, world, backend="nccl" if cuda else "gloo",
            timeout=timedelta(seconds=120), device=device if cuda else None,
            gloo_hostname=None if cuda else "127.0.0.1",
        )  # fmt: skip
        result["group_create_s"] = time.perf_counter() - t0
        if "nccl" not in args.skip:
            result["allreduce"] = _allreduce(group, device, cuda, env.timed)
        if "ulysses" not in args.skip:
            result["ulysses"] = _ulysses(args, env, group)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback_tail"] = traceback.format_exc().strip().splitlines()[-6:]
        code = 1
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result, default=str))
    sys.stdout.flush()
    os._exit(code)  # process_groups.py: a clean interpreter exit after gloo may abort


def run_distributed(args: argparse.Namespace, results: dict[str, Any], *, port: int) -> None:
    """Spawn two ranks, wait under ``DEADLINE_S``, fold their files into ``results``."""
    world = 2
    with tempfile.TemporaryDirectory(prefix="gpu_check_dist_") as out_dir:
        t0 = time.perf_counter()
        ctx = mp.start_processes(
            _worker, args=(world, port, args, out_dir), nprocs=world, join=False,
            start_method="spawn",
        )  # fmt: skip
        error = None
        try:
            while not ctx.join(timeout=5):
                if time.perf_counter() - t0 > DEADLINE_S:
                    error = f"ranks still running after {DEADLINE_S:.0f} s: killed"
                    break
        except Exception as exc:  # a rank exited non-zero: its file says why
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
                proc.join(10)
        ranks = []
        for r in range(world):
            path = Path(out_dir, f"rank{r}.json")
            ranks.append(json.loads(path.read_text()) if path.exists() else {"rank": r})
    wall = round(time.perf_counter() - t0, 3)
    errors = [f"rank {d['rank']}: {d['error']}" for d in ranks if "error" in d]
    if error and not errors:
        errors.append(error)
    for name, key in (("nccl", "allreduce"), ("ulysses", "ulysses")):
        if name in args.skip:
            continue
        per_rank = {f"rank{d['rank']}": d.get(key) for d in ranks}
        ok = not errors and all(v is not None for v in per_rank.values())
        entry: dict[str, Any] = {"ok": ok, "world": world, "wall_s": wall, **per_rank}
        if not ok:
            entry["error"] = "; ".join(errors) or f"no {key} result"
            entry["traceback_tail"] = [t for d in ranks for t in d.get("traceback_tail", [])]
        entry["group_create_s"] = [d.get("group_create_s") for d in ranks]
        results["checks"][name] = entry
        print(
            f"gpu_check: {name:<12s} {wall:>7.1f} s  {'ok' if ok else 'FAILED: ' + entry['error']}"
        )
