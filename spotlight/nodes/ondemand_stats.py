"""The on-demand node's scheduler statistics, relayed to the monitor (topic ``scheduler``).

The pull schedulers (``spotlight/actors/scheduling``) import nothing above the runtime, so
they cannot publish metrics themselves; this relay asks each one's ``statistics()`` every
``period_s`` and publishes a :class:`~spotlight.actors.monitor.records.SchedulerRecord`
under the scheduler actor's name (``explore_scheduler``, ``rollout_scheduler``): the same
numbers the tests assert on, in the Scheduler panel and the trackers.

One task, owned by the node's runtime; each ask is bounded by ``timeout_s``. A scheduler
that does not answer is skipped this period (logged once), never retried in a tight loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from spotlight.actors.monitor.metrics import MetricsPublisher
from spotlight.actors.monitor.records import SchedulerRecord
from spotlight.runtime.errors import SpotlightError

if TYPE_CHECKING:
    from spotlight.actors.scheduling.scheduler import SchedulerStats
    from spotlight.runtime import ActorRef, Runtime

__all__ = ["SCHEDULER_PERIOD_S", "relay_schedulers", "scheduler_record"]

log = logging.getLogger("spotlight.nodes.ondemand_stats")

SCHEDULER_PERIOD_S = 2.0
"""How often each scheduler's statistics are published (the live view redraws at 2 Hz)."""


def scheduler_record(stats: SchedulerStats) -> SchedulerRecord:
    """The monitor's record of one scheduler's ``statistics()``."""
    leases = stats.leases
    workers = set(leases.per_worker_steps) | set(leases.per_worker_completions)
    return SchedulerRecord(
        queue_depth=stats.queue_depth,
        active_leases=stats.active_leases,
        submitted=leases.submitted,
        completed=leases.completed,
        re_leases=leases.re_leases,
        expired=leases.expired,
        stale_results=leases.stale_results,
        steps_recomputed=leases.steps_recomputed,
        workers=len(workers),
    )


async def relay_schedulers(
    schedulers: dict[str, ActorRef],
    monitor: ActorRef,
    runtime: Runtime,
    *,
    period_s: float = SCHEDULER_PERIOD_S,
    timeout_s: float = 10.0,
) -> None:
    """Publish every scheduler's record each ``period_s`` until cancelled.

    ``schedulers`` maps the source name (the actor's name) to its ref; each gets its own
    publisher (a record's source is its publisher's)."""
    publishers = {
        name: MetricsPublisher(monitor, source=name, runtime=runtime) for name in schedulers
    }
    failing: set[str] = set()
    try:
        while True:
            for name, ref in schedulers.items():
                try:
                    stats = await ref.statistics.ask(timeout=timeout_s)
                except (SpotlightError, TimeoutError) as exc:
                    if name not in failing:
                        log.warning("scheduler %s did not report statistics: %r", name, exc)
                    failing.add(name)
                    continue
                failing.discard(name)
                publishers[name].publish_record(scheduler_record(stats))
            await asyncio.sleep(period_s)  # a period, not synchronisation
    finally:
        for pub in publishers.values():
            await pub.close()
