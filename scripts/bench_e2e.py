"""Benchmark, the headline: time and cost to a target validation score, three ways.

    python scripts/bench_e2e.py [--quick] [--mode all|ondemand|restart|spotlight|combine]
                                [--cache DIR] [--out PATH] [--force] [--set KEY=VALUE ...]

Writes ``benchmarks/results/e2e.json`` (``--quick``: ``runs/bench_e2e_quick/e2e_quick.json``). Three runs of
`spotlight run` on the same spot trace, prices, on-demand capacity and base model (the
cached tiny base; never rebuilt here):

``ondemand``   ``--no-spot --seeds random``, ``rollout.workers=trainer``: plain random-seed
               Flow-GRPO on the on-demand node only, sampling in the trainer (what users
               run today).
``restart``    spot explorers and rollout workers with TorchElastic-style checkpoint/restart
               (``spot.fault_mode=restart``, spotlight/actors/spot/restart_pool.py): a notice or
               loss of any spot node kills every running spot node and starts it again;
               each reloads the weights and its in-flight exploration and rollouts (never
               committed) are lost and re-done.
``spotlight``  the default elastic pool: a noticed node drains (committing its in-flight
               rollouts) and leaves, the rest go on.

Every run is a child process (``--child``); each mode's run directory is kept under
``--cache`` (default ``runs/bench_e2e[_quick]/<mode>``) with the settings it ran with, so the
three runs can be made in separate invocations (each < 10 minutes) and combined:

    python scripts/bench_e2e.py --mode ondemand     # ~9 min each on an idle 2-core box
    python scripts/bench_e2e.py --mode restart
    python scripts/bench_e2e.py --mode spotlight    # combines once all three are cached

A cached run is reused when its settings match (``--force`` re-runs it).

What is measured (per run; definitions also written into the JSON under ``definitions``):

* Validation: every ``val_every`` iterations, ODE sampler, ``val_per_kind`` held-out prompts
  per caption kind x ``val_seeds`` fixed seeds (the same set, seeds and base for all runs).
* Smoothing: trailing moving average over ``smooth`` validations (the base counts).
* Target: ``base + target_fraction x`` the best smoothed gain of ``ondemand`` over its base.
* Iterations to target: the first validated iteration whose smoothed score >= target; wall
  seconds to target: the trainer's clock at the end of that iteration; not reached: null.
* Dollars to target: the run report's cost model (spotlight/commands/run_report.py)
  evaluated at the target time on one clock for all three runs (wall seconds x the pool's
  ``time_scale``): on-demand GPUs for the whole time, every trace node alive before then
  (busy or idle) at the spot price.
* Ratios vs ondemand: ``ondemand / mode`` (how many times fewer iterations, dollars).
* Preemptions: trace removals played during the run; steps lost: sample-steps abandoned in
  drains (the coordinator's count) plus expired explore leases x denoising steps (in-flight
  work of killed nodes, an upper bound); restarts: the restart pool's counters.
* Noise: the std of the raw validations around a centred moving average, pooled over runs,
  next to the target gain (a crossing means something when the gain is several noises).
* Projection (labelled so): spotlight/actors/spot/projection/ over the same trace in real time,
  from per-step costs measured in the ``ondemand`` run and the iterations to target
  measured here; every assumption is listed in the JSON and printed.

Simulation on one machine: the trainer runs with ``trainer_threads`` torch threads (the
on-demand capacity, the same in all runs); spot node processes run under ``nice`` so the
pool uses the CPU the trainer leaves (spot GPUs are separate hardware on a real cluster).
Wall time on this 2-core box is still distorted by CPU sharing: iterations to target is
the headline measured number; the projection is the cluster-scale view.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = ("ondemand", "restart", "spotlight")
BASE_DIR = "/root/.cache/spotlight/base-tiny-0eb45c3ba81764c7"

FULL: dict[str, Any] = {
    "iterations": 400,
    "time_budget_s": 480.0,
    "val_every": 6,
    "val_per_kind": 8,
    "val_seeds": 8,
    "ckpt_every": 100,
    "trace": "traces/steady_1h.csv",
    "time_scale": 6.0,
    "notice_s": 30.0,
    "trainer_threads": 1,
    "spot_nice": 10,
    "smooth": 3,
    "target_fraction": 0.75,
    "overrides": [],
}
QUICK = FULL | {
    "iterations": 2,
    "time_budget_s": 20.0,
    "val_every": 1,
    "val_per_kind": 1,
    "val_seeds": 2,
    "ckpt_every": 2,
    "trace": "<cache>/quick_trace.csv",  # QUICK_TRACE, written by main()
    "time_scale": 1.0,
    "smooth": 2,
    "overrides": ["trainer.prompts_per_iter=2", "trainer.group_size=4", "trainer.micro_batch=4"],
}
CHILD_TIMEOUT_MARGIN_S = 120.0
SENSITIVITY_FRACTIONS = (0.5, 0.75, 0.9, 1.0)
PROJECTION_COMPUTE_SCALES = (1.0, 3.0, 10.0)
QUICK_TRACE_FILE = "quick_trace.csv"
QUICK_TRACE = (
    "# bench_e2e --quick: two spot nodes; one is noticed at 4 s and gone at 6 s\n"
    "t_s,event,node\n0,add,q0\n0,add,q1\n4,notice,q0\n6,remove,q0\n"
)


# ------------------------------------------------------------------------- the runs


def run_args(mode: str, settings: dict[str, Any], run_dir: Path, base: str) -> list[str]:
    """`spotlight run` arguments of one mode (the same settings for all three)."""
    s = settings
    node_cmd = (
        "{python} -m spotlight.nodes.spot --coordinator {address} --node-id {node} "
        "--notice-grace {grace} --gpus {gpus}"
    )
    if s["spot_nice"]:
        node_cmd = f"nice -n {int(s['spot_nice'])} " + node_cmd
    sets = [
        f"run.iterations={s['iterations']}",
        f"run.time_budget_s={s['time_budget_s']}",
        f"run.val_every={s['val_every']}",
        f"run.ckpt_every={s['ckpt_every']}",
        f"trainer.val_per_kind={s['val_per_kind']}",
        f"trainer.val_seeds={s['val_seeds']}",
        f"trainer.base={base}",
        f"spot.trace={s['trace']}",
        f"spot.time_scale={s['time_scale']}",
        f"spot.notice_s={s['notice_s']}",
        f"spot.node_command={node_cmd}",
        *s["overrides"],
    ]
    args = ["--run-dir", str(run_dir), "--no-live", "--json"]
    if mode == "ondemand":
        args += ["--no-spot", "--seeds", "random"]
        sets.append("rollout.workers=trainer")
    else:
        args += ["--seeds", "explored"]
        sets.append(f"spot.fault_mode={'restart' if mode == 'restart' else 'elastic'}")
    for item in sets:
        args += ["--set", item]
    return args


def child_main(mode: str, argv: list[str]) -> int:
    """One run in this process; for ``restart`` the spot pool is the restart launcher.

    `spotlight run` builds its pool from ``spotlight.actors.spot.replay.ProcessNodeLauncher``;
    replacing that name here (and ``RestartPoolLauncher``, should run.py pick it itself
    from ``spot.fault_mode``) with a recording subclass makes the pool restart-based and
    lets us save its counters next to the run's report.
    """
    import torch

    from spotlight.commands import run as run_cmd

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser = argparse.ArgumentParser(prog="spotlight run")
    run_cmd.add_arguments(parser)
    args = parser.parse_args(argv)
    pools: list[Any] = []
    if mode == "restart":
        import spotlight.actors.spot.replay as replay_mod
        import spotlight.actors.spot.restart_pool as restart_mod

        class _Recorded(restart_mod.RestartPoolLauncher):
            def __init__(self, *a: Any, **kw: Any) -> None:
                super().__init__(*a, **kw)
                pools.append(self)

        replay_mod.ProcessNodeLauncher = _Recorded  # type: ignore[misc]
        restart_mod.RestartPoolLauncher = _Recorded  # type: ignore[misc]
    rc = run_cmd.run(args)
    if pools:
        from dataclasses import asdict

        stats = [asdict(p.statistics()) for p in pools]
        (Path(args.run_dir) / "restart_pool.json").write_text(json.dumps(stats, indent=2) + "\n")
    return rc


def run_mode(mode: str, settings: dict[str, Any], cache: Path, base: str, force: bool) -> Path:
    """Run one mode in a child process unless a run with the same settings is cached."""
    run_dir = cache / mode
    stamp = run_dir / "bench_settings.json"
    cached = not force and (run_dir / "report.json").is_file() and stamp.is_file()
    if cached and json.loads(stamp.read_text()) == settings:
        print(f"[{mode}] cached run reused: {run_dir}", flush=True)
        return run_dir
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    argv = run_args(mode, settings, run_dir, base)
    env = os.environ | {
        "OMP_NUM_THREADS": str(settings["trainer_threads"]),
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [sys.executable, __file__, "--child", mode, "--", *argv]
    print(f"[{mode}] {shlex.join(['spotlight', 'run', *argv])}", flush=True)
    t0 = time.monotonic()
    limit = settings["time_budget_s"] + CHILD_TIMEOUT_MARGIN_S
    with (run_dir / "bench_child.out").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            rc = proc.wait(timeout=limit)
        except BaseException:
            # Ctrl-C or over time: ask the run to stop (it kills its spot nodes), then kill
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    if rc != 0 or not (run_dir / "report.json").is_file():
        tail = (run_dir / "bench_child.out").read_text(errors="replace")[-3000:]
        raise SystemExit(f"[{mode}] run failed (rc {rc}); last output:\n{tail}")
    stamp.write_text(json.dumps(settings, indent=2) + "\n")
    print(f"[{mode}] done in {time.monotonic() - t0:.0f} s: {run_dir}", flush=True)
    return run_dir


# ------------------------------------------------------------------------- analysis


def trailing_average(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def centred_residuals(values: list[float], window: int) -> list[float]:
    """Each interior value minus the mean of the ``window`` values centred on it."""
    half = window // 2
    if len(values) < 2 * half + 1 or half == 0:
        return []
    return [
        values[i] - sum(values[i - half : i + half + 1]) / (2 * half + 1)
        for i in range(half, len(values) - half)
    ]


def first_crossing(iters: list[int], smoothed: list[float], target: float) -> int | None:
    """The first iteration after the base whose smoothed value >= target, or None."""
    for k, v in zip(iters, smoothed, strict=True):
        if k > 0 and v >= target:
            return k
    return None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def load_run(run_dir: Path) -> dict[str, Any]:
    report = json.loads((run_dir / "report.json").read_text())
    trainer = _jsonl(run_dir / "trainer.jsonl")
    vals = [r for r in trainer if r.get("kind") == "validation"]
    iters = {r["iteration"]: r for r in trainer if r.get("kind") == "iteration"}
    metrics = [m for m in _jsonl(run_dir / "metrics.jsonl") if m.get("topic") == "trainer"]
    restart = run_dir / "restart_pool.json"
    return {
        "report": report,
        "validations": vals,
        "iterations": iters,
        "trainer_metrics": [m["fields"] for m in metrics],
        "restart_pool": json.loads(restart.read_text()) if restart.is_file() else None,
        "config": json.loads((run_dir / "config.json").read_text()),
    }


def cost_at(run: dict[str, Any], t_wall: float, settings: dict[str, Any]) -> dict[str, float]:
    """The run report's cost model at wall second ``t_wall`` on the shared clock."""
    from spotlight.actors.spot.prices import CostMeter
    from spotlight.actors.spot.trace import load_trace, synthesize_notices
    from spotlight.config import SystemConfig

    cfg = SystemConfig.from_dict(run["config"])
    sim_s = t_wall * settings["time_scale"]
    meter = CostMeter(cfg.prices.build())
    meter.add_interval("ondemand", 0.0, sim_s, gpus=cfg.spot.ondemand_gpu_count(1))
    if run["report"]["spot"]["enabled"]:
        trace = load_trace(cfg.spot.trace_path())
        if cfg.spot.notice_s > 0:
            trace = synthesize_notices(trace, cfg.spot.notice_s)
        meter.add_trace(trace, gpus_per_node=cfg.spot.gpus_per_node, until_s=sim_s)
    return meter.summary().to_dict()


