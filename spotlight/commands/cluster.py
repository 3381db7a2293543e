"""`spotlight cluster replay|project|keys`: play a spot trace; project cost; CURVE keys.

``project`` (spotlight/commands/cluster_project.py) runs the discrete-event projection
(spotlight/actors/spot/projection/) of the five strategies over a trace, labelled so.

    spotlight cluster replay --trace traces/steady_1h.csv --time-scale 60 --notice 120 \\
        --command "python -m my_node --name {node}"

Each ``add`` starts the command (``{node}`` replaced by the node name, environment
variable ``SPOTLIGHT_NODE_ID`` set); a ``notice`` sends SIGTERM to the node's process
group; a ``remove`` sends SIGKILL if it is still running. Without ``--command`` nothing
is started: the events are only printed (a dry run). Node output goes to our stderr, so
our stdout stays one record per line. One line per event (rich on a terminal, JSON
lines otherwise), then a summary: nodes, preemptions with and without notice, spot
GPU-hours and cost in *trace* time (a 1-hour trace played at ``--time-scale 60`` bills
one hour, not one minute). Ctrl-C stops the replay and kills every node it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from spotlight.actors.spot.prices import PRICE_PRESETS, CostMeter, Prices, cost_table
from spotlight.actors.spot.replay import (
    NodeLauncher,
    ProcessNodeLauncher,
    RecordingLauncher,
    ReplayEvent,
    ReplayStats,
    TraceReplayer,
)
from spotlight.actors.spot.trace import SpotTrace, TraceError, load_trace, synthesize_notices
from spotlight.commands.cluster_keys import add_keys_parser, run_keys
from spotlight.commands.cluster_project import add_project_parser, run_project

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND", required=True)
    rp = sub.add_parser("replay", help="play a spot trace against node processes")
    rp.add_argument("--trace", type=Path, required=True, help="CSV trace (t_s,event,node)")
    rp.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="play X trace seconds per wall second (60: a 1 h trace in 1 min); default 1",
    )
    rp.add_argument(
        "--notice",
        type=float,
        default=0.0,
        metavar="S",
        help="synthesise a notice S trace seconds before each removal that has none "
        "(AWS 120, GCP 30); default 0 = keep the trace's notices only",
    )
    rp.add_argument(
        "--command",
        default=None,
        help="command started per node; {node} is replaced by its name. "
        "Run without a shell (wrap in sh -c '...' for redirections). Omit for a dry run.",
    )
    rp.add_argument("--gpus-per-node", type=int, default=8, help="GPUs billed per spot node (8)")
    rp.add_argument(
        "--prices",
        choices=sorted(PRICE_PRESETS),
        default="aws-p5",
        help="price preset for the cost summary (default aws-p5)",
    )
    rp.add_argument("--spot-price", type=float, default=None, help="override USD/GPU-hour")
    rp.add_argument("--ondemand-price", type=float, default=None, help="override USD/GPU-hour")
    rp.add_argument("--json", action="store_true", help="JSON lines even on a terminal")

    add_keys_parser(sub)
    add_project_parser(sub)


def run(args: argparse.Namespace) -> int:
    if args.cluster_command == "project":
        return run_project(args)
    if args.cluster_command == "keys":
        return run_keys(args)
    if args.gpus_per_node < 1:
        print(f"error: --gpus-per-node must be >= 1, got {args.gpus_per_node}", file=sys.stderr)
        return 2
    try:
        trace = synthesize_notices(load_trace(args.trace), args.notice)
        prices = _prices(args)
        if not args.time_scale > 0:
            raise ValueError(f"--time-scale must be > 0, got {args.time_scale}")
    except (TraceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    json_mode = args.json or not sys.stdout.isatty()
    stopped_by: list[int] = []
    try:
        stats = asyncio.run(_replay(trace, args, json_mode, stopped_by))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: every node process was killed", file=sys.stderr)
        return 128 + (stopped_by[0] if stopped_by else signal.SIGINT)
    _summary(trace, stats, prices, args.gpus_per_node, json_mode)
    return 0


def _prices(args: argparse.Namespace) -> Prices:
    base = Prices.preset(args.prices)
    if args.spot_price is None and args.ondemand_price is None:
        return base
    return Prices(
        ondemand_usd_per_gpu_hour=(
            base.ondemand_usd_per_gpu_hour if args.ondemand_price is None else args.ondemand_price
        ),
        spot_usd_per_gpu_hour=(
            base.spot_usd_per_gpu_hour if args.spot_price is None else args.spot_price
        ),
        name=f"{base.name} (overridden)",
        source="command-line override",
    )


async def _replay(
    trace: SpotTrace, args: argparse.Namespace, json_mode: bool, stopped_by: list[int]
) -> ReplayStats:
    """Replays until the trace ends, or until SIGINT/SIGTERM cancel it (nodes are then killed).

    The handlers are installed on the loop explicitly rather than relying on Python's
    KeyboardInterrupt: a process started in the background by a shell inherits SIGINT as
    ignored, and a supervisor stops us with SIGTERM; either way the nodes must not be orphaned.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def stop(signum: int) -> None:
        stopped_by.append(signum)
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    printer = _printer(json_mode)
    launcher: NodeLauncher
    if args.command is None:
        launcher = RecordingLauncher()
        return await TraceReplayer(
            trace, launcher, time_scale=args.time_scale, on_event=printer
        ).run()
    from spotlight.actors.weights.share import remove_published_by

    async with ProcessNodeLauncher(
        args.command, stdout=_stderr_fd(), on_reaped=remove_published_by
    ) as proc_launcher:
        return await TraceReplayer(
            trace, proc_launcher, time_scale=args.time_scale, on_event=printer
        ).run()


