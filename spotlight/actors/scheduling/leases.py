"""The scheduler's lease table: exactly-once sampling requests over workers that vanish.

Pure: no actor, no socket, no thread, no sleep. Time comes from an injected ``clock``;
the scheduler actor (a thin shell) calls these methods one at a time from its mailbox,
so nothing here is locked. Durability is optional: a table opened with
:meth:`LeaseTable.from_journal` writes every change that a restart must reproduce to its
:class:`Journal` (``spotlight/actors/scheduling/journal.py``) before applying it; a failed write
raises and leaves the table unchanged.

Life of a request::

    submit ──> QUEUED ──pull──> LEASED(token t, worker w, expires_at) ──complete(t)──> DONE
                 ^                 │  commit(t, snapshot): latest snapshot moves forward
                 │                 │  renew(w): expires_at = now + ttl
                 └── expire() / release(w) / scheduler restart (resume from last snapshot)

    DONE ──(every request of its submission group DONE)──> take_completed_groups() ──> gone

Fencing: every lease gets a new token, strictly increasing over the table's whole life
(also across restarts: each journal incarnation starts a new 2**32 token *epoch*, so a
token issued in a journal tail lost to an OS crash is never issued again). ``commit`` and
``complete`` are accepted only with the token of the request's *current* lease; anything
else (an expired lease, a released one, a duplicate result) returns ``False`` and is
counted, never raised: a late worker is normal, not a bug.

Expiry is explicit: a lease past ``expires_at`` still counts as held until ``expire()``
runs (the scheduler actor calls it on a timer and before serving pulls). That keeps every
method a pure function of (state, arguments, clock) and lets tests drive expiry exactly.

Ordering of ``pull``: highest ``priority`` first, then earliest ``deadline`` (None = no
deadline = last), then submission order. A requeued request keeps its original place.
The deadline only orders work; a request past its deadline is still served.

"Steps recomputed" (``LeaseStats.steps_recomputed``): the denoising steps that will run a
second time because a lease ended without completing (expiry or release). For each such
lease it is ``reached - resume``, where ``reached`` is the furthest step the table knows
that lease got to (its last commit, or a higher step the worker reported in
``renew(progress=...)``) and ``resume`` is the step of the snapshot the request resumes
from. It is a lower bound: steps a silently lost worker ran after its last report are
unknown. Steps count as in :class:`Snapshot`: ``step`` = denoising steps already done.
"""

from __future__ import annotations

import contextlib
import heapq
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spotlight.actors.scheduling import journal as j
from spotlight.actors.scheduling.journal import Journal, JournalConfig, JournalRecord
from spotlight.actors.scheduling.work import Lease, SampleRequest, Snapshot
from spotlight.runtime.codec import register_wire_type

__all__ = ["LeaseStats", "LeaseTable"]

_EPOCH_SHIFT = 32  # tokens are (epoch << 32) + n; see the module docstring


@register_wire_type(name="spotlight.LeaseStats")
@dataclass(frozen=True, kw_only=True)
class LeaseStats:
    """Counters and gauges of a :class:`LeaseTable`; the monitor and the tests read these.

    Counters start at zero in each process (a restarted table does not restore them);
    gauges (``queued``, ``active_leases``, ``done_undelivered``) always reflect the state.
    """

    queued: int
    active_leases: int
    done_undelivered: int
    """Completed requests whose group is not yet delivered."""
    submitted: int
    leases_granted: int
    re_leases: int
    """Leases granted for a request that had been leased before (after expiry/release)."""
    expired: int
    released: int
    commits: int
    completed: int
    groups_delivered: int
    stale_commits: int
    """Commits refused for an old/unknown token (includes stale snapshots in release)."""
    stale_results: int
    """Results refused for an old token or an already completed request."""
    steps_recomputed: int
    """See the module docstring for the exact definition (a lower bound)."""
    per_worker_completions: Mapping[str, int]
    per_worker_steps: Mapping[str, int]
    """Useful denoising steps credited to each worker (committed or completed progress)."""


_QUEUED, _LEASED, _DONE = 0, 1, 2
_STATUS_NAMES = {_QUEUED: "queued", _LEASED: "queued", _DONE: "done"}


