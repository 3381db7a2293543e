#!/usr/bin/env python
"""Reward call time: in process vs through reward actors (1 and 2 worker processes).

    python scripts/bench_reward_actors.py            # ~1 minute on 2 cores
    python scripts/bench_reward_actors.py --quick

What is timed is what the trainer pays per reward call: ``reward_fn(images, prompts)`` from a
worker thread (as ``TrainerLoop._torch_call`` runs rollouts), on the tiny model's images
(uint8 64×32×32×3 rendered scenes, a training batch; and 64 for validation's 4 kinds × 4 × 4),
with the GenEval reward. In process: the reward object called directly. Actors: a
``RemoteReward`` over a ``RewardPool`` of 1 or 2 ``reward_worker`` processes on loopback,
``chunk_images`` 16 (the default). Calls interleave the configurations so machine noise hits
all alike; medians and min..max over ``--reps`` calls. Workers are killed by PID at the end.
Results: benchmarks/results/reward_actors.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _summary(xs: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in xs]
    q = statistics.quantiles(ms, n=4)
    return {
        "min_ms": min(ms),
        "p25_ms": q[0],
        "median_ms": statistics.median(ms),
        "max_ms": max(ms),
    }


def _rss_mib(pid: int) -> float | None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


async def _bench(reps: int, batch: int, chunk: int) -> dict[str, object]:
    from spotlight.actors.rewards.client import RemoteReward
    from spotlight.actors.rewards.pool import RewardPool, RewardPoolConfig
    from spotlight.models.rewards import build_reward
    from spotlight.models.scenes import random_batch
    from spotlight.runtime import Runtime

    images, prompts = random_batch(np.random.default_rng(0), batch)
    local = build_reward("geneval")
    times: dict[str, list[float]] = {"in_process": [], "actors_1": [], "actors_2": []}
    expected = local(images, prompts)
    hop: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        # One runtime per pool (each hosts its own "rewards" registry), both up at once so
        # the calls can interleave.
        async with Runtime() as rt1, Runtime() as rt2:
            pools = [
                RewardPool(rt, RewardPoolConfig(workers=n), Path(tmp) / f"rewards{n}.log")
                for rt, n in ((rt1, 1), (rt2, 2))
            ]
            try:
                for pool in pools:
                    await pool.start()
                for pool in pools:
                    await pool.roster.wait_ready(120.0)
                    assert len(pool.roster.workers) == pool.config.workers, "not registered"
                clients = {
                    f"actors_{pool.config.workers}": RemoteReward(
                        pool.roster, local, loop=asyncio.get_running_loop(), chunk_images=chunk
                    )
                    for pool in pools
                }
                for name, client in clients.items():  # warm-up, and the bits check
                    got = await asyncio.to_thread(client, images, prompts)
                    assert np.array_equal(got, expected), name
                rss = [_rss_mib(pid) for pid in pools[0].pids]
                for _ in range(reps):
                    for name in times:
                        fn = local if name == "in_process" else clients[name]
                        t0 = time.perf_counter()
                        await asyncio.to_thread(fn, images, prompts)
                        times[name].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    await asyncio.to_thread(lambda: None)  # the thread hop alone
                    hop.append(time.perf_counter() - t0)
            finally:
                for pool in pools:
                    await pool.close()
    best = min(times["in_process"])
    base = statistics.median(times["in_process"])
    return {
        "batch": batch,
        "chunk_images": chunk,
        "image_shape": list(images.shape[1:]),
        **{k: _summary(v) for k, v in times.items()},
        "to_thread_hop": _summary(hop),
        "worker_rss_mib": rss,
        "overhead_ms": {
            "note": "actors minus in process; min = the calls least disturbed by other jobs, "
            "median = what a loaded box gives",
            **{f"{k}_min": (min(v) - best) * 1000 for k, v in times.items() if k != "in_process"},
            **{
                f"{k}_median": (statistics.median(v) - base) * 1000
                for k, v in times.items()
                if k != "in_process"
            },
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "reward_actors.json"))
    args = p.parse_args()
    reps = 5 if args.quick else args.reps
    import uvloop

    result = uvloop.run(_bench(reps, 64, 16))
    out = {
        "what": "reward call from a worker thread: in process vs RemoteReward over reward "
        "worker processes (GenEval, 64 rendered 32x32 scenes, chunks of 16)",
        "machine": f"{platform.machine()} {os.cpu_count()} cores; shared and loaded "
        "(other jobs running; run under nice -n 19)",
        "reps": reps,
        **result,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
