"""One spot node's explorer at SP degree 1 (worker thread) vs 2 (elastic SP group): seeds/s,
and the group's re-form time after one member process is SIGKILLed mid-request.

    python scripts/bench_sp_explorer.py [--model tiny] [--batch 8] [--steps 6] [--reps 5]

It drives the sampling backends the spot node uses (``ThreadBackend``, ``SPBackend``) with
the same (prompts, seeds, weights), prints degree 2 beside degree 1 (median and range over
``--reps`` batches, and their ratio) and writes ``benchmarks/results/sp_explorer.json``.
Weights are random (no base is needed): the cost of a step does not depend on their values.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import time
from pathlib import Path

import torch
import uvloop

from spotlight.actors.exploration.backends import ExploreSettings, ThreadBackend
from spotlight.actors.exploration.sp_backend import NodeSPConfig, SPBackend
from spotlight.models.dit import build_policy, get_config
from spotlight.models.rewards import build_reward
from spotlight.models.sampler import SamplerConfig
from spotlight.runtime import Runtime, RuntimeConfig

PROMPTS = ["a red circle", "two blue squares left of a green triangle"]
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


async def bench(args: argparse.Namespace) -> dict[str, object]:
    model = get_config(args.model)
    state = build_policy(model, seed=1).state_dict()
    reward = build_reward("geneval")
    settings = ExploreSettings(
        trainer_sampler=SamplerConfig(num_steps=args.steps, noise_level=1.0, sde_window=(0, 2)),
        micro_batch=32,
    )
    prompts = [PROMPTS[i % 2] for i in range(args.batch)]
    out: dict[str, object] = {"model": args.model, "batch": args.batch, "steps": args.steps}

    async def rate(backend: object) -> dict[str, float]:
        rates = []
        for rep in range(args.reps + 1):  # the first is a warm-up
            seeds = list(range(rep * 100, rep * 100 + args.batch))
            t0 = time.perf_counter()
            await backend.rewards(prompts, seeds, num_steps=args.steps, settings=settings)  # type: ignore[attr-defined]
            if rep:
                rates.append(args.batch / (time.perf_counter() - t0))
        return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}

    thread = ThreadBackend(build_policy(model, seed=0), reward)
    await thread.load(1, state)
    out["seeds_per_s_degree1"] = await rate(thread)

    async with Runtime(RuntimeConfig(heartbeat_s=0.25, missed_heartbeats=4)) as rt:
        sp = await SPBackend.start(
            rt, NodeSPConfig(node="bench", members=2, degree=2), model, monitor=None
        )
        try:
            sp.factory(build_policy(model, seed=0), reward)
            t0 = time.perf_counter()
            await sp.load(1, state)
            out["weights_load"] = {**sp.loads[-1], "total_s": time.perf_counter() - t0}
            out["seeds_per_s_degree2"] = await rate(sp)
            # Re-form: SIGKILL member 2 while a request is being stepped.
            seeds = list(range(900, 900 + args.batch))
            task = asyncio.ensure_future(
                sp.rewards(prompts, seeds, num_steps=args.steps * 4, settings=settings)
            )
            while True:
                st = await sp.scheduler.statistics.ask()
                if st["request"] is not None and st["request"][1] >= 1:
                    break
                await asyncio.sleep(0.01)
            t_kill = time.time()
            os.kill(sp.member_pids[1], signal.SIGKILL)
            await task
            events = await sp.scheduler.events.ask(t_kill)
            done = [e for e in events if e[1] == "reform_done"]
            out["reform"] = {
                "kill_to_reformed_s": done[0][0] - t_kill if done else None,
                "reform_s": done[0][2]["seconds"] if done else None,
                "degree_after": done[0][2]["degree"] if done else None,
            }
        finally:
            await sp.stop()
    d1, d2 = out["seeds_per_s_degree1"], out["seeds_per_s_degree2"]
    out["degree2_over_degree1"] = d2["median"] / d1["median"]  # type: ignore[index]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "sp_explorer.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        out = runner.run(bench(args))
    d1, d2 = out["seeds_per_s_degree1"], out["seeds_per_s_degree2"]
    print(
        f"seeds/s, median [min-max] of {args.reps}: degree 1 (thread) {d1['median']:.1f} "  # type: ignore[index]
        f"[{d1['min']:.1f}-{d1['max']:.1f}]  degree 2 (SP group) {d2['median']:.1f} "  # type: ignore[index]
        f"[{d2['min']:.1f}-{d2['max']:.1f}]  ratio {out['degree2_over_degree1']:.2f}x; "  # type: ignore[index]
        f"re-form after a member SIGKILL: {out['reform']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
