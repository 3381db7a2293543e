"""`spotlight ...`: the command-line entry point.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; the module is imported only when its subcommand is chosen, so
``spotlight --help`` and ``spotlight version`` start instantly instead of paying for torch
and diffusers imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple


class Command(NamedTuple):
    module: str
    help: str


COMMANDS: dict[str, Command] = {
    "run": Command(
        "spotlight.commands.run",
        "run the whole system: trainer, planner, explorers on a simulated spot pool, monitor",
    ),
    "config": Command(
        "spotlight.commands.config",
        "the configuration: show it resolved with every key's doc, write its JSON Schema or "
        "its reference page",
    ),
    "demo": Command(
        "spotlight.commands.demo",
        "a live demo of the actor runtime: tensors around a ring of worker processes",
    ),
    "pretrain": Command(
        "spotlight.commands.pretrain", "pretrain the tiny base model by flow matching (cached)"
    ),
    "train": Command("spotlight.commands.train", "Flow-GRPO training (--local: one process)"),
    "cluster": Command(
        "spotlight.commands.cluster",
        "spot-cluster tools: replay a trace against node processes; project time and cost; "
        "write the cluster key",
    ),
    "monitor": Command(
        "spotlight.commands.monitor",
        "attach to a running cluster's monitor: live view, or JSON lines when piped",
    ),
    "plot": Command("spotlight.commands.plot", "draw a run's metrics.jsonl as PNG curves"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spotlight",
        description="RL post-training of diffusion transformers on spot GPUs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the installed version and exit")
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.help, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    known, _ = top.parse_known_args(argv[:1])
    if known.command is None:
        top.print_help()
        return 0 if not argv else 2
    if known.command == "version":
        from spotlight import __version__

        print(f"spotlight {__version__}")
        return 0
    command = COMMANDS[known.command]
    parser = argparse.ArgumentParser(prog=f"spotlight {known.command}", description=command.help)
    module = importlib.import_module(command.module)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
