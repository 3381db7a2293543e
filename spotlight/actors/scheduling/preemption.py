"""Preemption handler: turns a notice into a clean, deadline-bounded exit of a worker.

Map::

    notice sources ──► NoticeWatcher (its own task) ──► _on_notice(notice)
                                                          │ 1. worker.drain.ask(deadline)
                                                          │    stop pulling; finish the running
                                                          │    step if it fits, else give it up;
                                                          │    release(snapshots) to the scheduler
                                                          │ 2. coordinator.<endpoint>.tell(report)
                                                          ▼ 3. on_exit(report): the process leaves

What it waits on: the notice (sources poll or wait on a signal); then one ``drain`` ask
bounded by the deadline; the coordinator ``tell`` is bounded by the margin. Nothing here
blocks the loop. Without a notice (kill -9) nothing runs: the scheduler's lease expiry
re-queues the work from its last committed snapshot.

A notice with no deadline (a source that cannot tell) uses ``default_lead_s``.

Shutdown: ``on_stop`` closes the watcher (cancelling a drain in progress).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from spotlight.actors.scheduling.work import DrainReport
from spotlight.runtime import Actor, ActorRef, endpoint
from spotlight.runtime.codec import register_wire_type
from spotlight.runtime.errors import SpotlightError
from spotlight.runtime.notice import NoticeSource, NoticeWatcher, PreemptionNotice

__all__ = ["PreemptionHandler", "PreemptionReport"]

log = logging.getLogger("spotlight.actors.scheduling.preemption")


@register_wire_type(name="spotlight.PreemptionReport")
@dataclass(frozen=True, kw_only=True)
class PreemptionReport:
    """Told to the coordinator (and handed to ``on_exit``) when a worker leaves on a notice."""

    worker_id: str
    source: str
    received_at: float
    deadline: float
    drain: DrainReport | None
    """None when the drain itself failed (lease expiry then recovers the work)."""
    finished_at: float
    """``time.time()`` when the handler was done; < ``deadline`` for a clean exit."""


class PreemptionHandler(Actor):
    """Watches ``sources``; on the first notice drains ``worker`` and reports."""

    def __init__(
        self,
        *,
        worker: ActorRef,
        worker_id: str,
        sources: Sequence[NoticeSource],
        coordinator: ActorRef | None = None,
        coordinator_endpoint: str = "worker_preempted",
        default_lead_s: float = 30.0,
        on_exit: Callable[[PreemptionReport], None] | None = None,
    ) -> None:
        if not default_lead_s >= 0:
            raise ValueError(f"default_lead_s must be >= 0 seconds, got {default_lead_s}")
        if not coordinator_endpoint.isidentifier():
            raise ValueError(f"coordinator_endpoint must be a name, got {coordinator_endpoint!r}")
        self.worker = worker
        self.worker_id = worker_id
        self.coordinator = coordinator
        self.coordinator_endpoint = coordinator_endpoint
        self.default_lead_s = default_lead_s
        self._on_exit = on_exit
        self._watcher = NoticeWatcher(sources, self._on_notice)
        self.report: PreemptionReport | None = None

    async def on_start(self) -> None:
        self._watcher.start()

    async def on_stop(self) -> None:
        await self._watcher.close()

    @endpoint
    async def statistics(self) -> dict[str, object]:
        st = self._watcher.statistics()
        return {"running": st.running, "notice": st.notice is not None, "report": self.report}

    async def _on_notice(self, notice: PreemptionNotice) -> None:
        deadline = notice.deadline
        if deadline is None:
            deadline = notice.received_at + self.default_lead_s
        log.warning(
            "preemption notice (%s): %s; %.2f s left",
            notice.source,
            notice.detail,
            deadline - time.time(),
        )
        drain: DrainReport | None
        try:
            drain = await self.worker.drain.ask(deadline, timeout=max(0.1, deadline - time.time()))
        except (SpotlightError, TimeoutError) as exc:
            log.error("drain of %s failed: %r", self.worker_id, exc)
            drain = None
        report = PreemptionReport(
            worker_id=self.worker_id,
            source=notice.source,
            received_at=notice.received_at,
            deadline=deadline,
            drain=drain,
            finished_at=time.time(),
        )
        self.report = report
        if self.coordinator is not None:
            try:
                caller = getattr(self.coordinator, self.coordinator_endpoint)
                await caller.tell(report, timeout=max(0.05, deadline - time.time()))
            except (SpotlightError, TimeoutError) as exc:
                log.warning("could not tell the coordinator about %s: %r", self.worker_id, exc)
        log.warning("worker %s drained: %s", self.worker_id, drain)
        if self._on_exit is not None:
            self._on_exit(report)