def _num(x: Any, default: float = 0.0) -> float:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else default


def summarize_run(
    mode: str, run: dict[str, Any], target: float | None, settings: dict[str, Any]
) -> dict[str, Any]:
    rep = run["report"]
    vals = run["validations"]
    v_iters = [int(v["iteration"]) for v in vals]
    v_scores = [float(v["val_score"]) for v in vals]
    smooth = trailing_average(v_scores, settings["smooth"])
    last_wall = max((_num(r.get("wall_s")) for r in run["iterations"].values()), default=0.0)
    out: dict[str, Any] = {
        "iterations_run": rep["iterations"],
        "wall_s_run": rep["wall_s"],
        "base_val_score": v_scores[0] if vals and v_iters[0] == 0 else None,
        "final_val_score": v_scores[-1] if vals else None,
        "best_smoothed_val_score": max(smooth) if smooth else None,
        "curve": [
            {"iteration": k, "val_score": round(v, 5), "smoothed": round(s, 5)}
            for k, v, s in zip(v_iters, v_scores, smooth, strict=True)
        ],
    }
    k = None if target is None else first_crossing(v_iters, smooth, target)
    out["iters_to_target"] = k
    if k is not None:
        t = _num(run["iterations"].get(k, {}).get("wall_s"), last_wall)
        cost = cost_at(run, t, settings)
        out["wall_s_to_target"] = round(t, 2)
        out["cost_to_target"] = cost["total_usd"]
        out["cost_to_target_detail"] = cost
    else:
        out["wall_s_to_target"] = None
        out["cost_to_target"] = None
        out["not_reached_within_iterations"] = rep["iterations"] if target is not None else None
    out["cost_whole_run_usd"] = cost_at(run, last_wall, settings)["total_usd"]
    spot = rep["spot"]
    leases = (rep.get("stats", {}).get("scheduler") or {}).get("leases") or {}
    steps = int(run["config"]["trainer"]["num_steps"])
    drained = _num(spot.get("work_lost_steps"))
    expired = _num(leases.get("expired"))
    out["preemptions"] = int(
        _num(spot.get("preemptions_with_notice")) + _num(spot.get("preemptions_silent"))
    )
    out["preemptions_with_notice"] = int(_num(spot.get("preemptions_with_notice")))
    out["steps_lost"] = int(drained + expired * steps)
    out["steps_lost_detail"] = {
        "drain_abandoned_sample_steps": drained,
        "expired_explore_leases": expired,
        "released_explore_leases": _num(leases.get("released")),
        "re_leases": _num(leases.get("re_leases")),
    }
    pools = run["restart_pool"] or []
    out["restarts"] = int(sum(p["restarts"] for p in pools))
    out["nodes_relaunched"] = int(sum(p["relaunched"] for p in pools))
    out["spot_nodes_started"] = spot.get("nodes_started")
    ex = rep.get("exploration", {})
    out["explored_seeds"] = ex.get("explored_seeds")
    out["fallback_seeds"] = ex.get("fallback_seeds")
    its = run["trainer_metrics"]
    if its:
        out["median_iteration_s"] = statistics.median(_num(m.get("iteration_s")) for m in its)
    out["val_spread_mean"] = statistics.fmean(float(v["val_spread"]) for v in vals) if vals else 0
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def measured_step_costs(run: dict[str, Any]) -> dict[str, float]:
    """Per-step costs from the on-demand run's trainer metrics (medians)."""
    cfg = run["config"]["trainer"]
    samples = int(cfg["prompts_per_iter"]) * int(cfg["group_size"])
    steps = int(cfg["num_steps"])
    ms = run["trainer_metrics"]
    rollout = statistics.median(_num(m.get("rollout_s")) for m in ms)
    train = statistics.median(_num(m.get("train_s")) + _num(m.get("reward_s")) for m in ms)
    return {
        "step_gpu_s": rollout / (samples * steps),
        "train_step_s": train,
        "rollout_samples": samples,
        "denoise_steps": steps,
    }


