"""`spotlight run`: the whole system on this machine — trainer, planner, explorers on a
simulated spot pool, monitor — then a report.

The processes and actors it starts, and the order it stops them in, are drawn in
:mod:`spotlight.nodes.ondemand` (the :class:`~spotlight.nodes.ondemand.Controller` this
command runs) and docs/architecture.md.

On a cluster (scripts/launch_ondemand.sh: torchrun): rank 0 is all of the above and serves
on ``--listen``; ranks > 0 are data-parallel trainer followers (no runtime, no output). With
``spot.pool: external`` (``--spot-pool external``) no node is started here: spot nodes
launched elsewhere (scripts/launch_spot.sh) register with the coordinator, and the report
bills and counts them from the coordinator's record (nodes/serving.py). ``--ready-file`` and
``--stop-file`` are how scripts find the address and end the run.

Report (RUN_DIR/report.json, and printed): iterations, validation scores, exploration
(explored vs fallback seeds), preemptions survived and work lost, and a cost table: this
run's on-demand + spot GPU-hours and dollars against the same GPU-hours all on-demand.
On-demand GPUs: ``spot.ondemand_gpus``, by default the trainer's world size (one GPU per
data-parallel rank), resolved here once the DP context is known
(:func:`spotlight.nodes.ondemand.resolve_ondemand_gpus`); the coordinator's "od0" node and the report use it.
GPU-hours are counted on the pool's clock: wall seconds x ``spot.time_scale`` (a trace
played at 6x bills 6 s per wall second); with the spot pool off the clock is wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from spotlight.commands.run_resume import (
    CONFIG_FILE,
    auto_resume,
    format_changes,
    recover_checkpoint,
    settings_diff,
    stored_config,
)
from spotlight.config import ConfigError, SystemConfig, apply_overrides, load_config
from spotlight.nodes.ondemand import Controller, Outcome
from spotlight.nodes.ondemand_rewards import reward_summary
from spotlight.nodes.ondemand_rollouts import rollout_summary
from spotlight.nodes.process import write_atomic
from spotlight.nodes.serving import Serving, add_cluster_arguments, external_pool_view
from spotlight.nodes.torchrun import record_exit

__all__ = ["add_arguments", "run"]

log = logging.getLogger("spotlight.commands.run")

FINAL_STATE_TIMEOUT_S = 5.0

EPILOG = """\
configuration: defaults < --config FILE|PRESET (YAML or TOML; presets: tiny-cpu,
qwen-image-lora-h100) < plain flags < --set section.key=value; `spotlight config show
[--config ...] [--set ...]` prints the result with every key's doc. Sections: run (iterations, time_budget_s, val_every,
ckpt_every, seed, run_dir, resume: never|auto), trainer (seeds: random|explored, base, reward, lr, group_size,
prompts_per_iter, objective: flow_grpo|nft, ...), planner, spot (enabled, pool, fault_mode, trace, time_scale,
notice_s, gpus_per_node, sp_degree, ondemand_gpus, ...), prices (preset, ondemand_usd_per_gpu_hour,
spot_usd_per_gpu_hour), rewards (workers: reward worker processes, 0 = in process;
actors_per_worker, chunk_images, timeout_s, start_timeout_s), rollout (workers:
auto|pool|trainer, where the trainer's samples are drawn; pull_batch, commit_interval,
lease_ttl_s, timeout_s), tracking (tensorboard, wandb: off|offline|online, wandb_project,
val_images). An unknown key is an error that lists the valid ones.
spot.ondemand_gpus (on-demand GPUs billed) defaults to the trainer's world size: 1 here,
torchrun's WORLD_SIZE under scripts/launch_ondemand.sh; set it when GPUs and ranks differ
(e.g. --set spot.ondemand_gpus=8 for one process on an 8-GPU node).
spot.sp_degree (default 1) runs each spot node's explorer as an elastic sequence-parallel
group of spot.gpus_per_node member processes at that degree, e.g. --set spot.gpus_per_node=2
--set spot.sp_degree=2; it must divide the base model's heads and image tokens.

