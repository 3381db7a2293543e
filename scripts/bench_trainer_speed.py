#!/usr/bin/env python
"""The trainer's iteration time inside `spotlight run` against the same iteration alone.

    python scripts/bench_trainer_speed.py [--rounds 3] [--iterations 6]

Issue 21, section 3: "a Flow-GRPO iteration on the tiny model takes 1.35 s in `spotlight
run`'s trainer thread against 0.95 s on a main thread". Target: in-system / standalone
<= 1.05.

What runs, per round (the order alternates between rounds, so a load that changes over the
bench hits both sides alike; the machine is shared and its load is recorded per run):

- ``system``: ``spotlight run --no-spot --seeds random`` with the shipped defaults otherwise
  (pooled rollouts through the on-demand rollout worker, one reward worker process, the
  monitor, planner, coordinator and weight publisher on the event loop). Iteration time is
  the trainer's own ``iteration_s`` in trainer.jsonl (plan, rollouts, reward, update, weight
  publication; validations and checkpoints are outside it).
- ``system_inline``: the same, with ``rollout.workers=trainer`` and ``rewards.workers=0``:
  the trainer's torch work is then exactly the standalone's, so the ratio isolates what the
  system around it costs (threads, event loop, actors).
- ``standalone``: a process that builds the same trainer (``TrainerLoop._setup``, same
  config, same base) and runs the same iterations (same prompts, seeds, noise, minibatch
  order: random seeds are a function of the run seed and the iteration) with
  ``dp_iteration`` on its main thread: no runtime, no event loop, no actors.

The first iteration of every run is a warm-up and is dropped. A run's time is the median of
its iterations; a round's ratio is system / standalone of that round; the result is the
median ratio over rounds with a bootstrap 95% interval (over rounds), and the pooled ratio
of all measured iterations. The spot pool stays off on both sides: local explorer processes
would take the same 2 cores, which measures CPU sharing, not the trainer.

Results: ``benchmarks/results/trainer_speed.json`` (key ``in_system_over_standalone``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGET = 1.05
VARIANTS: dict[str, list[str]] = {
    "system": [],
    "system_inline": ["--set", "rollout.workers=trainer", "--set", "rewards.workers=0"],
}
COMMON = [
    "--set", "run.time_budget_s=none",  # the default 420 s budget would cut a slow run short
    "--set", "run.val_every=1000", "--set", "run.ckpt_every=1000",
    "--set", "trainer.val_per_kind=1", "--set", "trainer.val_seeds=1",
]  # fmt: skip


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return env


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_system(variant: str, iterations: int, work: Path) -> dict[str, Any]:
    """One `spotlight run` of ``iterations``; its measured iteration times and loop lag."""
    run_dir = work / f"{variant}-{time.monotonic_ns()}"
    cmd = [
        sys.executable, "-m", "spotlight.cli", "run", "--no-spot", "--seeds", "random",
        "--json", "--no-live", "--iterations", str(iterations), "--run-dir", str(run_dir),
        *COMMON, *VARIANTS[variant],
    ]  # fmt: skip
    out = _timed(cmd, work / f"{variant}.log")
    records = [
        json.loads(line) for line in (run_dir / "trainer.jsonl").read_text().splitlines() if line
    ]
    times = [r["iteration_s"] for r in records if r["kind"] == "iteration"]
    report = json.loads((run_dir / "report.json").read_text())
    lag = report["stats"]["event_loop"]
    shutil.rmtree(run_dir, ignore_errors=True)
    return {**out, "iteration_s": times, "event_loop": lag}


def run_standalone(iterations: int, work: Path) -> dict[str, Any]:
    result = work / f"standalone-{time.monotonic_ns()}.json"
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--standalone", str(result),
        "--iterations", str(iterations),
    ]  # fmt: skip
    out = _timed(cmd, work / "standalone.log")
    times = json.loads(result.read_text())["iteration_s"]
    return {**out, "iteration_s": times}


def _timed(cmd: list[str], log: Path) -> dict[str, Any]:
    load0, cpu0, t0 = _load(), _children_cpu_s(), time.monotonic()
    with log.open("ab") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:5]}... failed ({proc.returncode}); see {log}")
    wall = time.monotonic() - t0
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(_children_cpu_s() - cpu0, 1),
        "load_1m": [load0, _load()],
    }


def standalone(out: Path, iterations: int) -> None:
    """The same trainer and iterations as `spotlight run`, on this main thread, no runtime."""
    from spotlight.actors.exploration.planner import flatten, random_plan
    from spotlight.actors.trainer.loop import TrainerLoop
    from spotlight.actors.trainer.plan_log import plan_seed
    from spotlight.commands.run import resolve_config
    from spotlight.models.data_parallel import dp_iteration

    parser = argparse.ArgumentParser()
    from spotlight.commands.run import add_arguments

    add_arguments(parser)
    args = parser.parse_args(
        [
            "--no-spot",
            "--seeds",
            "random",
            "--iterations",
            str(iterations),
            *COMMON,
            "--run-dir",
            str(out.with_suffix(".run")),
        ]
    )
    cfg, run_dir, _ = resolve_config(args)
    loop_cfg = cfg.trainer_loop()
    loop = TrainerLoop(loop_cfg, run_dir)
    loop._setup()  # what the loop's torch thread does first
    algo = loop_cfg.algo
    times: list[float] = []
    for k in range(iterations):
        plan = random_plan(
            f"b{k}", loop.prompts_for(k), algo.group_size, seed=plan_seed(loop_cfg.seed, k)
        )
        prompts, seeds = flatten(plan)
        assert loop._reward_fn is not None
        t0 = time.perf_counter()
        dp_iteration(
            loop.policy,
            loop.optimizer,
            prompts,
            seeds,
            loop._reward_fn,
            algo,
            loop.ctx,
            shuffle_seed=loop_cfg.seed * 7919 + k,
            ref_policy=loop.ref_policy,
        )
        times.append(time.perf_counter() - t0)
    out.write_text(json.dumps({"iteration_s": times}) + "\n")
    shutil.rmtree(run_dir, ignore_errors=True)


def _bootstrap_ci(values: list[float], n: int = 4000, seed: int = 0) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]] if values else [float("nan")] * 2
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    return [round(meds[int(0.025 * n)], 3), round(meds[int(0.975 * n) - 1], 3)]


def summarise(rounds: list[dict[str, Any]], variant: str) -> dict[str, Any]:
    ratios = [
        statistics.median(r[variant]["iteration_s"][1:])
        / statistics.median(r["standalone"]["iteration_s"][1:])
        for r in rounds
    ]
    sys_all = [t for r in rounds for t in r[variant]["iteration_s"][1:]]
    alone_all = [t for r in rounds for t in r["standalone"]["iteration_s"][1:]]
    return {
        "median_ratio": round(statistics.median(ratios), 3),
        "ci95": _bootstrap_ci(ratios),
        "round_ratios": [round(x, 3) for x in ratios],
        "pooled_ratio": round(statistics.median(sys_all) / statistics.median(alone_all), 3),
        "median_iteration_s": round(statistics.median(sys_all), 3),
        "loop_lag_max_ms": max(r[variant]["event_loop"]["loop_lag_max_ms"] for r in rounds),
        "loop_stalls": sum(r[variant]["event_loop"]["loop_stalls"] for r in rounds),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=6, help="per run (the first is dropped)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/trainer_speed.json")
    ap.add_argument("--standalone", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.iterations < 2:
        raise SystemExit("--iterations must be >= 2 (the first is a warm-up, dropped)")
    if args.standalone is not None:
        standalone(args.standalone, args.iterations)
        return 0
    t0 = time.monotonic()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-trainer-speed-") as tmp:
        work = Path(tmp)
        for i in range(args.rounds):
            order = ["standalone", *args.variants]
            if i % 2:
                order.reverse()
            record: dict[str, Any] = {"order": order}
            for name in order:
                if name == "standalone":
                    record[name] = run_standalone(args.iterations, work)
                else:
                    record[name] = run_system(name, args.iterations, work)
                print(f"round {i}: {name} {record[name]}", flush=True)
            rounds.append(record)
    summary = {v: summarise(rounds, v) for v in args.variants}
    alone = [t for r in rounds for t in r["standalone"]["iteration_s"][1:]]
    main_variant = "system" if "system" in summary else args.variants[0]
    result = {
        "in_system_over_standalone": summary[main_variant]["median_ratio"],
        "in_system_over_standalone_ci95": summary[main_variant]["ci95"],
        "target": TARGET,
        "meets_target": summary[main_variant]["median_ratio"] <= TARGET,
        "variants": summary,
        "standalone_median_iteration_s": round(statistics.median(alone), 3),
        "rounds": rounds,
        "method": (
            "per round: `spotlight run --no-spot --seeds random` (variants as named) and a "
            "standalone process running the same iterations on its main thread, order "
            "alternating between rounds; first iteration of each run dropped; ratio = "
            "median system iteration / median standalone iteration of the same round; CI: "
            "bootstrap over rounds"
        ),
        "settings": {"iterations_per_run": args.iterations, "common": COMMON, "variants": VARIANTS},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_1m_end": _load(),
            "note": "shared machine: load_1m per run in rounds[*][*].load_1m",
        },
        "command": "python scripts/bench_trainer_speed.py " + " ".join(sys.argv[1:]),
        "duration_s": round(time.monotonic() - t0, 1),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
