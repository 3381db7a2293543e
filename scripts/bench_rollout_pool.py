#!/usr/bin/env python
"""The trainer's rollout phase: sampled in its own thread vs through the rollout pool.

    python scripts/bench_rollout_pool.py            # ~1 minute on 2 cores
    python scripts/bench_rollout_pool.py --quick

What is timed is one iteration's rollouts of the tiny model (`spotlight run`'s defaults: 8
prompts x 8 seeds, 6 steps, SDE on steps 0-1): ``in_thread`` is ``generate`` in chunks of
``trainer.micro_batch`` (32) as ``rollout.workers: trainer`` does; ``pool`` is
``RolloutPool.sample`` with only the trainer's own worker (``rollout.pull_batch`` 16 requests
advanced per forward pass, a commit every 2 steps, every result through the scheduler), i.e.
the pool's overhead when no spot node helps; ``pool_2`` adds a second worker in another
runtime of this process, standing for a spot node. The configurations interleave so machine
noise hits all alike; medians and min..max over ``--reps`` batches. On this 2-core CPU a
second worker has no cores of its own, so ``pool_2`` shows the pool's load balancing, not a
speed-up; on a cluster each spot worker brings its own GPU.

Results: benchmarks/results/rollout_pool.json (keys ``in_thread_s``, ``pool_s``,
``pool_2_s``: median seconds per batch; ``pool_vs_in_thread``: the ratio of medians).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent


def _summary(xs: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(xs), "min_s": min(xs), "max_s": max(xs)}


async def _bench(reps: int, pull_batch: int) -> dict[str, Any]:
    from spotlight.actors.rollout.pool import RolloutPool
    from spotlight.actors.rollout.worker import RolloutSettings, RolloutWorker
    from spotlight.actors.scheduling.scheduler import SchedulingConfig
    from spotlight.config.sections import TrainerSection
    from spotlight.models.dit import build_policy
    from spotlight.models.flow_grpo import generate
    from spotlight.models.scenes import prompt_split
    from spotlight.runtime import Runtime, RuntimeConfig

    algo = TrainerSection().algo()
    sampler = algo.sampler
    policy = build_policy("tiny", seed=0)
    policy.train()  # the trainer's sampling mode
    train, _ = prompt_split()
    prompts = [p for p in train[: algo.prompts_per_iter] for _ in range(algo.group_size)]
    timing = SchedulingConfig(
        lease_ttl_s=30.0, heartbeat_s=10.0, commit_interval=2, pull_batch=pull_batch,
        idle_pull_s=0.05,
    )  # fmt: skip
    settings = RolloutSettings.like(sampler, batch_held=True)
    times: dict[str, list[float]] = {"in_thread": [], "pool": [], "pool_2": []}
    async with Runtime(RuntimeConfig()) as rt:
        pool = await RolloutPool.start(rt, timing, settings=settings, timeout_s=300.0)
        await pool.attach(policy, lambda: 0)
        spot_rt: Runtime | None = None
        helper = build_policy("tiny", seed=0)
        helper.load_state_dict(policy.state_dict())
        helper.train()
        iteration = 0
        for rep in range(reps):
            seeds = [1000 * rep + i for i in range(len(prompts))]
            for config in ("in_thread", "pool", "pool_2"):
                if config == "pool_2" and spot_rt is None:
                    spot_rt = await Runtime(RuntimeConfig()).start()
                    await spot_rt.spawn(
                        RolloutWorker,
                        scheduler=spot_rt.ref(rt.address, "rollout_scheduler"),
                        worker_id="spot-0/rollout",
                        model=helper,
                        timing=timing,
                        settings=settings,
                        version=lambda: 0,
                    )
                if config == "pool" and spot_rt is not None:
                    await spot_rt.shutdown("bench: back to the trainer's worker alone")
                    spot_rt = None
                t0 = time.perf_counter()
                if config == "in_thread":
                    await asyncio.to_thread(
                        generate, policy, prompts, seeds, sampler, micro_batch=algo.micro_batch
                    )
                else:
                    batch = await pool.sample(iteration, 0, prompts, seeds, sampler.num_steps)
                    iteration += 1
                    assert len(batch.states) == len(prompts)
                times[config].append(time.perf_counter() - t0)
        if spot_rt is not None:
            await spot_rt.shutdown("bench done")
        await pool.close()
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {
        "in_thread_s": medians["in_thread"],
        "pool_s": medians["pool"],
        "pool_2_s": medians["pool_2"],
        "pool_vs_in_thread": medians["pool"] / medians["in_thread"],
        "pool_2_vs_in_thread": medians["pool_2"] / medians["in_thread"],
        "spread": {k: _summary(v) for k, v in times.items()},
        "samples_per_batch": len(prompts),
        "denoise_steps": sampler.num_steps,
        "micro_batch": algo.micro_batch,
        "pull_batch": pull_batch,
        "reps": reps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9, help="batches per configuration")
    ap.add_argument("--pull-batch", type=int, default=16, help="rollout.pull_batch")
    ap.add_argument("--quick", action="store_true", help="3 batches each (a smoke run)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/rollout_pool.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    reps = 3 if args.quick else args.reps
    result = asyncio.run(_bench(reps, args.pull_batch))
    result["machine"] = {"platform": platform.platform(), "torch_threads": torch.get_num_threads()}
    result["command"] = "python scripts/bench_rollout_pool.py" + (" --quick" if args.quick else "")
    spread = result["spread"]
    print(f"one iteration's rollouts ({result['samples_per_batch']} samples x "
          f"{result['denoise_steps']} steps), median [min-max] of {reps}:")  # fmt: skip
    for name, key in (("in the trainer's thread", "in_thread"), ("pool, trainer's worker", "pool"),
                      ("pool, + 1 worker", "pool_2")):  # fmt: skip
        s = spread[key]
        ratio = s["median_s"] / result["in_thread_s"]
        print(f"  {name:26s} {s['median_s']:.3f} s [{s['min_s']:.3f}-{s['max_s']:.3f}]"
              f"  {ratio:.2f}x in-thread")  # fmt: skip
    out = Path(args.out)
    if args.quick and out == REPO / "benchmarks/results/rollout_pool.json":
        out = REPO / "runs/bench_rollout_pool_quick.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