outputs in RUN_DIR: config.json, metrics.jsonl (every metric), trainer.jsonl, plans.jsonl,
explore.journal, checkpoint/, curve.png, plots/, nodes.log (spot node output), rewards.log
(reward worker output), report.json; with tracking on: tensorboard/, wandb/, validation/.
Watch a running job from another terminal: spotlight monitor --attach ADDRESS (printed at
start). Ctrl-C stops gracefully (checkpoint, spot processes killed); twice: at once.

examples:
  spotlight run                                   # configs/default.yaml's defaults
  spotlight run --config configs/default.yaml --set trainer.seeds=random
  spotlight run --no-spot --iterations 4 --run-dir runs/quick
  spotlight run --resume runs/quick --iterations 8
  spotlight run --run-dir /shared/runs/a --resume auto   # the same command on every restart
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "--config",
        metavar="FILE|PRESET",
        help="YAML or TOML config file, or a preset name (tiny-cpu, qwen-image-lora-h100; "
        "default: built-in defaults, as in configs/default.yaml)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. --set trainer.lr=2e-5 (repeatable; applied last)",
    )
    parser.add_argument(
        "--run-dir",
        metavar="DIR",
        help="where everything is written (default: run.run_dir, else runs/run-<date-time>)",
    )
    parser.add_argument(
        "--resume",
        metavar="DIR|auto",
        help="continue the run in DIR from its last checkpoint, with its config.json "
        "(--set and --iterations still apply; changes are printed). auto (with --run-dir): "
        "continue --run-dir if it holds this run's checkpoint, start it if it is empty, "
        "refuse another run's (run.resume=auto; what a cluster that re-runs one command "
        "needs)",
    )
    parser.add_argument(
        "--iterations", type=int, metavar="N", help="trainer iterations (run.iterations)"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        metavar="S",
        help="stop after the iteration that crosses S wall seconds (run.time_budget_s)",
    )
    parser.add_argument(
        "--seeds",
        choices=("random", "explored"),
        help="trainer.seeds: explored (planner + spot explorers) or random (baseline)",
    )
    parser.add_argument(
        "--no-spot",
        action="store_true",
        help="no spot pool: the trainer alone on on-demand (spot.enabled=false)",
    )
    parser.add_argument(
        "--no-live",
        action="store_true",
        help="no live monitor view; only the start line and the final report",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="JSON lines instead of the rich view and tables (automatic when stdout is "
        "not a terminal): one per event or iteration",
    )
    parser.add_argument(
        "--full-state",
        action="store_true",
        help="with JSON lines: print the whole monitor state every 2 s instead of one line "
        "per event or iteration",
    )
    add_cluster_arguments(parser)


# ------------------------------------------------------------------------- config


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The plain flags as ``{"section.key": value}`` (they override the file, --set them)."""
    flags: dict[str, Any] = {}
    if args.iterations is not None:
        flags["run.iterations"] = args.iterations
    if args.time_budget is not None:
        flags["run.time_budget_s"] = args.time_budget
    if args.seeds is not None:
        flags["trainer.seeds"] = args.seeds
    if args.no_spot:
        flags["spot.enabled"] = False
    if args.spot_pool is not None:
        if args.no_spot and args.spot_pool != "none":
            raise ConfigError(f"--no-spot contradicts --spot-pool {args.spot_pool}; give one")
        if args.spot_pool == "none":
            flags["spot.enabled"] = False
        else:
            flags["spot.enabled"] = True
            flags["spot.pool"] = args.spot_pool
    if args.resume == "auto":
        flags["run.resume"] = "auto"
    return flags


def _say(text: str) -> None:
    """A line for the person at the terminal; DP followers (ranks > 0) stay quiet."""
    if os.environ.get("RANK", "0") == "0":
        print(f"spotlight run: {text}", file=sys.stderr, flush=True)


def _resume_explicit(args: argparse.Namespace, flags: dict[str, Any]) -> tuple[SystemConfig, Path]:
    """``--resume DIR``: DIR's stored config, then the flags and --set (changes printed)."""
    if args.config is not None or args.run_dir is not None:
        raise ConfigError(
            "--resume DIR continues with DIR/config.json; do not combine it with "
            "--config or --run-dir (use --set to change a setting, or --run-dir DIR "
            "--resume auto to run the same command every time)"
        )
    run_dir = Path(args.resume)
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"--resume {run_dir}: no {CONFIG_FILE} there (not a run directory)")
    stored = stored_config(run_dir)
    merged = stored.to_dict()
    for key, value in flags.items():
        section, name = key.split(".")
        merged[section][name] = value
    cfg = apply_overrides(SystemConfig.from_dict(merged), args.overrides)
    recover_checkpoint(run_dir)
    changes = settings_diff(stored, cfg)
    if changes:
        _say(f"resuming {run_dir} with changed settings:\n{format_changes(changes)}")
    return cfg, run_dir


