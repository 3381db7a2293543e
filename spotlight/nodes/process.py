"""Plumbing every node process shares: atomic files, the flags of a process that joins a run.

A node process (``spot``, ``reward_worker``, ``pull_worker``, the on-demand node) tells its
launcher it is up by writing its runtime address to a ready file, and one that joins a run
(a spot node joins the coordinator, a reward worker the trainer's registry) takes the same
timing flags. Both written once, here.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from spotlight.runtime.config import TOKEN_ENV

__all__ = ["add_join_arguments", "unreachable_message", "write_atomic"]


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` by a rename: a reader sees nothing or all of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def add_join_arguments(parser: argparse.ArgumentParser, *, peer: str) -> None:
    """The flags of a process that joins ``peer`` (``coordinator``, ``registry``): its ready
    file, runtime heartbeat, call deadline, how long to try joining and re-joining."""
    parser.add_argument("--ready-file", default=None, help="write the runtime address here when up")
    parser.add_argument("--heartbeat-s", type=float, default=0.5, help="runtime heartbeat period")
    parser.add_argument("--call-timeout-s", type=float, default=10.0, help="deadline of each call")
    parser.add_argument(
        "--register-timeout-s", type=float, default=60.0, help="give up joining after this"
    )
    parser.add_argument(
        f"--{peer}-lost-s",
        type=float,
        default=10.0,
        help=f"after losing the {peer}, try to re-join this long, then exit",
    )
    parser.add_argument("--log-level", default="WARNING")


def unreachable_message(address: str, within_s: float, exc: BaseException) -> str:
    """What to check when the coordinator never answered (the usual causes, in order)."""
    return (
        f"the coordinator at {address} did not answer register_node within {within_s:g} s "
        f"(last error: {exc!r}). Check that `spotlight run` is up and serving there (it prints "
        "its address in its start event; --listen 0.0.0.0:PORT to serve beyond loopback), "
        "that the port is open between the machines (a Kubernetes Service, SkyPilot ports:), "
        f"and that ${TOKEN_ENV} is the coordinator's"
    )
