"""`spotlight run`: the whole system on this machine — trainer, planner, explorers on a
simulated spot pool, monitor — then a report.

Processes and actors (embedded default, one CPU machine, tiny model)::

    this process (on-demand node "od0"; torchrun rank 0 on a cluster)
      runtime actors: "monitor" (Monitor -> RUN_DIR/metrics.jsonl), "explore_scheduler"
        (SchedulerActor, journal RUN_DIR/explore.journal), "planner" (PlannerActor),
        "coordinator" (Coordinator: membership, weights, cost, preemptions),
        "rollout_scheduler" + "rollout_local" (rollout.workers pool: the trainer's samples
        as pull-scheduled requests, see spotlight/actors/rollout/pool.py)
      + TrainerLoop (spotlight/actors/trainer/loop.py; torch work in a thread)
      + TraceReplayer + ProcessNodeLauncher: one spot node process per trace node
      + "rewards" (RewardRegistry) and ``rewards.workers`` reward worker processes
        (run_rewards.py); the trainer scores its rollouts and validation through them
      + the live view (a subscriber of the monitor; JSON lines when stdout is not a TTY)
    spot node processes: `python -m spotlight.nodes.spot --coordinator ADDR ...`
      (explorer + rollout worker + preemption handler; a notice is SIGTERM, a removal
      SIGKILL)

On a cluster (scripts/launch_ondemand.sh: torchrun): rank 0 is all of the above and serves
on ``--listen``; ranks > 0 are data-parallel trainer followers (no runtime, no output). With
``spot.pool: external`` (``--spot-pool external``) no node is started here: spot nodes
launched elsewhere (scripts/launch_spot.sh) register with the coordinator, and the report
bills and counts them from the coordinator's record (run_cluster.py). ``--ready-file`` and
``--stop-file`` are how scripts find the address and end the run.

Shutdown order: trainer stops (end, time budget, or first Ctrl-C: after its iteration, with
a checkpoint) -> replay cancelled -> every spot process killed and reaped by PID -> reward
workers' statistics asked, workers killed and reaped by PID -> weight
streams and metrics flushed -> report -> runtime shut down. A second Ctrl-C cancels at once
(spot processes are still killed by PID on the way out). Under torchrun every rank gets the
signal: a follower ignores the first and stops when rank 0 broadcasts the stop.

Report (RUN_DIR/report.json, and printed): iterations, validation scores, exploration
(explored vs fallback seeds), preemptions survived and work lost, and a cost table: this
run's on-demand + spot GPU-hours and dollars against the same GPU-hours all on-demand.
On-demand GPUs: ``spot.ondemand_gpus``, by default the trainer's world size (one GPU per
data-parallel rank), resolved here once the DP context is known
(:func:`resolve_ondemand_gpus`); the coordinator's "od0" node and the report use it.
GPU-hours are counted on the pool's clock: wall seconds x ``spot.time_scale`` (a trace
played at 6x bills 6 s per wall second); with the spot pool off the clock is wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spotlight.nodes.serving import (
    Serving,
    add_cluster_arguments,
    external_pool_view,
    watch_stop_file,
    write_atomic,
)
from spotlight.nodes.ondemand_rewards import RunRewards, reward_summary
from spotlight.nodes.ondemand_rollouts import rollout_stats, rollout_summary, start_rollout_pool
from spotlight.nodes.torchrun import record_exit
from spotlight.config.sections import ConfigError, SystemConfig, load_config

if TYPE_CHECKING:
    from spotlight.actors.weights.policy_spec import PolicySpec
    from spotlight.actors.trainer.loop import TrainerLoopConfig, TrainerSummary

__all__ = ["add_arguments", "resolve_ondemand_gpus", "run", "trainer_loop_config"]

log = logging.getLogger("spotlight.commands.run")

CONFIG_FILE = "config.json"
SETUP_TIMEOUT_S = 30.0
FLUSH_TIMEOUT_S = 10.0
NODE_EXIT_TIMEOUT_S = 5.0

EPILOG = """\
configuration: defaults < --config FILE (YAML or TOML; see configs/default.yaml) < plain
flags < --set section.key=value. Sections: run (iterations, time_budget_s, val_every,
ckpt_every, seed, run_dir), trainer (seeds: random|explored, base, reward, lr, group_size,
prompts_per_iter, objective: flow_grpo|nft, ...), planner, spot (enabled, pool, fault_mode, trace, time_scale,
notice_s, gpus_per_node, sp_degree, ondemand_gpus, ...), prices (preset, ondemand_usd_per_gpu_hour,
spot_usd_per_gpu_hour), rewards (workers: reward worker processes, 0 = in process;
actors_per_worker, chunk_images, timeout_s, start_timeout_s), rollout (workers:
auto|pool|trainer, where the trainer's samples are drawn; pull_batch, commit_interval,
lease_ttl_s, timeout_s). An unknown key is an error that lists the valid ones.
spot.ondemand_gpus (on-demand GPUs billed) defaults to the trainer's world size: 1 here,
torchrun's WORLD_SIZE under scripts/launch_ondemand.sh; set it when GPUs and ranks differ
(e.g. --set spot.ondemand_gpus=8 for one process on an 8-GPU node).
spot.sp_degree (default 1) runs each spot node's explorer as an elastic sequence-parallel
group of spot.gpus_per_node member processes at that degree, e.g. --set spot.gpus_per_node=2
--set spot.sp_degree=2; it must divide the base model's heads and image tokens.

