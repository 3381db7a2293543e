"""The scheduler actor: a thin shell that serves the pure :class:`LeaseTable` over the wire.

Map (one actor, one mailbox; the table is only touched from the event loop)::

    submitter ──submit(requests, reply_to?)──►┐
    worker ────pull(worker_id, n) ──────────► │  SchedulerActor ── LeaseTable (+ Journal, fsync)
    worker ────renew(worker_id, progress) ──► │      │
    worker ────commit(rid, token, snapshot) ► │      ├── expiry timer task: every expiry_period_s
    worker ────complete(rid, token, result) ► │      │   expire() + journal.sync_if_due()
    handler ───release(worker_id, snapshots)► │      │
    consumer ──collect(ack, wait_s) ◄─────────┘      └── push task per ready group with a
                                                         reply_to: reply_to.deliver_group.ask

What each loop waits on:

* the mailbox (the runtime's loop for this actor) waits for the next message; every
  endpoint except ``collect`` runs to completion without awaiting anything but the
  journal's fsync (synchronous, a few ms), so the table sees one call at a time;
* the expiry timer waits ``expiry_period_s``; ``pull`` also expires first, so a late
  timer never hands out a request that is still leased;
* ``collect`` (concurrent) waits on ``_ready_changed`` (set by every accepted result and
  by restarts) up to ``wait_s``; a long poll, so a consumer needs no sleeps;
* a push task waits on one ``deliver_group`` ask to a submitter, under ``call_timeout_s``.

Back-pressure: workers pull, so the queue never pushes work at a worker that is not free;
the runtime's credits bound the messages in flight per worker. Results wait in the table
until a consumer acknowledges them, so a slow consumer only grows the table.

Delivery of results: *at least once* per submission group, and idempotent by group id.
A group is sent to its ``reply_to`` (when the submitter gave one and this process still
knows it) or returned by ``collect``; it is removed from the table (journaled as delivered)
only once acknowledged (a successful ``deliver_group`` ask, or an ``ack`` in a later
``collect``). A crash between sending and acknowledging re-sends the group after the
restart; consumers drop group ids they already have. The table's own delivery takes every
ready group at once, so the scheduler acknowledges to the table only when every ready group
is acknowledged by its consumer (``_take_acked``).

Restart: ``journal_path`` makes the table durable; a new process on the same path replays
it (leases become queued again, resuming from their last snapshot; a new fencing epoch
makes every old token stale). ``reply_to`` refs are not journaled: after a restart the
consumer collects.

Shutdown order (``on_stop``): cancel the timer and push tasks, wake waiting collectors,
close the journal (its last fsync).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spotlight.actors.scheduling.journal import JournalConfig
from spotlight.actors.scheduling.leases import LeaseStats, LeaseTable
from spotlight.actors.scheduling.work import GroupResult, Lease, SampleRequest, Snapshot
from spotlight.runtime import Actor, ActorRef, endpoint
from spotlight.runtime.codec import register_wire_type
from spotlight.runtime.errors import SpotlightError

__all__ = [
    "SchedulerActor",
    "SchedulerStats",
    "SchedulingConfig",
]

log = logging.getLogger("spotlight.actors.scheduling.scheduler")


@register_wire_type(name="spotlight.SchedulingConfig")
@dataclass(frozen=True, kw_only=True)
class SchedulingConfig:
    """Every timing knob of pull scheduling and preemption, in one place tests can shrink."""

    lease_ttl_s: float = 30.0
    """A lease not renewed for this long is expired and resumes elsewhere (kill -9 case)."""
    heartbeat_s: float = 5.0
    """Workers renew their leases (and report progress) this often; < lease_ttl_s / 2."""
    expiry_period_s: float = 1.0
    """The scheduler's expiry timer period; a lost lease is re-queued at most this late."""
    commit_interval: int = 2
    """Workers commit a snapshot every this many denoising steps; bounds the steps a kill
    -9 can lose per request."""
    pull_batch: int = 1
    """Requests a worker pulls at once (advanced round-robin, one step each)."""
    idle_pull_s: float = 0.5
    """An idle worker (empty queue, or an unreachable scheduler) asks again this often."""
    call_timeout_s: float = 10.0
    """Deadline of every ask to the scheduler (and of a push to a submitter)."""
    preemption_margin_s: float = 0.25
    """Time kept free before a notice deadline for the release ask and the exit."""

    def __post_init__(self) -> None:
        for name in (
            "lease_ttl_s",
            "heartbeat_s",
            "expiry_period_s",
            "idle_pull_s",
            "call_timeout_s",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        if not (math.isfinite(self.preemption_margin_s) and self.preemption_margin_s >= 0):
            raise ValueError(f"preemption_margin_s must be >= 0, got {self.preemption_margin_s}")
        if self.heartbeat_s * 2 > self.lease_ttl_s:
            raise ValueError(
                f"heartbeat_s={self.heartbeat_s} must be at most lease_ttl_s/2 "
                f"({self.lease_ttl_s / 2}) so one lost heartbeat does not expire a live lease"
            )
        for name in ("commit_interval", "pull_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@register_wire_type(name="spotlight.SchedulerStats")
@dataclass(frozen=True, kw_only=True)
class SchedulerStats:
    """What the monitor shows and the tests assert on."""

    queue_depth: int
    active_leases: int
    leases: LeaseStats
    """The table's counters (re-leases, stale results and commits, steps recomputed...)."""
    per_worker_steps_per_s: dict[str, float]
    """Useful denoising steps credited per worker, per second since its first pull."""
    results_unacknowledged: int
    """Completed requests whose group no consumer has acknowledged yet."""
    journal_path: str | None
    incarnation_started_at: float
    """``time.time()`` when this scheduler process opened its table."""
    extra: dict[str, int] = field(default_factory=dict)


class SchedulerActor(Actor):
    """Serves pulls, commits and results of one :class:`LeaseTable`; see the module map."""

    def __init__(
        self,
        *,
        config: SchedulingConfig | None = None,
        journal_path: str | None = None,
        journal_config: JournalConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or SchedulingConfig()
        self.journal_path = journal_path
        self.journal_config = journal_config
        self._clock = clock
        self.table: LeaseTable | None = None
        self._reply_to: dict[str, ActorRef] = {}
        self._acked: set[str] = set()
        self._pushing: set[str] = set()
        self._first_seen: dict[str, float] = {}
        self._ready_changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started_at = time.time()
        self._counts = {"push_failures": 0, "collect_calls": 0, "acks": 0}

    async def on_start(self) -> None:
        ttl = self.config.lease_ttl_s
        if self.journal_path is not None:
            Path(self.journal_path).parent.mkdir(parents=True, exist_ok=True)
            self.table = LeaseTable.from_journal(
                self.journal_path, lease_ttl_s=ttl, clock=self._clock, config=self.journal_config
            )
        else:
            self.table = LeaseTable(lease_ttl_s=ttl, clock=self._clock)
        self._started_at = time.time()
        self._spawn(self._expiry_loop(), "scheduler expiry timer")
        self._ready_changed.set()  # a replayed table may hold ready groups

    async def on_stop(self) -> None:
        for task in list(self._tasks):
            task.cancel("scheduler stopping")
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        self._ready_changed.set()
        if self.table is not None and self.table.journal is not None:
            self.table.journal.close()

    # ------------------------------------------------------------------ submitters

    @endpoint
    async def submit(
        self, requests: Sequence[SampleRequest], reply_to: ActorRef | None = None
    ) -> int:
        """Queue ``requests`` (whole submission groups); results go to ``reply_to``'s
        ``deliver_group(GroupResult)`` endpoint if given, else wait for ``collect``."""
        table = self._table()
        requests = list(requests)
        table.submit(requests)
        if reply_to is not None:
            for r in requests:
                self._reply_to[r.group_id] = reply_to
        return len(requests)

    @endpoint(concurrent=True)
    async def collect(
        self, ack: Sequence[str] = (), wait_s: float = 0.0, limit: int = 1000
    ) -> list[GroupResult]:
        """Long poll for completed groups: acknowledge ``ack`` (group ids already received),
        then return unacknowledged ready groups, waiting up to ``wait_s`` for one."""
        if not (math.isfinite(wait_s) and wait_s >= 0):
            raise ValueError(f"wait_s must be >= 0 seconds, got {wait_s}")
        self._counts["collect_calls"] += 1
        self._acknowledge(ack)
        deadline = time.monotonic() + wait_s
        while True:
            self._ready_changed.clear()
            groups = [g for g in self._ready_groups() if g.group_id not in self._acked]
            remaining = deadline - time.monotonic()
            if groups or remaining <= 0:
                return groups[:limit]
            try:
                await asyncio.wait_for(self._ready_changed.wait(), remaining)
            except TimeoutError:
                return []

    # ------------------------------------------------------------------ workers

    @endpoint
    async def pull(self, worker_id: str, n: int, version: int | None = None) -> list[Lease]:
        """Up to ``n`` leases; ``version``: the weight version the worker holds (requests
        for another one stay queued, see ``LeaseTable.pull``)."""
        table = self._table()
        table.expire()
        self._first_seen.setdefault(worker_id, self._clock())
        return table.pull(worker_id, n, version)

    @endpoint
    async def renew(self, worker_id: str, progress: Mapping[str, int] | None = None) -> int:
        return self._table().renew(worker_id, progress)

    @endpoint
    async def commit(self, request_id: str, token: int, snapshot: Snapshot) -> bool:
        return self._table().commit(request_id, token, snapshot)

    @endpoint
    async def complete(self, request_id: str, token: int, result: Any) -> bool:
        accepted = self._table().complete(request_id, token, result)
        if accepted:
            self._on_results()
        return accepted

    @endpoint
    async def release(self, worker_id: str, snapshots: Mapping[str, Snapshot] | None = None) -> int:
        return self._table().release(worker_id, snapshots)

    @endpoint
    async def statistics(self) -> SchedulerStats:
        table = self._table()
        st = table.statistics()
        now = self._clock()
        rates = {
            w: st.per_worker_steps.get(w, 0) / max(now - t0, 1e-9)
            for w, t0 in self._first_seen.items()
        }
        return SchedulerStats(
            queue_depth=st.queued,
            active_leases=st.active_leases,
            leases=st,
            per_worker_steps_per_s=rates,
            results_unacknowledged=st.done_undelivered,
            journal_path=self.journal_path,
            incarnation_started_at=self._started_at,
            extra=dict(self._counts),
        )

    # ------------------------------------------------------------------ internals

    def _table(self) -> LeaseTable:
        if self.table is None:
            raise SpotlightError("the scheduler has not started")
        return self.table

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("scheduler task %s failed", task.get_name(), exc_info=task.exception())

    async def _expiry_loop(self) -> None:
        table = self._table()
        while True:
            await asyncio.sleep(self.config.expiry_period_s)  # a timer, not synchronisation
            expired = table.expire()
            if expired:
                log.info("leases expired: %s", expired)
            if table.journal is not None:
                table.journal.sync_if_due()

    def _ready_groups(self) -> list[GroupResult]:
        """Peek the table's complete, undelivered groups without taking them."""
        state = self._table().durable_state()
        ready = state["ready_groups"]
        if not ready:
            return []
        members: dict[str, GroupResult] = {
            gid: GroupResult(group_id=gid, requests=[], results=[]) for gid in ready
        }
        for request, _status, _snap, result in state["requests"].values():
            group = members.get(request.group_id)
            if group is not None:
                group.requests.append(request)
                group.results.append(result)
        return [members[gid] for gid in ready]

    def _on_results(self) -> None:
        self._ready_changed.set()
        if not self._reply_to:
            return  # _ready_groups() is O(table): only look when someone waits for a push
        for group in self._ready_groups():
            gid = group.group_id
            ref = self._reply_to.get(gid)
            if ref is not None and gid not in self._pushing and gid not in self._acked:
                self._pushing.add(gid)
                self._spawn(self._push(ref, group), f"push {gid}")

    async def _push(self, ref: ActorRef, group: GroupResult) -> None:
        try:
            await ref.deliver_group.ask(group, timeout=self.config.call_timeout_s)
        except (SpotlightError, TimeoutError) as exc:
            self._counts["push_failures"] += 1
            log.warning("could not deliver group %s to %r: %r (kept for collect)", group, ref, exc)
            self._reply_to.pop(group.group_id, None)
        else:
            self._acknowledge([group.group_id])
        finally:
            self._pushing.discard(group.group_id)

    def _acknowledge(self, group_ids: Sequence[str]) -> None:
        """Mark groups received; hand them to the table once every ready group is."""
        if group_ids:
            self._counts["acks"] += len(group_ids)
            ready = {g.group_id for g in self._ready_groups()}
            self._acked.update(gid for gid in group_ids if gid in ready)
        self._take_acked()

    def _take_acked(self) -> None:
        if not self._acked:
            return
        ready = {g.group_id for g in self._ready_groups()}
        if ready and ready <= self._acked:
            taken = self._table().take_completed_groups()
            for gid, _ in taken:
                self._acked.discard(gid)
                self._reply_to.pop(gid, None)
