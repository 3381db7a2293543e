"""One spot node's explorer at SP degree 1 (worker thread) vs 2 (elastic SP group): seeds/s,
and the group's re-form time after one member process is SIGKILLed mid-request.

    python scripts/bench_sp_explorer.py [--model tiny] [--batch 8] [--steps 6] [--reps 3]

It drives the sampling backends the spot node uses (``ThreadBackend``, ``SPBackend``) with
the same (prompts, seeds, weights) and prints one JSON line. Weights are random (no base
is needed): the cost of a step does not depend on their values.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time

import torch
import uvloop

from spotlight.actors.explorer import ExploreSettings
from spotlight.actors.sampling_backend import ThreadBackend
from spotlight.actors.sp_explore import NodeSPConfig, SPBackend
from spotlight.models.dit import build_policy, get_config
from spotlight.models.rewards import build_reward
from spotlight.models.sampler import SamplerConfig
from spotlight.runtime import Runtime, RuntimeConfig

PROMPTS = ["a red circle", "two blue squares left of a green triangle"]


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

    async def rate(backend: object) -> float:
        best = 0.0
        for rep in range(args.reps + 1):  # the first is a warm-up
            seeds = list(range(rep * 100, rep * 100 + args.batch))
            t0 = time.perf_counter()
            await backend.rewards(prompts, seeds, num_steps=args.steps, settings=settings)  # type: ignore[attr-defined]
            if rep:
                best = max(best, args.batch / (time.perf_counter() - t0))
        return best

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
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        print(json.dumps(runner.run(bench(args))), flush=True)


if __name__ == "__main__":
    main()