outputs in RUN_DIR: config.json, metrics.jsonl (every metric), trainer.jsonl, plans.jsonl,
explore.journal, checkpoint/, curve.png, plots/, nodes.log (spot node output), rewards.log
(reward worker output), report.json.
Watch a running job from another terminal: spotlight monitor --attach ADDRESS (printed at
start). Ctrl-C stops gracefully (checkpoint, spot processes killed); twice: at once.

examples:
  spotlight run                                   # configs/default.yaml's defaults
  spotlight run --config configs/default.yaml --set trainer.seeds=random
  spotlight run --no-spot --iterations 4 --run-dir runs/quick
  spotlight run --resume runs/quick --iterations 8
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML or TOML config file (default: built-in defaults, as in configs/default.yaml)",
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
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint, with its config.json "
        "(--set and --iterations still apply)",
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
        "not a terminal)",
    )
    add_cluster_arguments(parser)


# ------------------------------------------------------------------------- config


def resolve_config(args: argparse.Namespace) -> tuple[SystemConfig, Path, bool]:
    """The config, the run directory and whether this is a resume; ConfigError if bad."""
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
    if args.resume is not None:
        if args.config is not None or args.run_dir is not None:
            raise ConfigError(
                "--resume DIR continues with DIR/config.json; do not combine it with "
                "--config or --run-dir (use --set to change a setting)"
            )
        run_dir = Path(args.resume)
        stored = run_dir / CONFIG_FILE
        if not stored.is_file():
            raise ConfigError(f"--resume {run_dir}: no {CONFIG_FILE} there (not a run directory)")
        cfg = SystemConfig.from_dict(json.loads(stored.read_text()))
        if flags:
            merged = cfg.to_dict()
            for key, value in flags.items():
                section, name = key.split(".")
                merged[section][name] = value
            cfg = SystemConfig.from_dict(merged)
        from spotlight.config.sections import apply_overrides

        return apply_overrides(cfg, args.overrides), run_dir, True
    cfg = load_config(args.config, overrides=args.overrides, flags=flags)
    if args.run_dir is not None:
        run_dir = Path(args.run_dir)
    elif cfg.run.run_dir is not None:
        run_dir = Path(cfg.run.run_dir)
    else:
        run_dir = Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    if (run_dir / "checkpoint").exists():
        raise ConfigError(
            f"run directory {run_dir} already holds a run; use --resume {run_dir} to continue "
            "it or pick another --run-dir"
        )
    return cfg, run_dir, False