def resolve_config(args: argparse.Namespace) -> tuple[SystemConfig, Path, bool]:
    """The config, the run directory and whether this is a resume; ConfigError if bad."""
    flags = _flags(args)
    if args.resume is not None and args.resume != "auto":
        cfg, run_dir = _resume_explicit(args, flags)
        return cfg, run_dir, True
    cfg = load_config(args.config, overrides=args.overrides, flags=flags)
    auto = cfg.run.resume == "auto"
    if args.run_dir is not None:
        run_dir = Path(args.run_dir)
    elif cfg.run.run_dir is not None:
        run_dir = Path(cfg.run.run_dir)
    elif auto:
        raise ConfigError(
            "--resume auto (run.resume=auto) needs the run directory to continue or start: "
            "give --run-dir DIR (or run.run_dir), the same on every attempt"
        )
    else:
        run_dir = Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    if auto:
        plan = auto_resume(run_dir, cfg)
        if plan.resume:
            _say(f"resuming {run_dir} from its checkpoint (iteration {plan.iteration})")
        else:
            _say(f"{run_dir}: {plan.reason}")
        if plan.changes:
            _say(f"settings changed since {run_dir}'s last start:\n{format_changes(plan.changes)}")
        return cfg, run_dir, plan.resume
    if (run_dir / "checkpoint").exists():
        raise ConfigError(
            f"run directory {run_dir} already holds a run; use --resume {run_dir} to continue "
            "it, --resume auto to continue it when it has a checkpoint and start it otherwise, "
            "or pick another --run-dir"
        )
    return cfg, run_dir, False


# ------------------------------------------------------------------------- output


class Output:
    """Start line, live view and report: rich on a terminal, JSON lines otherwise."""

    def __init__(self, *, json_lines: bool, live: bool, full_state: bool = False) -> None:
        self.json_lines = json_lines
        self.live = live
        self.full_state = full_state

    def event(self, event: str, **fields: Any) -> None:
        if self.json_lines:
            print(json.dumps({"event": event, **fields}, default=str), flush=True)
        else:
            from rich.console import Console

            text = "  ".join(f"{k}={v}" for k, v in fields.items())
            Console().print(f"[bold]{event}[/bold]  {text}")


async def _live_view(monitor: Any, out: Output) -> None:
    """Draw the monitor's states until cancelled (a subscriber like `spotlight monitor`).

    Cancelled at the end of the run (after the trainer's metrics are flushed), it draws the
    final state once more, so the last iteration's line is never lost between two updates."""
    from spotlight.actors.monitor.actor import MonitorState
    from spotlight.commands.monitor import StateDisplay
    from spotlight.runtime.errors import SpotlightError

    every = 2.0 if out.json_lines else 0.5
    try:
        with StateDisplay(json_lines=out.json_lines, full_state=out.full_state) as display:
            try:
                async with monitor.subscribe.stream(every, timeout=30.0) as states:
                    async for state in states:
                        if isinstance(state, MonitorState):
                            display.show(state)
            except asyncio.CancelledError:
                # An empty batch asked through the mailbox is a barrier: every record told
                # before it has been applied when it returns (snapshot is concurrent).
                try:
                    await monitor.records.ask([], "", 0, timeout=FINAL_STATE_TIMEOUT_S)
                    display.show(await monitor.snapshot.ask(timeout=FINAL_STATE_TIMEOUT_S))
                except (SpotlightError, TimeoutError) as exc:
                    log.warning("live view: no final state: %r", exc)
                raise
    except (SpotlightError, TimeoutError) as exc:
        log.warning("live view ended: %r", exc)


# ------------------------------------------------------------------------- spot pool


