"""The trainer's side of the reward workers: who is up (roster, registry) and the processes.

Map (everything here runs on the trainer's event loop, in rank 0's process)::

    RewardPool.start()
      ├─ spawn "rewards" (RewardRegistry) ◄── register.ask(worker_id, refs, pid) ── worker
      ├─ one task per process: launch `python -m spotlight.nodes.reward_worker`
      │    (own session, output to RUN_DIR/rewards.log), await its exit ──► roster.exited
      └─ peer watcher task: runtime.peer_events() "peer_lost" ──► roster.lost(address)
    RewardRoster (plain object, loop thread only): pending (launched, not registered yet),
      workers (registered, alive); ``wait_ready(within_s)`` waits until nothing is pending
      or the time is up; the client (reward_client.py) reads ``actors()`` per call.
    RewardPool.close(): SIGINT every live worker, wait ``exit_timeout_s``, SIGKILL by PID
      whatever is left, reap; then the tasks are cancelled. Bounded, shielded by the caller.

Why a registry actor, not ready files: registration is an event (no polling), carries the
refs and the PID, and works the same for workers launched elsewhere (a reward host).
Why loss comes from two places: a SIGKILLed worker is seen by the peer watcher (heartbeats)
and by its process task (exit status); either removes it, both are idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spotlight.runtime import Actor, ActorRef, Runtime, endpoint
from spotlight.runtime.config import TOKEN_ENV
from spotlight.runtime.errors import SpotlightError

__all__ = ["RewardPool", "RewardPoolConfig", "RewardRegistry", "RewardRoster"]

log = logging.getLogger("spotlight.actors.rewards.pool")


@dataclass
class _Worker:
    worker_id: str
    address: str
    refs: list[ActorRef]
    pid: int | None


@dataclass
class RewardRoster:
    """Which reward workers are up. Loop thread only (no locks needed)."""

    pending: set[str] = field(default_factory=set)
    """Launched by this run and neither registered nor exited yet."""
    workers: dict[str, _Worker] = field(default_factory=dict)
    registrations: int = 0
    lost: int = 0
    """Registered workers that went away (peer lost or process exit) before close."""
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def register(self, worker_id: str, refs: list[ActorRef], pid: int | None) -> None:
        if not refs:
            raise ValueError(f"reward worker {worker_id!r} registered no actors")
        address = refs[0].address
        self.pending.discard(worker_id)
        self.workers[worker_id] = _Worker(worker_id, address, list(refs), pid)
        self.registrations += 1
        self._notify()

    def remove(self, worker_id: str, why: str) -> None:
        self.pending.discard(worker_id)
        if self.workers.pop(worker_id, None) is not None:
            self.lost += 1
            log.warning("reward worker %s removed (%s)", worker_id, why)
        self._notify()

    def lost_address(self, address: str, why: str) -> None:
        for wid in [w.worker_id for w in self.workers.values() if w.address == address]:
            self.remove(wid, why)

    def actors(self) -> list[tuple[str, ActorRef]]:
        """(worker id, actor ref) of every registered actor, workers interleaved."""
        lists = [[(w.worker_id, r) for r in w.refs] for w in self.workers.values()]
        out: list[tuple[str, ActorRef]] = []
        for i in range(max((len(x) for x in lists), default=0)):
            out.extend(x[i] for x in lists if i < len(x))
        return out

    async def wait_ready(self, within_s: float) -> None:
        """Until nothing launched is still pending, or ``within_s`` seconds have passed."""
        deadline = time.monotonic() + within_s
        while self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)


REGISTRY_NAME = "rewards"
"""The registry actor's name on the trainer's runtime (reward workers register there)."""


class RewardRegistry(Actor):
    """Where reward workers announce themselves (``register``); fills a :class:`RewardRoster`."""

    def __init__(self, roster: RewardRoster) -> None:
        self.roster = roster

    @endpoint
    async def register(self, worker_id: str, refs: list[ActorRef], pid: int | None) -> bool:
        if not isinstance(worker_id, str) or not isinstance(refs, list):
            raise ValueError("register(worker_id: str, refs: list[ActorRef], pid)")
        self.roster.register(worker_id, refs, pid)
        log.info("reward worker %s registered %d actor(s)", worker_id, len(refs))
        return True

    @endpoint
    async def statistics(self) -> dict[str, Any]:
        r = self.roster
        return {
            "workers": sorted(r.workers),
            "pending": sorted(r.pending),
            "registrations": r.registrations,
            "lost": r.lost,
        }


@dataclass(frozen=True, kw_only=True)
class RewardPoolConfig:
    """The reward workers ``spotlight run`` starts (``rewards`` section of the config)."""

    workers: int
    actors_per_worker: int = 1
    reward: str = "geneval"
    start_timeout_s: float = 60.0
    """How long a reward call waits for launched workers to register (then: in-process)."""
    exit_timeout_s: float = 5.0
    """Grace after SIGINT at close before SIGKILL."""
    heartbeat_s: float = 0.5


class RewardPool:
    """Launches, tracks (by PID) and stops the reward worker processes; see the module map."""

    def __init__(self, runtime: Runtime, config: RewardPoolConfig, log_path: Path) -> None:
        if config.workers < 1:
            raise ValueError(f"a RewardPool needs workers >= 1, got {config.workers}")
        self.runtime = runtime
        self.config = config
        self.log_path = log_path
        self.roster = RewardRoster()
        self.registry: ActorRef | None = None
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.exit_codes: dict[str, int] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False
        self._ready_by = 0.0

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    async def start(self) -> None:
        """Spawn the registry and launch the workers; returns without waiting for them."""
        self.registry = await self.runtime.spawn(
            RewardRegistry, roster=self.roster, name=REGISTRY_NAME
        )
        self._tasks.append(
            self.runtime.create_task(self._watch_peers(), name="reward peer watcher")
        )
        env = dict(os.environ)
        token = self.runtime.config.cluster_token
        if token:
            env[TOKEN_ENV] = token
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            for i in range(self.config.workers):
                wid = f"r{i}"
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "spotlight.nodes.reward_worker",
                    "--registry",
                    self.runtime.address,
                    "--worker-id",
                    wid,
                    "--reward",
                    self.config.reward,
                    "--actors",
                    str(self.config.actors_per_worker),
                    "--heartbeat-s",
                    f"{self.config.heartbeat_s:g}",
                    "--register-timeout-s",
                    f"{self.config.start_timeout_s:g}",
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env=env,
                    start_new_session=True,  # our Ctrl-C is not theirs; we stop them by PID
                )
                self.procs[wid] = proc
                self.roster.pending.add(wid)
                self._tasks.append(
                    self.runtime.create_task(self._reap(wid, proc), name=f"reward worker {wid}")
                )
        self._ready_by = time.monotonic() + self.config.start_timeout_s

    def ready_within_s(self) -> float:
        """Seconds a caller may still wait for launched workers to register."""
        return max(0.0, self._ready_by - time.monotonic())

    async def _reap(self, wid: str, proc: asyncio.subprocess.Process) -> None:
        rc = await proc.wait()
        self.exit_codes[wid] = rc
        if not self._closing:
            log.warning("reward worker %s (pid %d) exited with %d", wid, proc.pid, rc)
            self.roster.remove(wid, f"process exited with {rc}")

    async def _watch_peers(self) -> None:
        async for event in self.runtime.peer_events():
            if event.kind == "peer_lost" and not self._closing:
                self.roster.lost_address(event.address, f"peer lost: {event.reason}")

    async def statistics(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """Registry counts, and each live actor's ``RewardActorStats`` (asked, bounded)."""
        from spotlight.actors.monitor.metrics import plain

        actors: dict[str, Any] = {}
        for wid, ref in self.roster.actors():
            key = f"{wid}/{ref.name}"
            try:
                actors[key] = plain(await ref.statistics.ask(timeout=timeout_s))
            except (SpotlightError, TimeoutError) as exc:
                actors[key] = {"error": repr(exc)}
        return {
            "workers": self.config.workers,
            "actors_per_worker": self.config.actors_per_worker,
            "registered": sorted(self.roster.workers),
            "registrations": self.roster.registrations,
            "lost": self.roster.lost,
            "pids": self.pids,
            "actors": actors,
        }

    async def close(self) -> None:
        """Stop every worker: SIGINT, ``exit_timeout_s`` of grace, then SIGKILL; reap all."""
        self._closing = True
        live = [p for p in self.procs.values() if p.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(p.wait() for p in live)), self.config.exit_timeout_s
            )
        for proc in live:
            if proc.returncode is None:
                log.warning("reward worker pid %d ignored SIGINT; killing it", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)), 5.0)
        for task in self._tasks:
            task.cancel("reward pool closed")
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