def liveness_s() -> float:
    """Seconds of silence after which the runtime declares a peer lost (its defaults)."""
    from spotlight.runtime.config import RuntimeConfig

    return RuntimeConfig().liveness_s


def projection_config(
    costs: dict[str, float],
    *,
    ondemand_gpus: int,
    gpus_per_node: int,
    weight_load_s: float,
    reform_s: float,
    time_scale: float,
) -> tuple[Any, Any]:
    """The simulator's inputs on the runs' clock: every measured wall duration x ``time_scale``.

    The runs replay the trace ``time_scale`` times faster than real time, so a run's
    iterations meet the trace's preemptions at that ratio. Simulating the trace in its own
    seconds with unscaled tiny-model costs instead squeezes the whole run into its first
    minute, before any spot node has loaded weights: every spot strategy then looks the same.
    Returns ``(CostPreset, Assumptions)`` of spotlight/actors/spot/projection/ (the spot cap
    is set later, from the trace).
    """
    from spotlight.actors.spot.projection import Assumptions, CostPreset

    if not (math.isfinite(time_scale) and time_scale > 0):
        raise ValueError(f"time_scale must be a finite number > 0, got {time_scale!r}")
    samples = int(costs["rollout_samples"])
    preset = CostPreset(
        name="measured by bench_e2e (x time_scale)",
        gpu="cpu",
        sample_step_s=costs["step_gpu_s"] * time_scale,
        train_sample_step_s=costs["train_step_s"] * time_scale * ondemand_gpus / samples,
        samples_per_iter=samples,
        denoise_steps=int(costs["denoise_steps"]),
        train_steps=1,
        sp_degree=gpus_per_node,
        process_launch_s=weight_load_s * time_scale,
        group_init_s=0.0,
        base_load_s=0.0,
        sp_reform_s=reform_s * time_scale,
        sp_join_s=0.0,
        version_bytes_full=0,
        version_bytes_lora=0,
    )
    assume = Assumptions(
        ondemand_gpus=ondemand_gpus,
        loss_detect_s=liveness_s() * time_scale,
        restart_scope="pool",
        notice_s=0.0,
        starts=1,
    )
    return preset, assume


