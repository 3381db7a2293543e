"""A reward worker process: hosts RewardActors and registers them with the run's registry.

    python -m spotlight.nodes.reward_worker --registry tcp://H:P --worker-id r0 \\
        [--reward geneval] [--actors 1] [--ready-file F]

``spotlight run`` starts ``rewards.workers`` of these (spotlight/actors/rewards/pool.py) and
kills them by PID at the end. Map of one process::

    main ── spawn "reward0".."reward{K-1}" (RewardActor: scores in a worker thread each)
      ├─ register.ask(worker_id, refs, pid) ──► "rewards" registry on the trainer's runtime
      │     (retried until --register-timeout-s: the trainer may still be starting)
      ├─ write --ready-file (runtime address), then wait for one of:
      │    * SIGINT / SIGTERM: exit 0 (the run is over, or the pool closes)
      │    * the registry's runtime lost: re-register for --registry-lost-s, else exit 0
      ▼    (a trainer killed with SIGKILL therefore leaves no reward worker behind for long)
    runtime shutdown (bounded), os._exit(code): a reward call left in its thread cannot
    hold the process.

Every wait is bounded: registration by ``--register-timeout-s`` (each ask by
``--call-timeout-s``), shutdown by ``--call-timeout-s``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from typing import Any

from spotlight.actors.rewards.actor import RewardActor
from spotlight.actors.rewards.pool import REGISTRY_NAME
from spotlight.nodes.process import add_join_arguments, write_atomic
from spotlight.runtime import ActorRef, Runtime, RuntimeConfig
from spotlight.runtime.config import TOKEN_ENV
from spotlight.runtime.errors import SpotlightError
from spotlight.runtime.peers import PeerEvents

__all__ = ["build_parser", "main"]

log = logging.getLogger("spotlight.nodes.reward_worker")


async def _register(
    registry: ActorRef, args: argparse.Namespace, refs: list[ActorRef], *, within_s: float
) -> bool:
    """``register`` retried until ``within_s`` runs out; False if it never got through."""
    give_up = time.monotonic() + within_s
    while True:
        left = give_up - time.monotonic()
        try:
            await registry.register.ask(
                args.worker_id, refs, os.getpid(), timeout=max(0.1, min(left, args.call_timeout_s))
            )
            return True
        except (SpotlightError, TimeoutError) as exc:
            if time.monotonic() + 0.5 >= give_up:
                log.error("could not register with the reward registry: %r", exc)
                return False
            log.info("register failed (%r); retrying", exc)
            await asyncio.sleep(0.5)  # a retry pace, not synchronisation


async def _registry_lost(
    peers: PeerEvents, registry: ActorRef, refs: list[ActorRef], args: argparse.Namespace
) -> None:
    """Returns once the registry is lost and cannot be re-joined within the timeout."""
    async for event in peers:
        if event.kind != "peer_lost" or event.address != registry.address:
            continue
        log.warning("reward registry lost (%s); trying to re-join", event.reason)
        if not await _register(registry, args, refs, within_s=args.registry_lost_s):
            return


async def _worker_body(args: argparse.Namespace, config: RuntimeConfig) -> int:
    loop = asyncio.get_running_loop()
    leave: asyncio.Future[str] = loop.create_future()

    def on_signal(name: str) -> None:
        if not leave.done():
            leave.set_result(name)

    for signame in ("SIGINT", "SIGTERM"):
        loop.add_signal_handler(getattr(signal, signame), on_signal, signame)
    async with Runtime(config) as rt:
        peers = rt.peer_events()
        refs = [
            await rt.spawn(RewardActor, reward=args.reward, name=f"reward{i}")
            for i in range(args.actors)
        ]
        registry = rt.ref(args.registry, args.registry_name)
        if not await _register(registry, args, refs, within_s=args.register_timeout_s):
            return 1
        if args.ready_file:
            write_atomic(args.ready_file, rt.address)
        log.info("reward worker %s at %s (%d actors)", args.worker_id, rt.address, args.actors)
        watcher: asyncio.Future[Any] = asyncio.ensure_future(
            _registry_lost(peers, registry, refs, args)
        )
        waiting: set[asyncio.Future[Any]] = {leave, watcher}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        why = "registry lost" if watcher in done else leave.result()
        watcher.cancel("leaving")
        log.warning("reward worker %s leaves (%s)", args.worker_id, why)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(rt.shutdown(f"leaving: {why}"), timeout=args.call_timeout_s)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m spotlight.nodes.reward_worker",
        description="A Spotlight reward worker: RewardActors that register with the run.",
    )
    p.add_argument("--registry", required=True, help="the trainer's runtime address tcp://H:P")
    p.add_argument("--registry-name", default=REGISTRY_NAME, help="the registry actor")
    p.add_argument("--worker-id", required=True, help="this worker's id (unique in the run)")
    p.add_argument("--reward", default="geneval", help="reward name (build_reward)")
    p.add_argument("--actors", type=int, default=1, help="RewardActors in this process")
    add_join_arguments(p, peer="registry")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.actors < 1:
        raise SystemExit(f"--actors must be >= 1, got {args.actors}")
    for name in ("heartbeat_s", "call_timeout_s", "register_timeout_s"):
        if not getattr(args, name) > 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if not args.registry_lost_s >= 0:
        raise SystemExit(f"--registry-lost-s must be >= 0, got {args.registry_lost_s}")
    logging.basicConfig(
        level=args.log_level,
        format=f"%(asctime)s reward {args.worker_id} %(levelname)s %(message)s",
    )
    config = RuntimeConfig(
        cluster_token=os.environ.get(TOKEN_ENV) or None,
        heartbeat_s=args.heartbeat_s,
        missed_heartbeats=4,
        ask_timeout_s=args.call_timeout_s,
        stop_timeout_s=1.0,
    )
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        code = runner.run(_worker_body(args, config))
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