@dataclass(slots=True)
class _Entry:
    request: SampleRequest
    seq: int
    status: int = _QUEUED
    token: int = 0
    worker_id: str | None = None
    expires_at: float = 0.0
    snapshot: Snapshot | None = None
    reached: int = 0
    leased_before: bool = False
    result: Any = None

    def queue_key(self) -> tuple[int, float, int]:
        deadline = self.request.deadline
        return (-self.request.priority, math.inf if deadline is None else deadline, self.seq)

    @property
    def step(self) -> int:
        return 0 if self.snapshot is None else self.snapshot.step


@dataclass(slots=True)
class _Group:
    request_ids: list[str]
    remaining: int


@dataclass(slots=True)
class _Counters:
    submitted: int = 0
    leases_granted: int = 0
    re_leases: int = 0
    expired: int = 0
    released: int = 0
    commits: int = 0
    completed: int = 0
    groups_delivered: int = 0
    stale_commits: int = 0
    stale_results: int = 0
    steps_recomputed: int = 0
    per_worker_completions: dict[str, int] = field(default_factory=dict)
    per_worker_steps: dict[str, int] = field(default_factory=dict)


class LeaseTable:
    """Leases sampling requests to pulling workers; every request completes exactly once."""

    def __init__(self, *, lease_ttl_s: float, clock: Callable[[], float]) -> None:
        """An in-memory table; use :meth:`from_journal` for one that survives restarts."""
        if not (isinstance(lease_ttl_s, int | float) and math.isfinite(lease_ttl_s)):
            raise ValueError(f"lease_ttl_s must be a finite number of seconds, got {lease_ttl_s}")
        if lease_ttl_s <= 0:
            raise ValueError(f"lease_ttl_s must be > 0 seconds, got {lease_ttl_s}")
        self._ttl = float(lease_ttl_s)
        self._clock = clock
        self._journal: Journal | None = None
        self._entries: dict[str, _Entry] = {}
        self._groups: dict[str, _Group] = {}
        self._ready: dict[str, None] = {}  # complete, undelivered groups in completion order
        self._finished_ids: set[str] = set()  # delivered: ids can never be reused
        self._finished_groups: set[str] = set()
        self._queue: list[tuple[int, float, int, str]] = []
        self._expiry: list[tuple[float, int, str]] = []  # lazy: stale entries skipped
        self._by_worker: dict[str, set[str]] = {}
        self._seq = 0
        self._epoch = 0
        self._next_token = 1
        self._n = _Counters()
        self._replaying = False

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_journal(
        cls,
        path: str | Path,
        *,
        lease_ttl_s: float,
        clock: Callable[[], float],
        config: JournalConfig | None = None,
        **journal_kwargs: Any,
    ) -> LeaseTable:
        """Open (or create) the journal at ``path`` and rebuild the table from it.

        Leases that were active when the previous process stopped are not restored: their
        requests are queued again and resume from their last committed snapshot. A new
        token epoch is started (and made durable) so no old token is ever reissued.
        ``journal_kwargs`` go to :class:`Journal` (``encode_payload``, ``decode_payload``).
        """
        from spotlight.actors.scheduling.journal import Journal, JournalConfig

        journal = Journal(path, config=config or JournalConfig(), **journal_kwargs)
        try:
            table = cls(lease_ttl_s=lease_ttl_s, clock=clock)
            table._replaying = True
            for record in journal.recovered():
                table._apply(record)
            table._replaying = False
            table._queue = [
                (*e.queue_key(), rid) for rid, e in table._entries.items() if e.status == _QUEUED
            ]
            heapq.heapify(table._queue)
            table._n = _Counters()  # counters are per process; gauges come from the state
            table._start_epoch(table._epoch + 1)
            table._journal = journal
            journal.log_epoch(table._epoch)
        except BaseException:
            journal.close()
            raise
        return table

    @property
    def journal(self) -> Journal | None:
        return self._journal

    def _start_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self._next_token = max(self._next_token, (epoch << _EPOCH_SHIFT) + 1)

    # ---------------------------------------------------------------- submitters

    def submit(self, requests: Sequence[SampleRequest]) -> None:
        """Queue new requests. Each submission group must arrive whole, in one call.

        Raises ValueError on a duplicate request id (also one delivered long ago) or on a
        group id that was already submitted: a group is known complete only if all of it
        arrived together.
        """
        requests = list(requests)
        seen: set[str] = set()
        for r in requests:
            if not isinstance(r, SampleRequest):
                raise ValueError(f"submit takes SampleRequest objects, got {type(r).__name__}")
            rid = r.request_id
            if rid in seen or rid in self._entries or rid in self._finished_ids:
                raise ValueError(f"duplicate request_id {rid!r}: request ids must be unique")
            seen.add(rid)
            if r.group_id in self._groups or r.group_id in self._finished_groups:
                raise ValueError(
                    f"group_id {r.group_id!r} was already submitted: a submission group must "
                    "be submitted whole in one submit() call"
                )
        if not requests:
            return
        if self._journal is not None:
            self._journal.log_submit(requests)
        self._apply_submit(requests)

    def take_completed_groups(self) -> list[tuple[str, list[tuple[SampleRequest, Any]]]]:
        """Results of every group completed since the last call, each group exactly once.

        Groups come in completion order, results in submission order. With a journal, the
        delivery is recorded before returning: after a restart these groups are not
        delivered again (the caller owns them from here).
        """
        if not self._ready:
            return []
        group_ids = list(self._ready)
        if self._journal is not None:
            self._journal.log_delivered(group_ids)
        out = []
        for gid in group_ids:
            group = self._groups[gid]
            out.append(
                (
                    gid,
                    [
                        (self._entries[rid].request, self._entries[rid].result)
                        for rid in group.request_ids
                    ],
                )
            )
        self._apply_delivered(group_ids)
        self._maybe_compact()
        return out

    # ---------------------------------------------------------------- workers

    def pull(self, worker_id: str, n: int, version: int | None = None) -> list[Lease]:
        """Lease up to ``n`` queued requests to ``worker_id`` (fewer if fewer are queued).

        ``version``: the weight version the worker holds; requests that name another one
        (``SampleRequest.weight_version``) are passed over and keep their place, so a worker
        still on the previous weights never takes (and hands back) an on-policy rollout.
        None: no filter.
        """
        _check_worker(worker_id)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise ValueError(f"version must be an int or None, got {version!r}")
        now = self._clock()
        leases: list[Lease] = []
        passed_over: list[tuple[int, float, int, str]] = []
        while self._queue and len(leases) < n:
            item = heapq.heappop(self._queue)
            rid = item[3]
            entry = self._entries[rid]
            assert entry.status == _QUEUED, (rid, entry.status)
            wanted = entry.request.weight_version
            if version is not None and wanted is not None and wanted != version:
                passed_over.append(item)
                continue
            if entry.leased_before:
                self._n.re_leases += 1
            entry.status = _LEASED
            entry.leased_before = True
            entry.token = self._next_token
            self._next_token += 1
            entry.worker_id = worker_id
            entry.expires_at = now + self._ttl
            entry.reached = entry.step
            self._by_worker.setdefault(worker_id, set()).add(rid)
            heapq.heappush(self._expiry, (entry.expires_at, entry.token, rid))
            self._n.leases_granted += 1
            leases.append(self._lease(entry))
        for item in passed_over:
            heapq.heappush(self._queue, item)
        return leases

    def renew(self, worker_id: str, progress: Mapping[str, int] | None = None) -> int:
        """Heartbeat: extend all of ``worker_id``'s leases to now + ttl; returns how many.

        0 tells a worker that believes it holds leases that it lost them. ``progress``
        optionally reports the step each held request has reached without committing; it
        only feeds the ``steps_recomputed`` estimate. Unheld ids in it are ignored.
        """
        _check_worker(worker_id)
        held = self._by_worker.get(worker_id, set())
        expires_at = self._clock() + self._ttl
        reports = [(self._entries[r], step) for r, step in (progress or {}).items() if r in held]
        for entry, step in reports:
            _check_step(entry.request, step, lowest=0)
        for entry, step in reports:
            entry.reached = max(entry.reached, step)
        for rid in held:
            entry = self._entries[rid]
            entry.expires_at = expires_at
            heapq.heappush(self._expiry, (expires_at, entry.token, rid))
        return len(held)

    def commit(self, request_id: str, token: int, snapshot: Snapshot) -> bool:
        """Record progress of the current lease. False (and counted) for a stale token.

        Raises ValueError for an unknown request id, or when ``snapshot.step`` does not
        advance past the last committed step or exceeds ``num_steps``.
        """
        entry = self._entry_or_stale(request_id)
        if entry is None or not self._is_current(entry, token):
            self._n.stale_commits += 1
            return False
        _check_snapshot(entry, snapshot)
        if self._journal is not None:
            self._journal.log_commit(request_id, token, snapshot)
        self._apply_commit(request_id, snapshot)
        self._n.commits += 1
        self._maybe_compact()
        return True

    def complete(self, request_id: str, token: int, result: Any) -> bool:
        """Accept the result of the current lease, exactly once. False (counted) otherwise."""
        entry = self._entry_or_stale(request_id)
        if entry is None or not self._is_current(entry, token):
            self._n.stale_results += 1
            return False
        worker = entry.worker_id
        assert worker is not None
        if self._journal is not None:
            self._journal.log_complete(request_id, token, worker, result)
        self._apply_complete(request_id, result, worker)
        self._maybe_compact()
        return True

    def release(self, worker_id: str, snapshots: Mapping[str, Snapshot] | None = None) -> int:
        """Graceful hand-back (preemption notice): commit ``snapshots``, requeue at once.

        Returns the number of leases released. A snapshot for a request this worker no
        longer holds is stale (counted, ignored); one that does not advance past the last
        commit is ignored (a resend of a commit already made). Unknown ids raise.
        """
        _check_worker(worker_id)
        snapshots = dict(snapshots or {})
        held = self._by_worker.get(worker_id, set())
        fresh: dict[str, Snapshot] = {}
        for rid, snap in snapshots.items():
            entry = self._entry_or_stale(rid)
            if entry is None or rid not in held:
                self._n.stale_commits += 1
                continue
            if not isinstance(snap, Snapshot):
                raise ValueError(f"snapshot for {rid!r} must be a Snapshot, got {snap!r}")
            if snap.step > entry.step:
                _check_snapshot(entry, snap)
                fresh[rid] = snap
        journal = self._journal
        with journal.batch() if journal is not None else contextlib.nullcontext():
            for rid, snap in fresh.items():  # one fsync for the lot (a notice is short)
                if journal is not None:
                    journal.log_commit(rid, self._entries[rid].token, snap)
                self._apply_commit(rid, snap)
                self._n.commits += 1
        released = sorted(held, key=lambda rid: self._entries[rid].seq)
        for rid in released:
            self._requeue(self._entries[rid])
        self._n.released += len(released)
        return len(released)

    def expire(self) -> list[str]:
        """Requeue every lease whose ``expires_at`` has passed; returns their request ids."""
        now = self._clock()
        out = []
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, token, rid = heapq.heappop(self._expiry)
            entry = self._entries.get(rid)
            if (
                entry is None
                or entry.status != _LEASED
                or entry.token != token
                or entry.expires_at != expires_at
            ):
                continue  # renewed, completed, released or re-leased since: not this one
            self._requeue(entry)
            out.append(rid)
        self._n.expired += len(out)
        return out

    # ---------------------------------------------------------------- queries

    def leases_of(self, worker_id: str) -> list[Lease]:
        """The leases ``worker_id`` holds now, in submission order."""
        held = self._by_worker.get(worker_id, set())
        return [self._lease(self._entries[r]) for r in sorted(held, key=self._seq_of)]

    def statistics(self) -> LeaseStats:
        n = self._n
        active = sum(len(s) for s in self._by_worker.values())
        return LeaseStats(
            queued=len(self._queue),
            active_leases=active,
            done_undelivered=len(self._entries) - len(self._queue) - active,
            submitted=n.submitted,
            leases_granted=n.leases_granted,
            re_leases=n.re_leases,
            expired=n.expired,
            released=n.released,
            commits=n.commits,
            completed=n.completed,
            groups_delivered=n.groups_delivered,
            stale_commits=n.stale_commits,
            stale_results=n.stale_results,
            steps_recomputed=n.steps_recomputed,
            per_worker_completions=dict(n.per_worker_completions),
            per_worker_steps=dict(n.per_worker_steps),
        )

    def durable_state(self) -> dict[str, Any]:
        """What a restart reproduces, as plain data (tests compare live and replayed tables).

        Active leases show as queued (a restart expires them); lease tokens, expiry times
        and counters are not part of it.
        """
        pending = [e for e in self._entries.values() if e.status != _DONE]
        return {
            "queue_order": [e.request.request_id for e in sorted(pending, key=_Entry.queue_key)],
            "requests": {
                rid: (
                    e.request,
                    _STATUS_NAMES[e.status],
                    None if e.snapshot is None else (e.snapshot.step, e.snapshot.payload),
                    e.result,
                )
                for rid, e in self._entries.items()
            },
            "ready_groups": list(self._ready),
            "finished_ids": set(self._finished_ids),
            "finished_groups": set(self._finished_groups),
        }

    def live_records(self) -> Iterator[JournalRecord]:
        """The shortest record sequence that rebuilds this state (journal compaction)."""

        yield j.EpochStarted(epoch=self._epoch)
        if self._finished_ids or self._finished_groups:
            yield j.Forgotten(
                request_ids=sorted(self._finished_ids), group_ids=sorted(self._finished_groups)
            )
        by_seq = sorted(self._entries.values(), key=lambda e: e.seq)
        if by_seq:
            yield j.Submitted(requests=[e.request for e in by_seq])
        # Ready groups first, in readiness order, so replay makes them ready in that order.
        ready_ids = [rid for gid in self._ready for rid in self._groups[gid].request_ids]
        ready_set = set(ready_ids)
        rest = [e.request.request_id for e in by_seq if e.request.request_id not in ready_set]
        for rid in ready_ids + rest:
            e = self._entries[rid]
            if e.status == _DONE:
                yield j.Completed(request_id=rid, token=e.token, worker_id="", result=e.result)
            elif e.snapshot is not None:
                yield j.Committed(request_id=rid, token=e.token, snapshot=e.snapshot)

    def compact_journal(self) -> None:
        """Rewrite the journal as the live state only (atomic rename); no-op without one."""
        if self._journal is not None:
            self._journal.rewrite(self.live_records())

    # ---------------------------------------------------------------- internals

    def _maybe_compact(self) -> None:
        if self._journal is not None and self._journal.compaction_due():
            self.compact_journal()

    def _seq_of(self, rid: str) -> int:
        return self._entries[rid].seq

    def _lease(self, entry: _Entry) -> Lease:
        assert entry.worker_id is not None
        return Lease(entry.request, entry.worker_id, entry.token, entry.expires_at, entry.snapshot)

    def _entry_or_stale(self, request_id: str) -> _Entry | None:
        """The entry, or None for a delivered id (stale); unknown ids are caller bugs."""
        entry = self._entries.get(request_id)
        if entry is None and request_id not in self._finished_ids:
            raise ValueError(f"unknown request_id {request_id!r}: it was never submitted")
        return entry

    @staticmethod
    def _is_current(entry: _Entry, token: int) -> bool:
        return entry.status == _LEASED and entry.token == token

    def _requeue(self, entry: _Entry) -> None:
        """End the current lease without a result; the request resumes from its snapshot."""
        assert entry.status == _LEASED and entry.worker_id is not None
        held = self._by_worker[entry.worker_id]
        held.discard(entry.request.request_id)
        if not held:
            del self._by_worker[entry.worker_id]
        self._n.steps_recomputed += max(0, entry.reached - entry.step)
        entry.status = _QUEUED
        entry.worker_id = None
        heapq.heappush(self._queue, (*entry.queue_key(), entry.request.request_id))

    def _credit(self, worker_id: str | None, steps: int) -> None:
        if worker_id:
            steps_by = self._n.per_worker_steps
            steps_by[worker_id] = steps_by.get(worker_id, 0) + steps

    # The _apply_* methods are the only mutations a journal record stands for: live
    # calls and replay share them, so a replayed table cannot drift from a live one.

    def _apply(self, record: JournalRecord) -> None:

        match record:
            case j.EpochStarted(epoch=epoch):
                self._start_epoch(max(self._epoch, epoch))
            case j.Submitted(requests=requests):
                self._apply_submit(requests)
            case j.Committed(request_id=rid, snapshot=snapshot):
                self._apply_commit(rid, snapshot)
            case j.Completed(request_id=rid, result=result, worker_id=worker):
                self._apply_complete(rid, result, worker)
            case j.Delivered(group_ids=group_ids):
                self._apply_delivered(group_ids)
            case j.Forgotten(request_ids=rids, group_ids=gids):
                self._finished_ids.update(rids)
                self._finished_groups.update(gids)
            case _:
                raise AssertionError(f"unhandled journal record {record!r}")

    def _apply_submit(self, requests: Sequence[SampleRequest]) -> None:
        for r in requests:
            entry = _Entry(request=r, seq=self._seq)
            self._seq += 1
            self._entries[r.request_id] = entry
            group = self._groups.setdefault(r.group_id, _Group(request_ids=[], remaining=0))
            group.request_ids.append(r.request_id)
            group.remaining += 1
            if not self._replaying:  # replay rebuilds the heap once at the end
                heapq.heappush(self._queue, (*entry.queue_key(), r.request_id))
        self._n.submitted += len(requests)

    def _apply_commit(self, request_id: str, snapshot: Snapshot) -> None:
        entry = self._entries[request_id]
        assert entry.status != _DONE and snapshot.step > entry.step, (request_id, snapshot.step)
        self._credit(entry.worker_id, snapshot.step - entry.step)
        entry.snapshot = snapshot
        entry.reached = max(entry.reached, snapshot.step)

    def _apply_complete(self, request_id: str, result: Any, worker_id: str) -> None:
        entry = self._entries[request_id]
        assert entry.status != _DONE, request_id
        if entry.status == _LEASED:
            assert entry.worker_id is not None
            held = self._by_worker[entry.worker_id]
            held.discard(request_id)
            if not held:
                del self._by_worker[entry.worker_id]
        else:
            assert self._replaying, request_id  # live, a queued request has no lease
        self._credit(worker_id, entry.request.num_steps - entry.step)
        if worker_id:
            done_by = self._n.per_worker_completions
            done_by[worker_id] = done_by.get(worker_id, 0) + 1
        entry.status = _DONE
        entry.worker_id = None
        entry.snapshot = None  # the result supersedes it; free the latent
        entry.result = result
        self._n.completed += 1
        group = self._groups[entry.request.group_id]
        group.remaining -= 1
        if group.remaining == 0:
            self._ready[entry.request.group_id] = None

    def _apply_delivered(self, group_ids: Sequence[str]) -> None:
        for gid in group_ids:
            group = self._groups.pop(gid)
            assert group.remaining == 0 and gid in self._ready, gid
            del self._ready[gid]
            for rid in group.request_ids:
                del self._entries[rid]
                self._finished_ids.add(rid)
            self._finished_groups.add(gid)
        self._n.groups_delivered += len(group_ids)


def _check_worker(worker_id: str) -> None:
    if not isinstance(worker_id, str) or not worker_id:
        raise ValueError(f"worker_id must be a non-empty str, got {worker_id!r}")


def _check_step(request: SampleRequest, step: Any, *, lowest: int) -> None:
    if (
        not isinstance(step, int)
        or isinstance(step, bool)
        or not lowest <= step <= request.num_steps
    ):
        raise ValueError(
            f"step {step!r} of request {request.request_id!r} must be an int in "
            f"[{lowest}, {request.num_steps}] (num_steps={request.num_steps})"
        )


def _check_snapshot(entry: _Entry, snapshot: Snapshot) -> None:
    if not isinstance(snapshot, Snapshot):
        raise ValueError(f"snapshot must be a Snapshot, got {type(snapshot).__name__}")
    _check_step(entry.request, snapshot.step, lowest=1)
    if snapshot.step <= entry.step:
        raise ValueError(
            f"snapshot step {snapshot.step} of request {entry.request.request_id!r} does not "
            f"advance past the last committed step {entry.step}"
        )