def projection(
    runs: dict[str, dict[str, Any]], per_mode: dict[str, dict[str, Any]], settings: dict[str, Any]
) -> dict[str, Any]:
    """The discrete-event projection from measured per-step costs (labelled as such)."""
    from spotlight.actors.spot.projection import (
        InstanceShape,
        IterationsToTarget,
        Range,
        ShapedTrace,
        project,
    )
    from spotlight.actors.spot.trace import load_trace, synthesize_notices
    from spotlight.config import SystemConfig

    needed = {m: per_mode[m]["iters_to_target"] for m in MODES}
    if any(v is None for v in needed.values()):
        missing = [m for m, v in needed.items() if v is None]
        return {"label": "projection", "skipped": f"no iterations to target for {missing}"}
    cfg = SystemConfig.from_dict(runs["spotlight"]["config"])
    costs = measured_step_costs(runs["ondemand"])
    weight_load_s, reform_s, source = (
        30.0,
        0.5,
        "defaults (benchmarks/results/elastic_sp.json absent)",
    )
    sp = REPO / "benchmarks" / "results" / "elastic_sp.json"
    if sp.is_file():
        data = json.loads(sp.read_text())
        weight_load_s = float(data.get("restart_baseline_p50_s", weight_load_s))
        reform_s = float(data.get("reform_p50_s", reform_s))
        source = "benchmarks/results/elastic_sp.json (restart_baseline_p50_s, reform_p50_s)"
    scale = float(settings["time_scale"])
    gpn = cfg.spot.gpus_per_node
    preset, assume = projection_config(
        costs,
        ondemand_gpus=cfg.spot.ondemand_gpu_count(1),
        gpus_per_node=gpn,
        weight_load_s=weight_load_s,
        reform_s=reform_s,
        time_scale=scale,
    )
    trace = load_trace(cfg.spot.trace_path())
    if cfg.spot.notice_s > 0:
        trace = synthesize_notices(trace, cfg.spot.notice_s)
    prices = cfg.prices.build()
    shape = InstanceShape(
        gpus_per_node=gpn,
        ondemand_usd_per_gpu_hour=prices.ondemand_usd_per_gpu_hour,
        spot_usd_per_gpu_hour=prices.spot_usd_per_gpu_hour,
    )
    shaped = ShapedTrace(trace, shape, Path(cfg.spot.trace).stem)
    assume = replace(assume, spot_gpus=shaped.max_gpus())
    od, sl = int(needed["ondemand"]), int(needed["spotlight"])
    iterations = IterationsToTarget(
        random=Range(od, od, od), selection_speedup=Range(od / sl, od / sl, od / sl),
        source="bench_e2e runs (ondemand's and spotlight's iterations to target)",
    )  # fmt: skip

    def run_at(k: float) -> Any:
        p = replace(
            preset,
            sample_step_s=preset.sample_step_s * k,
            train_sample_step_s=preset.train_sample_step_s * k,
        )
        return project(shaped, preset=p, assume=assume, iters=iterations, prices=prices)

    res = run_at(1.0)
    out: dict[str, Any] = res.to_dict(timelines=False)
    out["iterations_needed"] = needed
    out["by_compute_scale"] = {
        f"{k:g}": _projection_summary(run_at(k)) for k in PROJECTION_COMPUTE_SCALES
    }
    out["config"] = {
        "step_gpu_s": preset.sample_step_s,
        "train_step_s": preset.train_gpu_s / assume.ondemand_gpus,
        "loss_detect_s": assume.loss_detect_s,
        "weight_load_s": preset.process_launch_s,
        "sp_reform_s": preset.sp_reform_s,
    }
    out["label"] = "PROJECTION (discrete-event simulation from measured per-step costs)"
    out["measured_wall_s"] = costs | {"weight_load_s": weight_load_s, "sp_reform_s": reform_s}
    out["clock"] = f"trace seconds: measured wall seconds x time_scale {scale:g}"
    out["assumptions"] = [
        f"the runs' clock: trace {cfg.spot.trace} in trace seconds, every measured duration "
        f"x time_scale {scale:g} (one wall second of a run = {scale:g} trace seconds), so "
        "the trace's preemptions fall on the iterations as they did in the runs; notices "
        f"synthesised {cfg.spot.notice_s:g} s (trace) before silent removals, as in the runs",
        f"per-step costs measured in the ondemand run (medians, wall): one sample-step "
        f"{costs['step_gpu_s'] * 1000:.2f} ms of one device, update + reward "
        f"{costs['train_step_s']:.2f} s per iteration (the tiny model on one CPU core)",
        f"iterations to target: strategies a-d use ondemand's measured {od} (random seeds; "
        f"the restart run's own count {needed['restart']} is not used), e uses spotlight's {sl}",
        f"a (re)started or new spot worker is ready {weight_load_s:.1f} s (wall) after its "
        f"start and an SP re-form takes {reform_s:.2f} s, from {source}; silent losses found "
        f"after the runtime's liveness {liveness_s():.1f} s (wall)",
        f"{cfg.spot.ondemand_gpu_count(1)} on-demand GPU(s); spot nodes of {gpn} GPU(s), every "
        "node the trace offers taken (no cap); ideal SP scaling",
        "the model of spotlight/actors/spot/projection/ (docs/projection.md); restart as in "
        "the runs (spotlight/actors/spot/restart_pool.py): one elastic job over the pool, any "
        "membership change restarts every spot worker",
        "billing: on-demand for the whole time, each held spot node while held, per second",
        f"by_compute_scale: the same with every sample-step and update x k for k in "
        f"{list(PROJECTION_COMPUTE_SCALES)} (a larger model; weight load, re-form and "
        "liveness unchanged), so the runs span more of the trace; past the trace's last "
        "event the pool stays as it is",
    ]
    return out