def check_sp_degree(cfg: SystemConfig) -> None:
    """ConfigError (before anything starts) when ``spot.sp_degree`` does not divide the base
    model's heads and image tokens. The cached tiny base is not built for this: its shape is
    its recipe's named config."""
    if not cfg.spot.enabled or cfg.spot.sp_degree == 1:
        return
    if cfg.trainer.base is None:
        from spotlight.models.base import PretrainRecipe

        model = PretrainRecipe().dit_config
    else:
        from spotlight.models.bases import base_config

        try:
            model = base_config(cfg.trainer.base, image_size=cfg.trainer.latent_side())
        except (OSError, ValueError):
            return  # an unreadable base fails with its own error when the trainer loads it
    cfg.spot.check_sp_degree(model.num_attention_heads, model.num_tokens)


# ------------------------------------------------------------------------- the report


def _report(outcome: Outcome, run_dir: Path, rewards_workers: int) -> dict[str, Any]:
    """report.json from what the on-demand node's Controller left."""
    from spotlight.commands.run_report import build_report

    cfg, pool, stats = outcome.cfg, outcome.pool, outcome.stats
    assert cfg is not None and pool is not None and outcome.summary is not None
    replay = pool.replayer.statistics() if pool.replayer is not None else None
    report_cfg = cfg
    if pool.enabled and pool.external:  # the coordinator's record stands in for a trace
        pool.trace, replay = external_pool_view(
            stats.get("coordinator"), t0_wall=outcome.t0_wall, end_wall=outcome.end_wall
        )
        report_cfg = dataclasses.replace(cfg, spot=dataclasses.replace(cfg.spot, time_scale=1.0))
    report = build_report(
        report_cfg,
        run_dir,
        outcome.summary,
        replay=replay,
        trace=pool.trace,
        node_pids=[p.pid for p in pool.launcher.history] if pool.launcher is not None else [],
        spot_on=pool.enabled,
        stats=stats,
        elapsed_s=outcome.elapsed_s,
        interrupted=outcome.interrupted,
    )
    report["spot"]["pool"] = ("external" if pool.external else "trace") if pool.enabled else None
    report["rewards"] = reward_summary(stats.get("rewards"), rewards_workers)
    mode = "pool" if outcome.pooled else "trainer"
    report["rollouts"] = rollout_summary(stats.get("rollouts"), mode)
    if pool.external:
        report["spot"]["trace"] = None
    return report


def run(args: argparse.Namespace) -> int:
    """Run the system; 0 when the trainer reached its end (or stopped cleanly on request).
    Under scripts/launch_ondemand.sh the status is also recorded for the launcher's own exit
    status (nodes/torchrun.py); a crash records nothing."""
    code = _run(args)
    record_exit(code)
    return code


def _run(args: argparse.Namespace) -> int:
    import uvloop

    try:
        cfg, run_dir, resume = resolve_config(args)
        if cfg.spot.enabled and cfg.spot.pool == "trace":
            cfg.spot.trace_path()  # a missing trace fails now, before anything starts
        check_sp_degree(cfg)
        cfg.tracking.check_installed()
        serving = Serving.from_args(args)
    except (ConfigError, ValueError) as exc:
        print(f"spotlight run: {exc}", file=sys.stderr)
        return 2
    run_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("RANK", "0") == "0":  # DP followers (torchrun ranks > 0) write nothing
        # atomic: the other ranks of an auto-resumed run read it while they decide
        write_atomic(run_dir / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2) + "\n")
    json_lines = bool(args.json) or not sys.stdout.isatty()
    out = Output(json_lines=json_lines, live=not args.no_live, full_state=args.full_state)
    controller = Controller(
        cfg,
        run_dir,
        resume=resume,
        serving=serving,
        on_event=out.event,
        live_view=(lambda monitor: _live_view(monitor, out)) if out.live else None,
        progress=not out.json_lines,
    )
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            outcome = runner.run(controller.run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("spotlight run: interrupted; spot nodes killed", file=sys.stderr)
        return 130
    except ValueError as exc:
        print(f"spotlight run: {exc}", file=sys.stderr)
        return 2
    if outcome.rank != 0:  # a DP follower prints nothing
        return 0
    from spotlight.commands.run_report import write_report

    report = _report(outcome, run_dir, cfg.rewards.workers)
    write_report(report, run_dir, json_lines=out.json_lines)
    return 0
