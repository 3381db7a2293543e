"""The checkpoint/restart baseline's spot pool (TorchElastic-style), for `spotlight run`.

Why this exists: the headline benchmark compares Spotlight's elastic spot pool (a noticed
node drains cleanly, the others never notice) with what users run today on spot GPUs:
TorchElastic. There a membership change of any node (a preemption notice's SIGTERM takes
the node's agent down; a silent loss breaks the rendezvous) stops *every* worker of the
job, which then re-forms from its last checkpoint: each process restarts, reloads the
weights, and the work it had in flight is lost and done again.

:class:`RestartPoolLauncher` is a :class:`~spotlight.actors.spot.replay.ProcessNodeLauncher`
(one process group per node, signals by process group, reaped by PID) whose trace events
do exactly that::

    add(n)            start n (as the elastic pool does)
    notice(n)         SIGKILL n now (no clean drain: TorchElastic has no notice handling),
                      then restart every other running node
    remove(n, silent) if n is still running (a silent loss): SIGKILL it, then restart
                      every other running node; if it already died at its notice: reap
    restart           SIGKILL + reap every running node, *then* start each again (the
                      whole group stops before it re-forms); a restarted node joins the
                      coordinator anew and reloads the weights from it

A restarted process is a new worker: ``{node}`` in its command becomes ``<node>.r<k>`` for
its k-th restart (the launcher, the replayer and ``SPOTLIGHT_NODE_ID`` keep the trace's
name). Under the old name the new process would renew the dead one's leases in the
scheduler (renewal is per worker id), so its in-flight exploration would never expire and
be re-done; with a new name it expires and is re-queued, as the baseline should behave.

The replayer's clock and billing are unchanged (the trace's nodes, busy or not), so the
baseline pays for the same spot GPU-hours and loses the restarts' time and work.
:meth:`statistics` counts restarts, processes relaunched and nodes killed early.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from spotlight.actors.spot.replay import NodeProcess, ProcessNodeLauncher

__all__ = ["RestartPoolLauncher", "RestartStats"]


@dataclass
class RestartStats:
    """Counters of a restart pool (``statistics()``)."""

    restarts: int = 0
    """Pool-wide restarts: one per notice or silent loss of a running node."""
    relaunched: int = 0
    """Node processes killed and started again by restarts (survivors of a loss)."""
    killed_at_notice: int = 0
    """Noticed nodes killed at their notice instead of draining."""
    killed_silent: int = 0
    """Nodes removed without notice while running."""
    restart_log: list[dict[str, object]] = field(default_factory=list)
    """One record per restart: ``t`` (monotonic), ``cause`` (notice|silent), ``node``,
    ``relaunched`` (node names)."""


class RestartPoolLauncher(ProcessNodeLauncher):
    """A spot pool that restarts every node when one is noticed or lost; see the module."""

    def __init__(
        self,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        on_reaped: Callable[[int], object] | None = None,
    ) -> None:
        super().__init__(command, env=env, stdout=stdout, stderr=stderr, on_reaped=on_reaped)
        self._stats = RestartStats()
        self._incarnation: dict[str, int] = {}

    def argv_for(self, node: str) -> list[str]:
        """The command of ``node``'s current incarnation (``<node>.r<k>`` after k restarts)."""
        k = self._incarnation.get(node, 0)
        ident = node if k == 0 else f"{node}.r{k}"
        return super().argv_for(ident)

    def statistics(self) -> RestartStats:
        return self._stats

    async def notice(self, node: str, deadline: float) -> None:
        proc = self.procs.get(node)
        if proc is None or not proc.running:
            return
        proc.terminated = True  # it was told to go; it dies at once instead of draining
        await self._kill_and_reap(proc)
        self._stats.killed_at_notice += 1
        await self._restart_all(cause="notice", node=node)

    async def remove(self, node: str, silent: bool) -> None:
        proc = self.procs.pop(node, None)
        if proc is None:
            return
        was_running = proc.running
        await self._kill_and_reap(proc)
        if was_running:  # a loss the pool had not reacted to yet
            self._stats.killed_silent += 1
            await self._restart_all(cause="silent", node=node)

    async def _restart_all(self, *, cause: str, node: str) -> None:
        """Stop every other running node, then start each again (the group re-forms)."""
        others: list[NodeProcess] = [
            p for name, p in self.procs.items() if name != node and p.running
        ]
        for proc in others:
            await self._kill_and_reap(proc)
        names = [p.node for p in others]
        for name in names:
            self._incarnation[name] = self._incarnation.get(name, 0) + 1
            await self.add(name)  # the dead incarnation is reaped, a new one starts
        self._stats.restarts += 1
        self._stats.relaunched += len(names)
        self._stats.restart_log.append(
            {"t": time.monotonic(), "cause": cause, "node": node, "relaunched": names}
        )