def _projection_summary(res: Any) -> dict[str, Any]:
    """The figures of one projection that the sweep compares, per strategy (medians)."""
    return {
        name: {
            "wall_s": res.summary(name, "hours_to_target")["median"] * 3600,
            "total_usd": res.summary(name, "usd_to_target")["median"],
            "cost_ratio_vs_ondemand": res.summary(name, "cost_ratio_vs_ondemand")["median"],
            "wall_ratio_vs_ondemand": res.summary(name, "speedup_vs_ondemand")["median"],
            "preemptions": res.summary(name, "preemptions")["median"],
            "steps_lost": res.summary(name, "steps_lost")["median"],
            "restarts": res.summary(name, "recoveries")["median"],
        }
        for name in res.runs[res.median_scenario()]
    }


def noise_estimate(runs: dict[str, dict[str, Any]], window: int) -> dict[str, Any]:
    resid: list[float] = []
    for run in runs.values():
        scores = [float(v["val_score"]) for v in run["validations"]]
        resid += centred_residuals(scores, max(3, window | 1))
    sd = statistics.pstdev(resid) if len(resid) > 1 else None
    return {
        "validation_noise_sd": sd,
        "smoothed_noise_sd": None if sd is None else sd / math.sqrt(window),
        "residuals": len(resid),
        "definition": "std of raw validation scores around a centred moving average "
        f"(window {max(3, window | 1)}), pooled over the three runs; the smoothed curve's "
        f"noise is about that / sqrt({window})",
    }


