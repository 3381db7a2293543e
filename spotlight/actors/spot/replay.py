"""Play a spot trace in (scaled) real time against something that starts and stops nodes.

Data flow (one asyncio task, no threads)::

    SpotTrace ──(scaled by time_scale)──> TraceReplayer.run()
        for each event: await sleep(until start + t/scale)   <- injectable clock/sleep
            add     -> launcher.add(node)
            notice  -> launcher.notice(node, deadline)          deadline = when it is removed
            remove  -> launcher.remove(node, silent=no notice before it)
        on_event(ReplayEvent) after each call (the CLI prints it; tests record it)

The replayer waits on nothing but its clock and the launcher's awaits; cancelling
``run()`` stops between events and leaves the launcher to its owner (who closes it).

:class:`ProcessNodeLauncher` is the launcher for one machine: one subprocess per node
from a command template (``{node}`` substituted, ``SPOTLIGHT_NODE_ID`` set). Each child
runs in its own session (process group = its PID), so Ctrl-C reaches only us, and a
signal to the group also reaches anything the child started (torchrun's workers).

    notice  -> SIGTERM to the group (the node's preemption handler catches it)
    remove  -> SIGKILL to the group if it is still running, then reap it by PID
               (the replayer calls remove at the notice's deadline, which enforces it;
               another caller of ``notice`` must call ``remove`` at the deadline too)
    close() -> SIGKILL + reap every group still running (also on cancel / Ctrl-C)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from spotlight.actors.spot.trace import SpotTrace

__all__ = [
    "NodeLauncher",
    "NodeProcess",
    "ProcessNodeLauncher",
    "RecordingLauncher",
    "ReplayEvent",
    "ReplayStats",
    "TraceReplayer",
]

REAP_TIMEOUT_S = 10.0  # after SIGKILL a process is gone within ms; this only bounds a stuck wait


class NodeLauncher(Protocol):
    """What a trace replayer drives. Deadlines are on the replayer's clock."""

    async def add(self, node: str) -> None: ...

    async def notice(self, node: str, deadline: float) -> None: ...

    async def remove(self, node: str, silent: bool) -> None: ...


@dataclass(frozen=True)
class ReplayEvent:
    """One event as played: trace time, when it was played on the replayer's clock."""

    trace_t_s: float
    """Time in the (unscaled) trace."""
    played_at: float
    """Seconds since replay start, on the replayer's clock (scaled time)."""
    event: Literal["add", "notice", "remove"]
    node: str
    silent: bool = False
    """For a remove: True when no notice preceded it."""
    deadline_in_s: float | None = None
    """For a notice: seconds (scaled) until the announced removal."""

    def to_dict(self) -> dict[str, object]:
        return {
            "trace_t_s": round(self.trace_t_s, 3),
            "played_at": round(self.played_at, 3),
            "event": self.event,
            "node": self.node,
            "silent": self.silent,
            "deadline_in_s": None if self.deadline_in_s is None else round(self.deadline_in_s, 3),
        }


@dataclass
class ReplayStats:
    """Counters of one replay (``statistics()``)."""

    events: int = 0
    adds: int = 0
    notices: int = 0
    removes_with_notice: int = 0
    removes_silent: int = 0
    max_lag_s: float = 0.0
    """Largest delay between an event's due time and when it was played (clock seconds)."""


class TraceReplayer:
    """Plays ``trace`` against ``launcher``; times are divided by ``time_scale``.

    ``clock`` and ``sleep`` are injectable so tests run instantly on a fake clock.
    """

    def __init__(
        self,
        trace: SpotTrace,
        launcher: NodeLauncher,
        *,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        on_event: Callable[[ReplayEvent], None] | None = None,
    ) -> None:
        self._trace = trace
        self._scaled = trace.scaled(time_scale)
        self._launcher = launcher
        self._clock = clock
        self._sleep = sleep
        self._on_event = on_event
        self._stats = ReplayStats()
        self.time_scale = time_scale

    def statistics(self) -> ReplayStats:
        return self._stats

    async def run(self) -> ReplayStats:
        """Play every event in order; returns the counters. Cancellable between events."""
        start = self._clock()
        noticed: set[str] = set()
        for i, (orig, ev) in enumerate(zip(self._trace.events, self._scaled.events, strict=True)):
            due = start + ev.t_s
            delay = due - self._clock()
            if delay > 0:
                await self._sleep(delay)
            now = self._clock()
            self._stats.max_lag_s = max(self._stats.max_lag_s, now - due)
            silent = False
            deadline_in: float | None = None
            if ev.event == "add":
                noticed.discard(ev.node)
                await self._launcher.add(ev.node)
                self._stats.adds += 1
            elif ev.event == "notice":
                removal = self._scaled.removal_time(i)
                assert removal is not None  # validated: every notice has a removal
                noticed.add(ev.node)
                deadline_in = start + removal - now
                await self._launcher.notice(ev.node, start + removal)
                self._stats.notices += 1
            else:
                silent = ev.node not in noticed
                noticed.discard(ev.node)
                await self._launcher.remove(ev.node, silent)
                if silent:
                    self._stats.removes_silent += 1
                else:
                    self._stats.removes_with_notice += 1
            self._stats.events += 1
            if self._on_event is not None:
                self._on_event(
                    ReplayEvent(orig.t_s, now - start, ev.event, ev.node, silent, deadline_in)
                )
        return self._stats