def trainer_loop_config(cfg: SystemConfig) -> TrainerLoopConfig:
    from spotlight.actors.trainer.loop import TrainerLoopConfig

    return TrainerLoopConfig(
        algo=cfg.trainer.algo(),
        iterations=cfg.run.iterations,
        time_budget_s=cfg.run.time_budget_s,
        val_every=cfg.run.val_every,
        ckpt_every=cfg.run.ckpt_every,
        val_per_kind=cfg.trainer.val_per_kind,
        val_seeds=cfg.trainer.val_seeds,
        seed=cfg.run.seed,
        reward=cfg.trainer.reward,
        base=cfg.trainer.base,
        prompts=cfg.trainer.prompts,
        resolution=cfg.trainer.resolution,
        lora=cfg.trainer.lora(),
        explore=cfg.trainer.seeds == "explored",
        plan_timeout_s=cfg.planner.plan_timeout_s,
        # Not when this host also runs the spot pool's explorer processes (measured 6× slower).
        dedicated_torch_thread=not (cfg.spot.enabled and cfg.spot.pool == "trace"),
    )


# ------------------------------------------------------------------------- output


class Output:
    """Start line, live view and report: rich on a terminal, JSON lines otherwise."""

    def __init__(self, *, json_lines: bool, live: bool) -> None:
        self.json_lines = json_lines
        self.live = live

    def event(self, event: str, **fields: Any) -> None:
        if self.json_lines:
            print(json.dumps({"event": event, **fields}, default=str), flush=True)
        else:
            from rich.console import Console

            text = "  ".join(f"{k}={v}" for k, v in fields.items())
            Console().print(f"[bold]{event}[/bold]  {text}")


async def _live_view(monitor: Any, out: Output) -> None:
    """Draw the monitor's states until cancelled (a subscriber like `spotlight monitor`)."""
    from spotlight.actors.monitor.actor import MonitorState
    from spotlight.commands.monitor import StateDisplay
    from spotlight.runtime.errors import SpotlightError

    every = 2.0 if out.json_lines else 0.5
    try:
        with StateDisplay(json_lines=out.json_lines) as display:
            async with monitor.subscribe.stream(every, timeout=30.0) as states:
                async for state in states:
                    if isinstance(state, MonitorState):
                        display.show(state)
    except SpotlightError as exc:
        log.warning("live view ended: %r", exc)


# ------------------------------------------------------------------------- spot pool


def resolve_ondemand_gpus(cfg: SystemConfig, world_size: int) -> SystemConfig:
    """``cfg`` with ``spot.ondemand_gpus`` set: as configured, else ``world_size`` (the
    trainer's DP ranks, one GPU each). Done once per run, where the DP context is known;
    config.json keeps the unresolved value so a resume on another world size re-resolves."""
    gpus = cfg.spot.ondemand_gpu_count(world_size)
    return dataclasses.replace(cfg, spot=dataclasses.replace(cfg.spot, ondemand_gpus=gpus))


def _policy_spec(cfg: SystemConfig, progress: bool) -> PolicySpec:
    """What the explorers build: the base checkpoint's policy config (the coordinator sends
    it to every spot node; the weights come from the trainer), so any base can be explored;
    with LoRA also the adapters and the base's path (nodes load the frozen base themselves).

    With no base configured this is where the cached tiny base is built on first use
    (minutes; a progress bar on a terminal), before the live view starts."""
    from spotlight.actors.weights.policy_spec import PolicySpec
    from spotlight.models.bases import base_config

    if cfg.trainer.base is None:
        from spotlight.models.base import ensure_base

        base = str(ensure_base(progress=progress))
    else:
        base = cfg.trainer.base
    config = base_config(base, image_size=cfg.trainer.latent_side(), device=_trainer_device())
    return PolicySpec(config=config, lora=cfg.trainer.lora(), base=base)