def combine(cache: Path, settings: dict[str, Any], quick: bool) -> dict[str, Any]:
    runs = {m: load_run(cache / m) for m in MODES}
    od = runs["ondemand"]
    od_scores = [float(v["val_score"]) for v in od["validations"]]
    od_smooth = trailing_average(od_scores, settings["smooth"])
    base = od_scores[0] if od_scores else None
    gain = (max(od_smooth) - base) if base is not None else None
    target = None
    if base is not None and gain is not None and gain > 0:
        target = base + settings["target_fraction"] * gain
    per_mode = {m: summarize_run(m, runs[m], target, settings) for m in MODES}
    noise = noise_estimate(runs, settings["smooth"])
    result: dict[str, Any] = {
        "quick": quick,
        "target_val_score": target,
        "base_val_score": base,
        "ondemand_best_smoothed_gain": gain,
        "target_note": None
        if target is not None
        else "ondemand's smoothed validation never rose above its base: no target",
    }
    for m in MODES:
        result[m] = per_mode[m]
    result["iters_to_target"] = {m: per_mode[m]["iters_to_target"] for m in MODES}
    result["cost_to_target"] = {m: per_mode[m]["cost_to_target"] for m in MODES}
    result["wall_s_to_target"] = {m: per_mode[m]["wall_s_to_target"] for m in MODES}
    a = per_mode["ondemand"]
    result["iters_ratio_vs_ondemand"] = {
        m: _ratio(a["iters_to_target"], per_mode[m]["iters_to_target"]) for m in MODES
    }
    result["cost_ratio_vs_ondemand"] = {
        m: _ratio(a["cost_to_target"], per_mode[m]["cost_to_target"]) for m in MODES
    }
    result["wall_ratio_vs_ondemand"] = {
        m: _ratio(a["wall_s_to_target"], per_mode[m]["wall_s_to_target"]) for m in MODES
    }
    # the curves side by side where all three have validated (runs end at different
    # iterations when their time budgets end them)
    common = min(max((c["iteration"] for c in per_mode[m]["curve"]), default=0) for m in MODES)
    result["common_iteration"] = common
    result["smoothed_at_common_iteration"] = {
        m: next(
            (c["smoothed"] for c in reversed(per_mode[m]["curve"]) if c["iteration"] <= common),
            None,
        )
        for m in MODES
    }
    # how the answer depends on the target: iterations to other fractions of the gain
    sens: dict[str, dict[str, int | None]] = {}
    if base is not None and gain is not None and gain > 0:
        for frac in SENSITIVITY_FRACTIONS:
            tgt = base + frac * gain
            sens[f"{frac:g}"] = {
                m: first_crossing(
                    [c["iteration"] for c in per_mode[m]["curve"]],
                    [c["smoothed"] for c in per_mode[m]["curve"]],
                    tgt - 1e-5,  # the curve is rounded to 5 decimals
                )
                for m in MODES
            }
    result["iters_to_target_by_fraction"] = sens
    result["targets_met"] = {
        "spotlight_iters_ratio_ge_2": _ge(result["iters_ratio_vs_ondemand"]["spotlight"], 2.0),
        "spotlight_cost_ratio_ge_1.4": _ge(result["cost_ratio_vs_ondemand"]["spotlight"], 1.4),
    }
    result["noise"] = noise
    if gain is not None and noise["smoothed_noise_sd"]:
        result["noise"]["target_gain_over_smoothed_noise"] = (
            settings["target_fraction"] * gain / noise["smoothed_noise_sd"]
        )
    try:
        result["projection"] = projection(runs, per_mode, settings)
    except (ValueError, KeyError, statistics.StatisticsError) as exc:
        result["projection"] = {"label": "projection", "skipped": repr(exc)}
    result["settings"] = settings
    result["definitions"] = {
        "smoothing": f"trailing moving average over {settings['smooth']} validations "
        "(the iteration-0 base included)",
        "target_val_score": f"base + {settings['target_fraction']} x ondemand's best smoothed "
        "gain over its base",
        "iters_to_target": "first validated iteration whose smoothed score >= target "
        f"(validations every {settings['val_every']} iterations: resolution)",
        "wall_s_to_target": "the trainer's wall clock at the end of that iteration",
        "cost_to_target": "USD at that time, wall seconds x spot.time_scale as the clock for "
        "all runs: on-demand GPUs throughout + every trace node alive before then at the "
        "spot price (run_report.py's cost model)",
        "ratio_vs_ondemand": "ondemand / mode: how many times fewer iterations, dollars, "
        "seconds (> 1 = better than ondemand)",
        "steps_lost": "sample-steps abandoned in drains + expired explore leases x denoising "
        "steps (upper bound for killed nodes' in-flight work)",
        "preemptions": "trace removals played during the run (noticed + silent)",
    }
    result["conditions"] = {
        "machine": f"{os.cpu_count()} CPUs, load average at combine "
        f"{os.getloadavg()[0]:.1f} (runs at their own times; see each run's wall_s)",
        "base": runs["spotlight"]["config"]["trainer"]["base"],
        "trace": settings["trace"],
        "time_scale": settings["time_scale"],
        "notice_s": settings["notice_s"],
        "trainer_threads": settings["trainer_threads"],
        "spot_nice": settings["spot_nice"],
        "prices": runs["spotlight"]["report"]["cost"]["prices"],
        "run_dirs": {m: str(cache / m) for m in MODES},
    }
    return result


