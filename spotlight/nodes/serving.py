"""How `spotlight run` serves a real cluster: where it listens, the files scripts wait on,
and the bill of an external spot pool.

Why a module of its own: these are the only parts of `spotlight run` that the launchers
(``scripts/launch_ondemand.sh``, ``scripts/launch_spot.sh``) depend on, and each is a small
piece a test can call without starting the system.

* ``--listen HOST:PORT`` -> :func:`runtime_config`: the coordinator's runtime binds there.
  Loopback needs nothing; any other interface needs the shared cluster token in
  ``$SPOTLIGHT_CLUSTER_TOKEN`` (the runtime refuses to bind without it, and peers must
  present the same token: spot nodes read the same variable). Binding a wildcard
  (``0.0.0.0``/``::``) advertises this host's name unless ``--advertise-host`` says otherwise.
* ``--ready-file F`` -> :func:`~spotlight.nodes.process.write_atomic`: the runtime address, written once the
  coordinator serves (a rename, so a reader never sees half an address).
* ``--stop-file F`` -> :func:`watch_stop_file`: the run stops as after a first Ctrl-C once F
  exists (a script's way to end a run cleanly that does not depend on how a launcher
  forwards signals).
* ``spot.pool: external`` -> :func:`external_pool_view`: nodes joined from outside, so there
  is no trace; the coordinator's membership record becomes the trace the report bills
  (wall-clock seconds) and its tally gives the preemptions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spotlight.runtime.config import TOKEN_ENV

if TYPE_CHECKING:
    from spotlight.actors.spot.replay import ReplayStats
    from spotlight.actors.spot.trace import SpotTrace
    from spotlight.runtime import RuntimeConfig

__all__ = [
    "Serving",
    "add_cluster_arguments",
    "external_pool_view",
    "parse_listen",
    "runtime_config",
    "watch_stop_file",
]

"""Environment variable holding the cluster token (the same one spot nodes and
``spotlight monitor`` read; not a flag, which would show in ``ps``)."""

_WILDCARDS = ("0.0.0.0", "::", "")
STOP_FILE_POLL_S = 0.5


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """The `spotlight run` options a cluster (and its launch scripts) needs."""
    cluster = parser.add_argument_group(
        "cluster (scripts/launch_ondemand.sh runs this under torchrun: rank 0 is the "
        "coordinator, ranks > 0 are data-parallel trainer followers)"
    )
    cluster.add_argument(
        "--spot-pool",
        choices=("trace", "external", "none"),
        help="spot.pool: trace (node processes started/stopped by spot.trace), external "
        "(nodes join from outside with scripts/launch_spot.sh), none (= --no-spot)",
    )
    cluster.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="where the coordinator serves (default 127.0.0.1, a free port); beyond loopback "
        f"the shared secret in ${TOKEN_ENV} is required, and spot nodes must have it too",
    )
    cluster.add_argument(
        "--advertise-host",
        metavar="HOST",
        help="host name others dial (default: the --listen host; this host's name for 0.0.0.0)",
    )
    cluster.add_argument(
        "--ready-file",
        metavar="FILE",
        help="once serving, write the coordinator's address (tcp://H:P) to FILE atomically "
        "(launch_spot.sh --ready-file reads it); removed at exit",
    )
    cluster.add_argument(
        "--stop-file",
        metavar="FILE",
        help="stop as after a first Ctrl-C (after the iteration, with a checkpoint) once FILE "
        "exists",
    )


@dataclass(frozen=True, kw_only=True)
class Serving:
    """Where the coordinator serves and the files scripts use."""

    runtime: RuntimeConfig
    ready_file: Path | None = None
    stop_file: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Serving:
        """From the options of :func:`add_cluster_arguments`; ValueError if they are bad."""
        return cls(
            runtime=runtime_config(args.listen, args.advertise_host),
            ready_file=Path(args.ready_file) if args.ready_file else None,
            stop_file=Path(args.stop_file) if args.stop_file else None,
        )


async def watch_stop_file(path: Path, stop: asyncio.Event) -> None:
    """Set ``stop`` once ``path`` exists: a file has no event to wait on, so it is polled."""
    while True:
        if await asyncio.to_thread(path.exists):
            break
        await asyncio.sleep(STOP_FILE_POLL_S)
    print(f"spotlight run: {path} exists; stopping after this iteration", file=sys.stderr)
    stop.set()


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6; port 0 = a free one) as (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(
            f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:0 (a free port), "
            "0.0.0.0:29600 or [::1]:29600"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"--listen {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--listen {text!r}: port {port} is not in 0..65535 (0 = a free one)")
    return host, port


def runtime_config(listen: str | None, advertise_host: str | None) -> RuntimeConfig:
    """The coordinator runtime's config; ValueError (naming the fix) if it cannot bind so."""
    from spotlight.runtime import RuntimeConfig

    if listen is None:
        if advertise_host is not None:
            raise ValueError("--advertise-host needs --listen (the default binds loopback)")
        return RuntimeConfig()
    host, port = parse_listen(listen)
    if advertise_host is None and host in _WILDCARDS:
        advertise_host = socket.gethostname()
    token = os.environ.get(TOKEN_ENV) or None
    try:
        return RuntimeConfig(
            bind_host=host or "0.0.0.0",
            port=port,
            advertise_host=advertise_host,
            cluster_token=token,
        )
    except ValueError as exc:
        raise ValueError(
            f"--listen {listen}: {exc} (the token is read from ${TOKEN_ENV})"
        ) from None


def external_pool_view(
    coordinator: dict[str, Any] | None, *, t0_wall: float, end_wall: float
) -> tuple[SpotTrace | None, ReplayStats]:
    """The external pool as the report sees a replayed one: a billing trace and counts.

    ``coordinator`` is the coordinator's statistics as plain data (``plain(CoordinatorStats)``);
    its times are wall clock (``time.time()``), ``t0_wall`` is the run's start. Each spot node
    becomes one lifetime (renamed ``n0, n1, ...``: node ids from outside may hold characters
    a trace forbids); a node still alive is billed to ``end_wall``. Preemptions are the
    coordinator's tally: notice = left with a drain report, silent = lost without a word.
    Voluntary leaves are neither. A node id re-registered by a new process keeps only its
    newest lifetime here (the coordinator bills both in ``stats.coordinator.cost``).
    """
    from spotlight.actors.spot.replay import ReplayStats
    from spotlight.actors.spot.trace import SpotTrace

    if not coordinator or "nodes" not in coordinator:
        return None, ReplayStats()
    rows: list[tuple[float, str, str]] = []
    spot = [n for n in coordinator["nodes"].values() if n.get("kind") == "spot"]
    spot.sort(key=lambda n: float(n["joined_at"]))
    for i, node in enumerate(spot):
        name = f"n{i}"
        start = max(0.0, float(node["joined_at"]) - t0_wall)
        rows.append((start, "add", name))
        ended = node.get("ended_at")
        if ended is not None:
            rows.append((max(start, min(float(ended), end_wall) - t0_wall), "remove", name))
    rows.sort(key=lambda r: (r[0], r[1] != "add"))  # an add before a remove at the same time
    trace = SpotTrace.from_events(rows, source="<external pool>") if rows else None
    stats = ReplayStats(
        events=len(rows),
        adds=len(spot),
        notices=int(coordinator.get("preemptions_notice", 0))
        + int(coordinator.get("notice_unclean", 0)),
        removes_with_notice=int(coordinator.get("preemptions_notice", 0)),
        removes_silent=int(coordinator.get("preemptions_silent", 0)),
    )
    return trace, stats
