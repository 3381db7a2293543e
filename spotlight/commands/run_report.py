"""The report at the end of `spotlight run`: RUN_DIR/report.json, plots, a cost table.

Cost model: GPU-hours on the pool's clock (wall seconds x ``spot.time_scale``; wall seconds
with the spot pool off). On-demand: ``spot.ondemand_gpus`` GPUs for the whole run (by
default the trainer's world size, resolved by ``run.resolve_ondemand_gpus``). Spot: every
node of the trace for its lifetime up to the end of the run (``CostMeter.add_trace``), busy
or idle, as clouds bill. The comparison row prices the same GPU-hours all on-demand. The
coordinator's own wall-clock bill is kept in ``stats.coordinator.cost`` for reference.

Preemptions are the replayer's removals during the run; the trainer never waits on a spot
node, so every one is survived. Work lost: the coordinator's count of sample-steps
abandoned in drains, else the scheduler's ``steps_recomputed`` (a lower bound).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spotlight.actors.spot.replay import ReplayStats
    from spotlight.actors.spot.trace import SpotTrace
    from spotlight.actors.trainer.loop import TrainerSummary
    from spotlight.config import SystemConfig

__all__ = ["build_report", "write_report"]

log = logging.getLogger("spotlight.commands.run_report")


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def build_report(
    cfg: SystemConfig,
    run_dir: Path,
    summary: TrainerSummary,
    *,
    replay: ReplayStats | None,
    trace: SpotTrace | None,
    node_pids: list[int],
    spot_on: bool,
    stats: dict[str, Any],
    elapsed_s: float,
    interrupted: bool,
) -> dict[str, Any]:
    """report.json: results, exploration, preemptions, work lost and the cost table.

    ``cfg.spot.ondemand_gpus`` must be resolved (an int; see
    :func:`spotlight.commands.run.resolve_ondemand_gpus`): the report cannot know the
    trainer's world size."""
    from spotlight.actors.spot.prices import CostMeter

    ondemand_gpus = cfg.spot.ondemand_gpus
    if ondemand_gpus is None:
        raise ValueError(
            "build_report needs cfg.spot.ondemand_gpus resolved to the on-demand GPU count; "
            "pass resolve_ondemand_gpus(cfg, world_size)"
        )

    prices = cfg.prices.build()
    scale = cfg.spot.time_scale if spot_on else 1.0
    sim_s = elapsed_s * scale
    meter = CostMeter(prices)
    meter.add_interval("ondemand", 0.0, sim_s, gpus=ondemand_gpus)
    if trace is not None:
        meter.add_trace(trace, gpus_per_node=cfg.spot.gpus_per_node, until_s=sim_s)
    this_run = meter.summary()
    all_od = CostMeter(prices)
    all_od.add_interval("ondemand", 0.0, this_run.total_gpu_hours * 3600.0)
    everything_od = all_od.summary()
    preempt_notice = replay.removes_with_notice if replay else 0
    preempt_silent = replay.removes_silent if replay else 0
    work_lost = _get(stats, "coordinator", "work_lost_steps")
    if work_lost is None:
        work_lost = _get(stats, "scheduler", "leases", "steps_recomputed") or 0
    report = {
        "run_dir": str(run_dir),
        "ok": True,
        "interrupted": interrupted,
        "iterations": summary.iterations,
        "start_iteration": summary.start_iteration,
        "stopped_early": summary.stopped_early,
        "wall_s": round(elapsed_s, 3),
        "train_s": round(summary.train_s, 3),
        "base_val_score": summary.base_val_score,
        "final_val_score": summary.final_val_score,
        "validations": summary.validations,
        "exploration": {
            "seeds": cfg.trainer.seeds,
            "explored_seeds": summary.explored_seeds,
            "fallback_seeds": summary.fallback_seeds,
            "plans_reused": summary.plans_reused,
        },
        "spot": {
            "enabled": spot_on,
            "trace": cfg.spot.trace if spot_on else None,
            "time_scale": scale,
            "notice_s": cfg.spot.notice_s,
            "fault_mode": cfg.spot.fault_mode,
            "nodes_started": replay.adds if replay else 0,
            "preemptions_with_notice": preempt_notice,
            "preemptions_silent": preempt_silent,
            # the trainer never depends on a spot node: every preemption it saw it survived
            "preemptions_survived": preempt_notice + preempt_silent,
            "work_lost_steps": work_lost,
            "replay": dataclasses.asdict(replay) if replay else None,
            "node_pids": node_pids,
        },
        "cost": {
            "clock": f"wall seconds x {scale:g}" if scale != 1 else "wall seconds",
            "ondemand_gpus": ondemand_gpus,
            "prices": {
                "name": prices.name,
                "ondemand_usd_per_gpu_hour": prices.ondemand_usd_per_gpu_hour,
                "spot_usd_per_gpu_hour": prices.spot_usd_per_gpu_hour,
                "source": prices.source,
            },
            "this_run": this_run.to_dict(),
            "all_ondemand": everything_od.to_dict(),
            "saving_fraction": (
                1 - this_run.total_dollars / everything_od.total_dollars
                if everything_od.total_dollars > 0
                else 0.0
            ),
        },
        "stats": stats,
        "files": {
            name: str(run_dir / name)
            for name in ("metrics.jsonl", "curve.png", "plans.jsonl", "checkpoint", "report.json")
        },
    }
    report["_tables"] = {"this run": this_run, "all on-demand (same GPU-h)": everything_od}
    return report


def write_report(report: dict[str, Any], run_dir: Path, *, json_lines: bool) -> None:
    """RUN_DIR/report.json and plots/, then the report: one JSON line or rich tables."""
    from spotlight.actors.monitor.metrics import plain
    from spotlight.commands.plot import PlotError, plot_run

    tables = report.pop("_tables")
    try:
        report["plots"] = [str(p) for p in plot_run(run_dir).written]
    except PlotError as exc:
        report["plots"] = []
        log.warning("plots: %s", exc)
    body = plain(report)
    tmp = run_dir / "report.json.tmp"
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    tmp.replace(run_dir / "report.json")
    if json_lines:
        print(json.dumps({"event": "report", **body}), flush=True)
        return
    from rich.console import Console

    from spotlight.actors.spot.prices import cost_table

    console = Console()
    val = report["final_val_score"]
    base = report["base_val_score"]
    spot = report["spot"]
    console.print(
        f"[bold]{report['iterations']} iterations[/bold] in {report['wall_s']:.0f} s; "
        f"validation {base if base is None else round(base, 3)} -> "
        f"{val if val is None else round(val, 3)}"
    )
    console.print(
        f"exploration ({report['exploration']['seeds']}): "
        f"{report['exploration']['explored_seeds']} explored seeds, "
        f"{report['exploration']['fallback_seeds']} random fallbacks"
    )
    console.print(
        f"spot pool: {'on' if spot['enabled'] else 'off'}; {spot['nodes_started']} nodes, "
        f"preemptions survived {spot['preemptions_survived']} "
        f"({spot['preemptions_with_notice']} with notice, {spot['preemptions_silent']} silent), "
        f"work lost {spot['work_lost_steps']} denoising steps"
    )
    console.print(cost_table(tables, title=f"Cost ({report['cost']['clock']})"))
    console.print(f"report: {run_dir / 'report.json'}  curve: {run_dir / 'curve.png'}")