def _ge(x: float | None, bound: float) -> bool | None:
    return None if x is None else x >= bound


# ------------------------------------------------------------------------- printing


def _fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    t = result["target_val_score"]
    noise = result["noise"]
    console.print(
        f"target validation score {_fmt(t, 4)} (base {_fmt(result['base_val_score'], 4)} + "
        f"{result['settings']['target_fraction']} x ondemand's best smoothed gain "
        f"{_fmt(result['ondemand_best_smoothed_gain'], 4)}); validation noise sd "
        f"{_fmt(noise['validation_noise_sd'], 4)} raw, ~{_fmt(noise['smoothed_noise_sd'], 4)} "
        "smoothed"
    )
    table = Table(title="MEASURED on this machine (tiny model; wall time distorted by CPU sharing)")
    for col in (
        "run",
        "iters->tgt",
        "x fewer",
        "wall s",
        "$->tgt",
        "x cheaper",
        "preempt",
        "lost steps",
        "restarts",
        "expl/fb seeds",
        "iters",
        "best val",
    ):
        table.add_column(col, justify="left" if col == "run" else "right")
    for m in MODES:
        r = result[m]
        table.add_row(
            m,
            _fmt(r["iters_to_target"])
            if r["iters_to_target"] is not None
            else f"> {r.get('not_reached_within_iterations')}",
            _fmt(result["iters_ratio_vs_ondemand"][m]),
            _fmt(r["wall_s_to_target"], 0),
            _fmt(r["cost_to_target"], 3),
            _fmt(result["cost_ratio_vs_ondemand"][m]),
            f"{r['preemptions']} ({r['preemptions_with_notice']}n)",
            str(r["steps_lost"]),
            str(r["restarts"]),
            f"{r['explored_seeds']}/{r['fallback_seeds']}",
            str(r["iterations_run"]),
            _fmt(r["best_smoothed_val_score"], 4),
        )
    console.print(table)
    console.print(
        f"smoothed validation at iteration {result['common_iteration']} (reached by all): "
        + ", ".join(f"{m} {_fmt(v, 4)}" for m, v in result["smoothed_at_common_iteration"].items())
    )
    for frac, iters in result["iters_to_target_by_fraction"].items():
        console.print(
            f"iterations to base + {frac} x ondemand's gain: "
            + ", ".join(f"{m} {_fmt(v)}" for m, v in iters.items())
        )
    proj = result["projection"]
    if "skipped" in proj:
        console.print(f"projection skipped: {proj['skipped']}")
        return
    pt = Table(title=proj["label"])
    for col in ("strategy", "iterations", "hours", "$", "x cheaper", "x faster", "steps lost"):
        pt.add_column(col, justify="left" if col == "strategy" else "right")
    for name, s in proj["strategies"].items():
        pt.add_row(
            name,
            f"{s['iterations']['median']:.0f}",
            f"{s['hours_to_target']['median']:.3f}",
            f"{s['usd_to_target']['median']:.3f}",
            _fmt(s["cost_ratio_vs_ondemand"]["median"]),
            _fmt(s["speedup_vs_ondemand"]["median"]),
            f"{s['steps_lost']['median']:.1f}",
        )
    console.print(pt)
    for k, per in proj.get("by_compute_scale", {}).items():
        console.print(
            f"projection, compute x {k}: "
            + ", ".join(
                f"{name} {v['cost_ratio_vs_ondemand']:.2f}x cheaper "
                f"{v['wall_ratio_vs_ondemand']:.2f}x faster ({v['preemptions']} preempt, "
                f"{v['steps_lost']:.0f} steps lost)"
                for name, v in per.items()
                if name != "ondemand"
            )
        )
    console.print("projection assumptions:")
    for a in proj["assumptions"]:
        console.print(f"  - {a}")