def _stderr_fd() -> int:
    """Our stderr's file descriptor (2 when stderr is replaced by a non-file object)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return 2


def _printer(json_mode: bool) -> Callable[[ReplayEvent], None]:
    if json_mode:

        def emit(ev: ReplayEvent) -> None:
            print(json.dumps({"kind": "event", **ev.to_dict()}), flush=True)

        return emit
    from rich.console import Console

    console = Console()
    style = {"add": "green", "notice": "yellow", "remove": "red"}

    def show(ev: ReplayEvent) -> None:
        extra = ""
        if ev.event == "notice" and ev.deadline_in_s is not None:
            extra = f" (removal in {ev.deadline_in_s:.1f}s)"
        elif ev.event == "remove":
            extra = " [bold](silent)[/bold]" if ev.silent else " (after notice)"
        console.print(
            f"[dim]{ev.played_at:8.2f}s  trace {ev.trace_t_s:8.1f}s[/dim]  "
            f"[{style[ev.event]}]{ev.event:<6}[/{style[ev.event]}] {ev.node}{extra}"
        )

    return show


def _summary(
    trace: SpotTrace, stats: ReplayStats, prices: Prices, gpus_per_node: int, json_mode: bool
) -> None:
    meter = CostMeter(prices)
    meter.add_trace(trace, gpus_per_node=gpus_per_node)
    cost = meter.summary()
    record = {
        "kind": "summary",
        "nodes": len(trace.nodes),
        "events": stats.events,
        "preemptions_with_notice": stats.removes_with_notice,
        "preemptions_silent": stats.removes_silent,
        "spot_gpu_hours": round(cost.gpu_hours["spot"], 4),
        "spot_usd": round(cost.dollars["spot"], 2),
        "ondemand_equivalent_usd": round(
            cost.gpu_hours["spot"] * prices.ondemand_usd_per_gpu_hour, 2
        ),
        "max_lag_s": round(stats.max_lag_s, 4),
        "prices": prices.name,
    }
    if json_mode:
        print(json.dumps(record), flush=True)
        return
    from rich.console import Console

    console = Console()
    console.print(
        f"[bold]{record['nodes']} nodes[/bold], preemptions: "
        f"{stats.removes_with_notice} with notice, {stats.removes_silent} silent; "
        f"max lag {stats.max_lag_s * 1000:.1f} ms"
    )
    console.print(f"trace: {trace.source}")
    console.print(cost_table({"spot pool": cost}, title="Spot cost (trace time)"))