@dataclass
class RecordingLauncher:
    """A launcher that only records calls (dry runs and tests)."""

    calls: list[tuple[str, str, object]] = field(default_factory=list)

    async def add(self, node: str) -> None:
        self.calls.append(("add", node, None))

    async def notice(self, node: str, deadline: float) -> None:
        self.calls.append(("notice", node, deadline))

    async def remove(self, node: str, silent: bool) -> None:
        self.calls.append(("remove", node, silent))


@dataclass
class NodeProcess:
    """One node's subprocess and how it ended."""

    node: str
    pid: int
    popen: subprocess.Popen[bytes]
    started_at: float
    terminated: bool = False
    """SIGTERM sent (notice)."""
    killed: bool = False
    """SIGKILL sent (removal while running, or close())."""
    returncode: int | None = None

    @property
    def running(self) -> bool:
        return self.returncode is None and self.popen.poll() is None


class ProcessNodeLauncher:
    """Starts one subprocess per node from ``command`` (a template with ``{node}``).

    The command is split with :func:`shlex.split` and run without a shell; wrap it in
    ``sh -c '...'`` for redirections. Use as ``async with``: leaving the block (normally,
    on error or on cancel) kills and reaps every child by PID.
    """

    def __init__(
        self,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        on_reaped: Callable[[int], object] | None = None,
    ) -> None:
        """``on_reaped(pid)`` runs after a node process is killed and reaped: what a killed
        node cannot clean up itself (the on-demand node passes the removal of the weight
        snapshots it published to /dev/shm for its SP members, weights/share.py)."""
        if not command.strip():
            raise ValueError("node command is empty; give e.g. --command 'python node.py {node}'")
        self._template = command
        self._env = dict(os.environ if env is None else env)
        self._stdout = stdout
        self._stderr = stderr
        self._on_reaped = on_reaped
        self.procs: dict[str, NodeProcess] = {}
        self.history: list[NodeProcess] = []

    def argv_for(self, node: str) -> list[str]:
        return [part.replace("{node}", node) for part in shlex.split(self._template)]

    async def add(self, node: str) -> None:
        old = self.procs.get(node)
        if old is not None and old.running:
            raise RuntimeError(f"node {node!r} is already running as PID {old.pid}")
        if old is not None:  # exited on its own (e.g. after a notice): reap it first
            await self._kill_and_reap(old)
        env = self._env | {"SPOTLIGHT_NODE_ID": node}
        popen = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once; we never block on it
            self.argv_for(node),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            start_new_session=True,  # own process group: Ctrl-C reaches only us
        )
        proc = NodeProcess(node, popen.pid, popen, time.monotonic())
        self.procs[node] = proc
        self.history.append(proc)

    async def notice(self, node: str, deadline: float) -> None:
        proc = self.procs.get(node)
        if proc is not None and proc.running:
            self._signal(proc, signal.SIGTERM)
            proc.terminated = True

    async def remove(self, node: str, silent: bool) -> None:
        proc = self.procs.pop(node, None)
        if proc is not None:
            await self._kill_and_reap(proc)

    async def close(self) -> None:
        """Kill and reap every child still known. Safe to call twice."""
        procs, self.procs = list(self.procs.values()), {}
        for proc in procs:
            await self._kill_and_reap(proc)

    async def __aenter__(self) -> ProcessNodeLauncher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        # shield: a cancelled owner must still reap its children
        await asyncio.shield(self.close())

    def live_pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.running]

    # ---- internals ------------------------------------------------------------------------
    def _signal(self, proc: NodeProcess, sig: int) -> None:
        if sys.platform == "win32":  # pragma: no cover - no process groups there
            proc.popen.send_signal(sig)
            return
        with contextlib.suppress(ProcessLookupError):  # the group is already gone
            os.killpg(proc.pid, sig)

    async def _kill_and_reap(self, proc: NodeProcess) -> None:
        if proc.popen.poll() is None:
            self._signal(proc, signal.SIGKILL)
            proc.killed = True
        else:
            # the leader exited (e.g. after SIGTERM); grandchildren may still hold the group
            self._signal(proc, signal.SIGKILL)
        proc.returncode = await asyncio.to_thread(proc.popen.wait, REAP_TIMEOUT_S)
        # A killed node cannot clean up the weight snapshot it published to /dev/shm for its
        # SP members (exploration/sp_backend.py): the owner's hook removes it by the node's
        # PID, or each preemption of an SP node would leak one copy of the weights into RAM.
        if self._on_reaped is not None:
            self._on_reaped(proc.pid)
