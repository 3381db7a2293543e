"""`spotlight monitor --attach ADDRESS`: watch a running cluster's monitor.

Starts a small runtime of its own, looks up the ``monitor`` actor at ADDRESS and
consumes its ``subscribe`` stream: a rich live view on a terminal; otherwise (or with
``--json``) one JSON line per event or iteration (``spotlight/actors/monitor/lines.py``),
or with ``--full-state`` one line per state (``MonitorState.summary()``, ~2 KB each).
Read-only: it never sends metrics, so attaching and detaching cannot disturb the run.

Exit codes: 0 after ``--updates N`` states (or Ctrl-C), 1 when the monitor cannot be
reached or goes away, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

from spotlight.runtime.config import TOKEN_ENV

if TYPE_CHECKING:
    from spotlight.actors.monitor.actor import MonitorState

__all__ = ["StateDisplay", "add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--attach",
        required=True,
        metavar="ADDRESS",
        help="runtime address hosting the monitor actor, e.g. tcp://127.0.0.1:5555 "
        "(printed by `spotlight run` at start)",
    )
    parser.add_argument(
        "--name", default="monitor", help="name of the monitor actor (default: monitor)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON line per update instead of the live view "
        "(automatic when stdout is not a terminal)",
    )
    parser.add_argument(
        "--full-state",
        action="store_true",
        help="with JSON lines: print the whole monitor state each update instead of one "
        "line per event or iteration",
    )
    parser.add_argument(
        "--every",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds between updates at most (default 0.5)",
    )
    parser.add_argument(
        "--updates",
        type=int,
        default=0,
        metavar="N",
        help="exit after N updates (default 0: until Ctrl-C or the monitor goes away)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to wait for the monitor to answer, and between updates (default 30)",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"cluster token when the cluster binds beyond loopback (default: ${TOKEN_ENV})",
    )


def _validate(args: argparse.Namespace) -> None:
    if not str(args.attach).startswith("tcp://"):
        raise ValueError(f"--attach {args.attach!r} must be a tcp://HOST:PORT runtime address")
    if not args.every >= 0:
        raise ValueError(f"--every {args.every} must be >= 0 seconds")
    if args.updates < 0:
        raise ValueError(f"--updates {args.updates} must be >= 0 (0: no limit)")
    if not args.timeout > 0:
        raise ValueError(f"--timeout {args.timeout} must be > 0 seconds")


class StateDisplay:
    """Shows monitor states: a rich live view on a terminal, JSON lines otherwise.

    Shared by ``spotlight monitor`` and any command that hosts a monitor itself
    (``spotlight run``): ``with StateDisplay(json_lines=...) as d: d.show(state)``. JSON
    lines are one per event or iteration (:class:`EventLines`); ``full_state=True`` prints
    the whole state's summary at every update instead.
    """

    def __init__(
        self, *, json_lines: bool, full_state: bool = False, file: TextIO | None = None
    ) -> None:
        from spotlight.actors.monitor.lines import EventLines

        self.json_lines = json_lines
        self.full_state = full_state
        self.file = file
        self.events = EventLines()
        self._live: Any = None

    def __enter__(self) -> StateDisplay:
        if not self.json_lines:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.file) if self.file is not None else None
            self._live = Live(console=console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def show(self, state: MonitorState) -> None:
        if self.json_lines:
            if self.full_state:
                lines = [{"event": "state", **state.summary()}]
            else:
                lines = self.events.lines(state)
            for line in lines:
                print(json.dumps(line, allow_nan=False), file=self.file or sys.stdout, flush=True)
        elif self._live is not None:
            from spotlight.actors.monitor.view import render

            self._live.update(render(state))


async def _watch(args: argparse.Namespace, json_lines: bool) -> int:
    from spotlight.actors.monitor.actor import Monitor, MonitorState
    from spotlight.runtime import Runtime, RuntimeConfig
    from spotlight.runtime.errors import SpotlightError

    token = args.token or os.environ.get(TOKEN_ENV) or None
    config = RuntimeConfig(cluster_token=token, ask_timeout_s=args.timeout)
    seen = 0
    async with Runtime(config) as rt:
        try:
            ref = await rt.lookup(args.attach, args.name, timeout=args.timeout)
            ref = rt.ref(ref.address, ref.name, cls=Monitor)  # any generation: survive restarts
            with StateDisplay(json_lines=json_lines, full_state=args.full_state) as display:
                async with ref.subscribe.stream(args.every, timeout=args.timeout) as states:
                    async for state in states:
                        if not isinstance(state, MonitorState):
                            raise SpotlightError(f"unexpected item from the monitor: {state!r:.80}")
                        seen += 1
                        display.show(state)
                        if args.updates and seen >= args.updates:
                            return 0
        except SpotlightError as exc:
            where = f"{args.attach} (actor {args.name!r})"
            what = (
                f"lost the monitor at {where} after {seen} updates"
                if seen
                else (f"cannot reach the monitor at {where}")
            )
            print(f"spotlight monitor: {what}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    print(f"spotlight monitor: the monitor ended its stream after {seen} updates", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    """Attach to the monitor; see the module docstring for exit codes."""
    import uvloop

    try:
        _validate(args)
    except ValueError as exc:
        print(f"spotlight monitor: {exc}", file=sys.stderr)
        return 2
    json_lines = bool(args.json) or not sys.stdout.isatty()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_watch(args, json_lines))
    except KeyboardInterrupt:
        return 0