# ------------------------------------------------------------------------- main


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        mode, rest = sys.argv[2], sys.argv[3:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        return child_main(mode, rest)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny runs: a < 60 s pipeline smoke")
    p.add_argument(
        "--mode",
        default="all",
        choices=("all", *MODES, "combine"),
        help="run one mode (then combine if all three are cached), all, or only combine",
    )
    p.add_argument("--cache", type=Path, help="run directories (default runs/bench_e2e[_quick])")
    p.add_argument(
        "--out",
        type=Path,
        help="result JSON (default benchmarks/results/e2e.json; --quick: in the cache dir)",
    )
    p.add_argument("--force", action="store_true", help="re-run modes even when cached")
    p.add_argument("--base", default=None, help=f"base checkpoint dir (default {BASE_DIR})")
    p.add_argument("--time-budget", type=float, help="per-run wall budget in seconds")
    p.add_argument("--iterations", type=int, help="per-run iteration cap")
    p.add_argument(
        "--trainer-threads",
        type=int,
        help="torch threads of the trainer = the on-demand capacity (default 1)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="extra `spotlight run --set` applied to all three runs",
    )
    args = p.parse_args()
    settings: dict[str, Any] = dict(QUICK if args.quick else FULL)
    settings["overrides"] = [*settings["overrides"], *args.overrides]
    if args.time_budget is not None:
        settings["time_budget_s"] = args.time_budget
    if args.iterations is not None:
        settings["iterations"] = args.iterations
    if args.trainer_threads is not None:
        settings["trainer_threads"] = args.trainer_threads
    base = args.base or BASE_DIR
    if not (Path(base) / "card.json").is_file() and not any(Path(base).glob("*.safetensors")):
        print(
            f"bench_e2e: no base checkpoint at {base} (this bench never builds one; "
            "`spotlight pretrain` does, or pass --base DIR)",
            file=sys.stderr,
        )
        return 2
    settings["base"] = str(base)
    cache = args.cache or REPO / "runs" / ("bench_e2e_quick" if args.quick else "bench_e2e")
    # a quick smoke's result stays with its runs (runs/ is not committed)
    out = args.out or (
        cache / "e2e_quick.json" if args.quick else REPO / "benchmarks" / "results" / "e2e.json"
    )
    if args.quick:
        cache.mkdir(parents=True, exist_ok=True)
        (cache / QUICK_TRACE_FILE).write_text(QUICK_TRACE)
        settings["trace"] = str(cache / QUICK_TRACE_FILE)
    t0 = time.monotonic()
    todo = MODES if args.mode == "all" else (() if args.mode == "combine" else (args.mode,))
    for mode in todo:
        run_mode(mode, settings, cache, base, args.force)
    missing = [m for m in MODES if not (cache / m / "report.json").is_file()]
    if missing:
        print(f"bench_e2e: not combined yet; still to run: {', '.join(missing)}")
        return 0
    for m in MODES:
        stamp = cache / m / "bench_settings.json"
        if not stamp.is_file() or json.loads(stamp.read_text()) != settings:
            print(f"bench_e2e: {m}'s cached run has other settings; re-run it", file=sys.stderr)
            return 2
    result = combine(cache, settings, args.quick)
    result["bench_wall_s"] = round(time.monotonic() - t0, 1)
    result["command"] = shlex.join([Path(sys.executable).name, *sys.argv])
    result["reproduce"] = (
        "python scripts/bench_e2e.py [--mode ondemand|restart|spotlight, one per call] "
        "(each mode's run is cached under --cache; the last one combines)"
        + (" --quick" if args.quick else "")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_table(result)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