def _trainer_device() -> str:
    """Where rank 0's trainer computes (the device type sets a pipeline base's dtype)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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


def node_command(cfg: SystemConfig, address: str) -> str:
    cmd = cfg.spot.node_command
    for key, value in (
        ("{python}", shlex.quote(sys.executable)),
        ("{address}", address),
        ("{grace}", f"{cfg.spot.notice_grace_s:g}"),
        ("{gpus}", str(cfg.spot.gpus_per_node)),
        ("{sp_degree}", str(cfg.spot.sp_degree)),
    ):
        cmd = cmd.replace(key, value)
    return cmd


async def _stop_pool(launcher: Any, timeout_s: float = NODE_EXIT_TIMEOUT_S) -> None:
    """End of run: SIGINT every live node (a clean leave, not a preemption), give them
    ``timeout_s`` to exit, then kill and reap whatever is left, by PID (launcher.close)."""
    try:
        procs = [p for p in launcher.procs.values() if p.running]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.popen.wait, max(0.0, deadline - time.monotonic()))
    finally:
        await launcher.close()


# ------------------------------------------------------------------------- the job


@dataclasses.dataclass
class _Pool:
    """What the spot pool did (filled as it runs)."""

    enabled: bool
    external: bool = False
    trace: Any = None
    replayer: Any = None
    launcher: Any = None
    task: asyncio.Task[Any] | None = None


async def _main(
    cfg: SystemConfig, run_dir: Path, resume: bool, out: Output, serving: Serving
) -> dict[str, Any]:
    from spotlight.actors.monitor.actor import Monitor, MonitorConfig
    from spotlight.actors.exploration.planner import PlannerActor
    from spotlight.actors.scheduling.scheduler import SchedulerActor
    from spotlight.actors.trainer.loop import TrainerLoop, init_context
    from spotlight.runtime import Runtime

    ctx = await asyncio.to_thread(init_context)
    loop_cfg = trainer_loop_config(cfg)
    pooled = cfg.rollout.pooled(ctx.world)  # every rank refuses a bad combination alike
    if ctx.rank != 0:  # a data-parallel follower: no runtime, rank 0 drives
        # torchrun forwards a signal to every rank: a follower goes on until rank 0 (signalled
        # too) broadcasts the stop after the iteration; a second signal stops it at once.
        _on_interrupts(lambda: None)
        try:
            follower = await TrainerLoop(loop_cfg, run_dir, resume=resume, ctx=ctx).run()
        finally:
            _remove_interrupt_handlers()
        return {"rank": ctx.rank, "iterations": follower.iterations}
    cfg = resolve_ondemand_gpus(cfg, ctx.world)

    stop = asyncio.Event()

    def stop_after_iteration() -> None:
        print(
            "spotlight run: stopping after this iteration (checkpoint, spot nodes "
            "killed); Ctrl-C again to stop now",
            file=sys.stderr,
            flush=True,
        )
        stop.set()

    interrupts = _on_interrupts(stop_after_iteration)

    prices = cfg.prices.build()
    t0, t0_wall = time.monotonic(), time.time()
    async with Runtime(serving.runtime) as rt:
        monitor = await rt.spawn(
            Monitor, MonitorConfig(run_dir=str(run_dir), node_id="od0"), name="monitor"
        )
        scheduler = await rt.spawn(
            SchedulerActor, journal_path=str(run_dir / "explore.journal"), name="explore_scheduler"
        )
        planner = await rt.spawn(
            PlannerActor,
            scheduler=scheduler,
            config=cfg.planner.build(
                group_size=cfg.trainer.group_size, explore_steps=cfg.trainer.num_steps
            ),
            monitor=monitor,
            seed=cfg.run.seed,
            name="planner",
        )
        from spotlight.actors.monitor.metrics import MetricsPublisher
        from spotlight.actors.weights.publish import WeightPublisher

        publisher = WeightPublisher()
        rollouts = (
            await start_rollout_pool(
                rt, cfg.rollout, loop_cfg.algo.sampler, commits=cfg.spot.fault_mode == "elastic"
            )
            if pooled
            else None
        )
        from spotlight.actors.cluster.coordinator import Coordinator

        coordinator = await rt.spawn(
            Coordinator,
            prices=prices,
            run_id=run_dir.name,
            monitor=monitor,
            publisher=publisher,
            planner=planner,
            scheduler=scheduler,
            sampler=loop_cfg.algo.sampler,
            model=await asyncio.to_thread(_policy_spec, cfg, not out.json_lines),
            rollouts=rollouts.offer() if rollouts is not None else None,
            name="coordinator",
        )
        await coordinator.register_node.ask(
            "od0", "ondemand", cfg.spot.ondemand_gpus, None, timeout=SETUP_TIMEOUT_S
        )
        metrics = MetricsPublisher(monitor, source="trainer", runtime=rt)
        pool = _Pool(enabled=cfg.spot.enabled, external=cfg.spot.pool == "external")
        out.event(
            "start",
            address=rt.address,
            run_dir=str(run_dir),
            resume=resume,
            seeds=cfg.trainer.seeds,
            spot=pool.enabled,
            spot_pool=("external" if pool.external else "trace") if pool.enabled else None,
            ondemand_gpus=cfg.spot.ondemand_gpus,
            attach=f"spotlight monitor --attach {rt.address}",
        )
        view = rt.create_task(_live_view(monitor, out), name="live view") if out.live else None
        if serving.stop_file is not None:
            rt.create_task(watch_stop_file(serving.stop_file, stop), name="stop file")
        nodes_log = None
        summary: TrainerSummary | None = None
        rewards = None
        reward_stats: dict[str, Any] | None = None
        try:
            rewards = await RunRewards.start(rt, cfg, run_dir, metrics)
            if serving.ready_file is not None:
                write_atomic(serving.ready_file, rt.address + "\n")
            if pool.enabled and not pool.external:
                from spotlight.actors.spot.replay import ProcessNodeLauncher, TraceReplayer
                from spotlight.actors.spot.restart_pool import RestartPoolLauncher
                from spotlight.actors.spot.trace import load_trace, synthesize_notices

                trace = load_trace(cfg.spot.trace_path())
                if cfg.spot.notice_s > 0:
                    trace = synthesize_notices(trace, cfg.spot.notice_s)
                pool.trace = trace
                nodes_log = (run_dir / "nodes.log").open("ab")
                # restart: the TorchElastic-style baseline (any notice or loss restarts the
                # whole pool); elastic: a noticed node drains and leaves, the rest go on.
                launcher_cls = (
                    RestartPoolLauncher if cfg.spot.fault_mode == "restart" else ProcessNodeLauncher
                )
                pool.launcher = launcher_cls(
                    node_command(cfg, rt.address),
                    stdout=nodes_log.fileno(),
                    stderr=nodes_log.fileno(),
                )
                pool.replayer = TraceReplayer(trace, pool.launcher, time_scale=cfg.spot.time_scale)
                pool.task = rt.create_task(pool.replayer.run(), name="spot replay")
            trainer = TrainerLoop(
                loop_cfg,
                run_dir,
                resume=resume,
                ctx=ctx,
                planner=planner,
                publisher=publisher,
                metrics=metrics,
                reward_fn=rewards.client if rewards is not None else None,
                rollouts=rollouts,
            )
            summary = await trainer.run(stop)
        finally:
            elapsed, end_wall = time.monotonic() - t0, time.time()
            if serving.ready_file is not None:
                with contextlib.suppress(OSError):
                    serving.ready_file.unlink()
            if pool.task is not None:
                pool.task.cancel("the trainer finished")
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pool.task
            if pool.launcher is not None:
                await asyncio.shield(_stop_pool(pool.launcher))
            if nodes_log is not None:
                nodes_log.close()
            if rewards is not None:
                reward_stats = await asyncio.shield(rewards.stop(metrics))
        stats = await _gather_stats(scheduler, planner, coordinator, publisher)
        stats["rollouts"] = await rollout_stats(rollouts)
        stats["rewards"] = reward_stats
        # How long this process's event loop could not run (the heartbeat's own lag): a
        # stall here is why nodes re-join; see Transport._credit_own_stall.
        stats["event_loop"] = {
            k: rt.transport.stats[k] for k in ("loop_stalls", "loop_lag_max_ms", "peers_lost")
        }
        with contextlib.suppress(Exception):
            await asyncio.wait_for(publisher.flush(FLUSH_TIMEOUT_S), FLUSH_TIMEOUT_S + 1)
        await publisher.close()
        await metrics.flush(FLUSH_TIMEOUT_S)
        await metrics.close()
        if view is not None:
            view.cancel("run finished")
            with contextlib.suppress(asyncio.CancelledError):
                await view
    _remove_interrupt_handlers()
    assert summary is not None
    from spotlight.commands.run_report import build_report

    replay = pool.replayer.statistics() if pool.replayer is not None else None
    report_cfg = cfg
    if pool.enabled and pool.external:  # the coordinator's record stands in for a trace
        pool.trace, replay = external_pool_view(
            stats.get("coordinator"), t0_wall=t0_wall, end_wall=end_wall
        )
        report_cfg = dataclasses.replace(cfg, spot=dataclasses.replace(cfg.spot, time_scale=1.0))
    report = build_report(
        report_cfg,
        run_dir,
        summary,
        replay=replay,
        trace=pool.trace,
        node_pids=[p.pid for p in pool.launcher.history] if pool.launcher is not None else [],
        spot_on=pool.enabled,
        stats=stats,
        elapsed_s=elapsed,
        interrupted=bool(interrupts),
    )
    report["spot"]["pool"] = ("external" if pool.external else "trace") if pool.enabled else None
    report["rewards"] = reward_summary(reward_stats, cfg.rewards.workers)
    report["rollouts"] = rollout_summary(stats.get("rollouts"), "pool" if pooled else "trainer")
    if pool.external:
        report["spot"]["trace"] = None
    return report


def _on_interrupts(first: Callable[[], None]) -> list[int]:
    """SIGINT/SIGTERM on the running loop: the first calls ``first``, a second cancels the
    current task (stop now). Returns the signals received, appended as they come."""
    main_task = asyncio.current_task()
    assert main_task is not None
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            first()
        else:
            main_task.cancel("second interrupt")

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    return received


def _remove_interrupt_handlers() -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signum)


async def _gather_stats(
    scheduler: Any, planner: Any, coordinator: Any, publisher: Any
) -> dict[str, Any]:
    from spotlight.actors.monitor.metrics import plain
    from spotlight.runtime.errors import SpotlightError

    out: dict[str, Any] = {"weights": plain(publisher.statistics())}
    for name, ref in (("scheduler", scheduler), ("planner", planner), ("coordinator", coordinator)):
        if ref is None:
            out[name] = None
            continue
        try:
            out[name] = plain(await ref.statistics.ask(timeout=SETUP_TIMEOUT_S))
        except (SpotlightError, TimeoutError, ValueError) as exc:
            out[name] = {"error": repr(exc)}
    return out


def run(args: argparse.Namespace) -> int:
    """Run the system; 0 when the trainer reached its end (or stopped cleanly on request).
    Under scripts/launch_ondemand.sh the status is also recorded for the launcher's own exit
    status (run_torchrun.py); a crash records nothing."""
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
        serving = Serving.from_args(args)
    except (ConfigError, ValueError) as exc:
        print(f"spotlight run: {exc}", file=sys.stderr)
        return 2
    run_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("RANK", "0") == "0":  # DP followers (torchrun ranks > 0) write nothing
        (run_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    json_lines = bool(args.json) or not sys.stdout.isatty()
    out = Output(json_lines=json_lines, live=not args.no_live)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            report = runner.run(_main(cfg, run_dir, resume, out, serving))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("spotlight run: interrupted; spot nodes killed", file=sys.stderr)
        return 130
    except ValueError as exc:
        print(f"spotlight run: {exc}", file=sys.stderr)
        return 2
    if "rank" in report:  # a DP follower prints nothing
        return 0
    from spotlight.commands.run_report import write_report

    write_report(report, run_dir, json_lines=out.json_lines)
    return 0
