"""The lease table: each method and error, then a state machine over the whole contract.

No sleeps: a fake clock drives expiry. The state machine keeps its own small model of
what must be true (who holds what, the latest committed snapshot, which tokens are
current) and checks the table against it after every step, including a crash and a
replay from the journal.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
)

from spotlight.actors.scheduling.journal import JournalConfig
from spotlight.actors.scheduling.leases import LeaseTable
from spotlight.actors.scheduling.work import Lease, SampleRequest, Snapshot

TTL = 10.0


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def req(rid: str, group: str = "g", **kw: Any) -> SampleRequest:
    fields: dict[str, Any] = {
        "request_id": rid,
        "group_id": group,
        "prompt": f"p-{rid}",
        "seed": 7,
        "num_steps": 4,
        "kind": "rollout",
    }
    fields.update(kw)
    return SampleRequest(**fields)


def msgpack_encode(obj: Any) -> list[bytes]:
    return [msgpack.packb(obj, use_bin_type=True)]


def msgpack_decode(frames: list[bytes]) -> Any:
    return msgpack.unpackb(frames[0], raw=False)


PLAIN = {"encode_payload": msgpack_encode, "decode_payload": msgpack_decode}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def table(clock: FakeClock) -> LeaseTable:
    return LeaseTable(lease_ttl_s=TTL, clock=clock)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("request_id", "", "request_id"),
        ("num_steps", 0, "num_steps must be >= 1"),
        ("num_steps", 2.0, "num_steps must be an int"),
        ("kind", "train", "kind must be one of"),
        ("deadline", float("nan"), "deadline"),
        ("seed", True, "seed must be an int"),
    ],
)
def test_sample_request_validates(field: str, value: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        req("a", **{field: value})


@pytest.mark.parametrize("ttl", [0, -1.0, float("inf")])
def test_ttl_must_be_positive_and_finite(ttl: float) -> None:
    with pytest.raises(ValueError, match="lease_ttl_s"):
        LeaseTable(lease_ttl_s=ttl, clock=FakeClock())


# ---------------------------------------------------------------- submit / pull


def test_submit_rejects_duplicates_and_split_groups(table: LeaseTable) -> None:
    table.submit([req("a", "g1"), req("b", "g1")])
    with pytest.raises(ValueError, match="duplicate request_id 'a'"):
        table.submit([req("a", "g2")])
    with pytest.raises(ValueError, match="duplicate request_id 'c'"):
        table.submit([req("c", "g3"), req("c", "g3")])
    with pytest.raises(ValueError, match="group_id 'g1' was already submitted"):
        table.submit([req("d", "g1")])
    with pytest.raises(ValueError, match="SampleRequest"):
        table.submit(["nope"])  # type: ignore[list-item]
    assert table.statistics().queued == 2  # failed calls changed nothing


def test_ids_stay_taken_after_delivery(table: LeaseTable) -> None:
    table.submit([req("a", "g1")])
    (lease,) = table.pull("w", 1)
    assert table.complete("a", lease.token, "r")
    assert table.take_completed_groups() == [("g1", [(req("a", "g1"), "r")])]
    with pytest.raises(ValueError, match="duplicate request_id 'a'"):
        table.submit([req("a", "g2")])
    with pytest.raises(ValueError, match="group_id 'g1'"):
        table.submit([req("b", "g1")])
    # A late result for a delivered request is stale, not an error.
    assert table.complete("a", lease.token, "again") is False
    assert table.statistics().stale_results == 1


def test_pull_order_priority_deadline_submission(table: LeaseTable) -> None:
    table.submit(
        [
            req("late", "a", deadline=50.0),
            req("none1", "b"),
            req("early", "c", deadline=10.0),
            req("urgent", "d", priority=5),
            req("none2", "e"),
            req("low", "f", priority=-1, deadline=1.0),
        ]
    )
    got = [lease.request.request_id for lease in table.pull("w", 10)]
    assert got == ["urgent", "early", "late", "none1", "none2", "low"]


def test_pull_passes_over_requests_for_other_weight_versions(table: LeaseTable) -> None:
    """A worker on version 3 gets version-free and version-3 requests; a version-4 one keeps
    its place in the queue for a worker that holds version 4 (no lease, no re-lease)."""
    table.submit([
        dataclasses.replace(req("v4", "a"), weight_version=4),
        req("any", "b"),
        dataclasses.replace(req("v3", "c"), weight_version=3),
        dataclasses.replace(req("v4b", "d"), weight_version=4),
    ])  # fmt: skip
    assert [lease.request.request_id for lease in table.pull("old", 10, 3)] == ["any", "v3"]
    assert table.statistics().queued == 2 and table.statistics().re_leases == 0
    assert [lease.request.request_id for lease in table.pull("new", 1, 4)] == ["v4"]
    assert [lease.request.request_id for lease in table.pull("any", 5)] == ["v4b"]  # no filter
    with pytest.raises(ValueError, match="version must be an int or None"):
        table.pull("w", 1, "3")  # type: ignore[arg-type]


def test_pull_limits_and_lease_fields(table: LeaseTable, clock: FakeClock) -> None:
    table.submit([req(str(i), f"g{i}") for i in range(3)])
    assert table.pull("w1", 0) == []
    leases = table.pull("w1", 2)
    assert [lease.request.request_id for lease in leases] == ["0", "1"]
    assert all(lease.worker_id == "w1" and lease.resume_from is None for lease in leases)
    assert all(lease.expires_at == clock.now + TTL for lease in leases)
    assert leases[0].token < leases[1].token
    assert len(table.pull("w2", 5)) == 1
    assert table.pull("w3", 5) == []
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        table.pull("w", -1)
    with pytest.raises(ValueError, match="worker_id"):
        table.pull("", 1)
    stats = table.statistics()
    assert (stats.queued, stats.active_leases, stats.leases_granted) == (0, 3, 3)


# ---------------------------------------------------------------- commit / complete


def test_commit_advances_and_fences(table: LeaseTable, clock: FakeClock) -> None:
    table.submit([req("a", num_steps=4)])
    (lease,) = table.pull("w", 1)
    assert table.commit("a", lease.token, Snapshot(step=1, payload="s1"))
    with pytest.raises(ValueError, match="does not advance past the last committed step 1"):
        table.commit("a", lease.token, Snapshot(step=1, payload="again"))
    with pytest.raises(ValueError, match=r"must be an int in \[1, 4\]"):
        table.commit("a", lease.token, Snapshot(step=5, payload="x"))
    with pytest.raises(ValueError, match="must be a Snapshot"):
        table.commit("a", lease.token, "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown request_id 'zz'"):
        table.commit("zz", lease.token, Snapshot(step=2, payload="x"))
    assert table.commit("a", lease.token + 1, Snapshot(step=2, payload="x")) is False
    assert table.commit("a", lease.token - 1, Snapshot(step=2, payload="x")) is False
    assert table.statistics().stale_commits == 2
    # Expire; the next lease resumes from the last *committed* snapshot.
    clock.now += TTL
    assert table.expire() == ["a"]
    assert table.commit("a", lease.token, Snapshot(step=3, payload="late")) is False
    (second,) = table.pull("w2", 1)
    assert second.token > lease.token
    assert second.resume_from == Snapshot(step=1, payload="s1")
    stats = table.statistics()
    assert (stats.stale_commits, stats.re_leases, stats.expired, stats.commits) == (3, 1, 1, 1)


def test_complete_exactly_once(table: LeaseTable, clock: FakeClock) -> None:
    table.submit([req("a", "g", num_steps=4), req("b", "g", num_steps=4)])
    la, _ = table.pull("w1", 2)
    clock.now += TTL
    assert sorted(table.expire()) == ["a", "b"]
    (la2,) = table.pull("w2", 1)
    assert la2.request.request_id == "a"
    assert table.complete("a", la.token, "old") is False  # the lost lease's late result
    assert table.complete("a", la2.token, "new") is True
    assert table.complete("a", la2.token, "dup") is False  # a duplicate
    assert table.take_completed_groups() == []  # b is not done: the group waits
    (lb2,) = table.pull("w1", 1)
    assert table.complete("b", lb2.token, "rb")
    assert table.take_completed_groups() == [("g", [(req("a", "g"), "new"), (req("b", "g"), "rb")])]
    assert table.take_completed_groups() == []
    stats = table.statistics()
    assert stats.stale_results == 2
    assert stats.completed == 2 and stats.groups_delivered == 1
    assert stats.per_worker_completions == {"w1": 1, "w2": 1}
    assert stats.per_worker_steps == {"w1": 4, "w2": 4}
    with pytest.raises(ValueError, match="unknown request_id"):
        table.complete("nope", 1, None)


def test_groups_delivered_in_completion_order(table: LeaseTable) -> None:
    table.submit([req("a1", "A"), req("b1", "B"), req("a2", "A")])
    leases = {lease.request.request_id: lease for lease in table.pull("w", 3)}
    table.complete("a2", leases["a2"].token, 2)
    table.complete("b1", leases["b1"].token, 1)
    assert [g for g, _ in table.take_completed_groups()] == ["B"]
    table.complete("a1", leases["a1"].token, 0)
    assert table.take_completed_groups() == [("A", [(req("a1", "A"), 0), (req("a2", "A"), 2)])]


# ---------------------------------------------------------------- renew / expire / release


def test_renew_extends_and_expire_boundary(table: LeaseTable, clock: FakeClock) -> None:
    table.submit([req("a", "g1"), req("b", "g2")])
    table.pull("w1", 1)
    table.pull("w2", 1)
    clock.now += TTL - 1
    assert table.renew("w1") == 1
    assert table.renew("ghost") == 0
    clock.now += 1  # w2's lease reaches expires_at exactly: expired (>=)
    assert table.expire() == ["b"]
    assert table.renew("w2") == 0  # tells w2 it lost its lease
    clock.now += TTL - 2  # w1 renewed at t0 + TTL - 1: expires at t0 + 2 TTL - 1
    assert table.expire() == []
    clock.now += 1
    assert table.expire() == ["a"]
    assert table.statistics().active_leases == 0


def test_expiry_is_explicit(table: LeaseTable, clock: FakeClock) -> None:
    """Until expire() runs, a lease past its time is still the current one."""
    table.submit([req("a")])
    (lease,) = table.pull("w", 1)
    clock.now += 5 * TTL
    assert table.commit("a", lease.token, Snapshot(step=1, payload=None))
    assert table.renew("w") == 1
    assert table.expire() == []


def test_release_commits_and_requeues(table: LeaseTable, clock: FakeClock) -> None:
    table.submit([req("a", "g1", num_steps=8), req("b", "g2", num_steps=8), req("c", "g3")])
    la, lb = table.pull("w1", 2)
    (lc,) = table.pull("w2", 1)
    table.commit("a", la.token, Snapshot(step=2, payload="a2"))
    released = table.release(
        "w1",
        {
            "a": Snapshot(step=2, payload="resend"),  # no advance: ignored
            "b": Snapshot(step=5, payload="b5"),
            "c": Snapshot(step=1, payload="not w1's"),  # stale: counted, ignored
        },
    )
    assert released == 2
    assert table.release("w1") == 0
    with pytest.raises(ValueError, match="unknown request_id"):
        table.release("w2", {"zz": Snapshot(step=1, payload=None)})
    got = {lease.request.request_id: lease for lease in table.pull("w3", 5)}
    assert got["a"].resume_from == Snapshot(step=2, payload="a2")
    assert got["b"].resume_from == Snapshot(step=5, payload="b5")
    assert table.commit("b", lb.token, Snapshot(step=6, payload=None)) is False
    stats = table.statistics()
    assert (stats.released, stats.stale_commits, stats.steps_recomputed) == (2, 2, 0)
    assert table.leases_of("w2") == [lc]


def test_steps_recomputed(table: LeaseTable, clock: FakeClock) -> None:
    """reached (commit or reported progress) minus the resume step, per lost lease."""
    table.submit([req("a", num_steps=10)])
    (lease,) = table.pull("w", 1)
    table.commit("a", lease.token, Snapshot(step=3, payload=None))
    assert table.renew("w", progress={"a": 7, "not-held": 9}) == 1
    with pytest.raises(ValueError, match=r"in \[0, 10\]"):
        table.renew("w", progress={"a": 11})
    clock.now += TTL
    table.expire()
    assert table.statistics().steps_recomputed == 4  # steps 3..6 run again
    (lease,) = table.pull("w2", 1)
    table.renew("w2", progress={"a": 5})
    table.release("w2", {"a": Snapshot(step=4, payload=None)})
    assert table.statistics().steps_recomputed == 4 + 1  # reached 5, resumes at 4
    (lease,) = table.pull("w3", 1)
    table.release("w3")  # nothing reported beyond the snapshot: nothing recomputed
    assert table.statistics().steps_recomputed == 5
    assert table.statistics().per_worker_steps == {"w": 3, "w2": 1}


def test_tokens_strictly_increase(table: LeaseTable, clock: FakeClock) -> None:
    table.submit([req(str(i), f"g{i}") for i in range(5)])
    tokens = []
    for _ in range(4):
        tokens += [lease.token for lease in table.pull("w", 5)]
        clock.now += TTL
        table.expire()
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


# ---------------------------------------------------------------- state machine


class LeaseMachine(RuleBasedStateMachine):
    """Random operation sequences against a model; a crash replays from the journal."""

    workers = ("w0", "w1", "w2")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="leases-sm-"))
        self.path = self.dir / "journal"
        self.clock = FakeClock()
        self.config = JournalConfig(fsync="never", compact_above_bytes=None)
        self.table = self._open()
        self.requests: dict[str, SampleRequest] = {}
        self.groups: dict[str, list[str]] = {}
        self.snap: dict[str, Snapshot | None] = {}
        self.holder: dict[str, Lease] = {}  # current leases by request id
        self.old_tokens: dict[str, list[int]] = {}
        self.done: dict[str, Any] = {}
        self.accepted: dict[str, int] = {}
        self.delivered: dict[str, int] = {}
        self.seq: dict[str, int] = {}
        self.max_token = 0
        self.n_groups = 0

    def _open(self) -> LeaseTable:
        return LeaseTable.from_journal(
            self.path, lease_ttl_s=TTL, clock=self.clock, config=self.config, **PLAIN
        )

    leases = Bundle("leases")

    def _pending(self) -> list[str]:
        return [r for r in self.requests if r not in self.done and r not in self.holder]

    def _queue_order(self) -> list[str]:
        def key(rid: str) -> tuple[int, float, int]:
            r = self.requests[rid]
            return (-r.priority, float("inf") if r.deadline is None else r.deadline, self.seq[rid])

        return sorted(self._pending(), key=key)

    @rule(
        size=st.integers(1, 3),
        steps=st.integers(1, 4),
        priority=st.integers(0, 2),
        deadline=st.none() | st.floats(0, 100),
    )
    def submit(self, size: int, steps: int, priority: int, deadline: float | None) -> None:
        gid = f"g{self.n_groups}"
        self.n_groups += 1
        batch = [
            req(f"{gid}r{i}", gid, num_steps=steps, priority=(priority + i) % 3, deadline=deadline)
            for i in range(size)
        ]
        self.table.submit(batch)
        self.groups[gid] = [r.request_id for r in batch]
        for r in batch:
            self.seq[r.request_id] = len(self.seq)
            self.requests[r.request_id] = r
            self.snap[r.request_id] = None
            self.old_tokens[r.request_id] = []

    @rule(target=leases, worker=st.sampled_from(workers), n=st.integers(0, 3))
    def pull(self, worker: str, n: int) -> Any:
        expected = self._queue_order()[:n]
        got = self.table.pull(worker, n)
        assert [lease.request.request_id for lease in got] == expected
        for lease in got:
            rid = lease.request.request_id
            assert lease.token > self.max_token, "tokens must strictly increase"
            self.max_token = lease.token
            assert lease.resume_from == self.snap[rid], "resume from the latest commit"
            assert lease.expires_at == self.clock.now + TTL
            self.holder[rid] = lease
        return multiple(*got)

    def _current(self, lease: Lease) -> bool:
        cur = self.holder.get(lease.request.request_id)
        return cur is not None and cur.token == lease.token

    @rule(lease=leases, advance=st.integers(1, 4))
    def commit(self, lease: Lease, advance: int) -> None:
        rid = lease.request.request_id
        last = self.snap[rid]
        step = (0 if last is None else last.step) + advance
        snap = Snapshot(step=step, payload=f"{rid}@{step}/{lease.token}")
        if self._current(lease) and step <= lease.request.num_steps:
            assert self.table.commit(rid, lease.token, snap) is True
            self.snap[rid] = snap
        elif self._current(lease):
            with pytest.raises(ValueError, match="must be an int in"):
                self.table.commit(rid, lease.token, snap)
        else:
            assert self.table.commit(rid, lease.token, snap) is False

    @rule(lease=leases)
    def complete(self, lease: Lease) -> None:
        rid = lease.request.request_id
        result = f"result-{rid}-{lease.token}"
        ok = self.table.complete(rid, lease.token, result)
        assert ok == self._current(lease), "only the current lease may complete"
        if ok:
            self.accepted[rid] = self.accepted.get(rid, 0) + 1
            self.done[rid] = result
            del self.holder[rid]
            self.snap[rid] = None

    @rule(worker=st.sampled_from(workers))
    def renew(self, worker: str) -> None:
        held = [rid for rid, lease in self.holder.items() if lease.worker_id == worker]
        assert self.table.renew(worker) == len(held)
        for rid in held:
            self.holder[rid] = _with_expiry(self.holder[rid], self.clock.now + TTL)

    @rule(dt=st.sampled_from([0.5, 3.0, TTL]))
    def advance_clock(self, dt: float) -> None:
        self.clock.now += dt

    @rule()
    def expire(self) -> None:
        due = {rid for rid, lease in self.holder.items() if lease.expires_at <= self.clock.now}
        assert set(self.table.expire()) == due
        for rid in due:
            self._lose(rid)

    def _lose(self, rid: str) -> None:
        self.old_tokens[rid].append(self.holder.pop(rid).token)

    @rule(worker=st.sampled_from(workers), data=st.data())
    def release(self, worker: str, data: st.DataObject) -> None:
        held = [rid for rid, lease in self.holder.items() if lease.worker_id == worker]
        snaps = {}
        for rid in held:
            if data.draw(st.booleans(), label=f"snapshot {rid}"):
                last = self.snap[rid]
                step = min((0 if last is None else last.step) + 1, self.requests[rid].num_steps)
                snaps[rid] = Snapshot(step=step, payload=f"rel-{rid}@{step}")
        assert self.table.release(worker, snaps) == len(held)
        for rid, snap in snaps.items():
            last = self.snap[rid]
            if last is None or snap.step > last.step:
                self.snap[rid] = snap
        for rid in held:
            self._lose(rid)

    @rule()
    def take_groups(self) -> None:
        expected = {
            gid
            for gid, rids in self.groups.items()
            if gid not in self.delivered and all(r in self.done for r in rids)
        }
        got = self.table.take_completed_groups()
        assert {gid for gid, _ in got} == expected
        for gid, results in got:
            assert [r.request_id for r, _ in results] == self.groups[gid]
            assert [res for _, res in results] == [self.done[r] for r in self.groups[gid]]
            self.delivered[gid] = self.delivered.get(gid, 0) + 1

    @rule(compact=st.booleans())
    def crash_and_replay(self, compact: bool) -> None:
        """The scheduler dies (kill -9: nothing is closed); a new one replays the journal."""
        if compact:
            self.table.compact_journal()
        expected = self.table.durable_state()
        journal = self.table.journal
        assert journal is not None
        journal._file.close()  # only to drop the flock, as the dead process would
        self.table = self._open()
        assert self.table.durable_state() == expected, "replayed state differs from live"
        for rid in list(self.holder):
            self._lose(rid)  # leases of the dead scheduler count as expired

    @invariant()
    def exactly_once_so_far(self) -> None:
        assert all(n == 1 for n in self.accepted.values())
        assert all(n == 1 for n in self.delivered.values())

    @invariant()
    def gauges_match_model(self) -> None:
        stats = self.table.statistics()
        assert stats.active_leases == len(self.holder)
        assert stats.queued == len(self._pending())

    def teardown(self) -> None:
        """Drain: every request submitted must come out exactly once, in its group."""
        try:
            self.clock.now += 2 * TTL
            self.table.expire()
            self.holder.clear()
            for lease in self.table.pull("drain", len(self.requests)):
                assert lease.resume_from == self.snap[lease.request.request_id]
                assert self.table.complete(lease.request.request_id, lease.token, "drained")
                self.accepted[lease.request.request_id] = 1
            for gid, _ in self.table.take_completed_groups():
                self.delivered[gid] = self.delivered.get(gid, 0) + 1
            assert sorted(self.delivered) == sorted(self.groups)
            assert all(n == 1 for n in self.delivered.values())
            assert sorted(self.accepted) == sorted(self.requests)
            assert self.table.statistics().active_leases == 0
        finally:
            journal = self.table.journal
            if journal is not None:
                journal.close()
            shutil.rmtree(self.dir, ignore_errors=True)


def _with_expiry(lease: Lease, expires_at: float) -> Lease:
    return Lease(lease.request, lease.worker_id, lease.token, expires_at, lease.resume_from)


LeaseMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_lease_state_machine = LeaseMachine.TestCase
