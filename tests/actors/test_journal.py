"""The lease journal: record round trips, torn tails, corruption, fsync policies,
compaction, replay after a real kill -9."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Literal

import msgpack
import numpy as np
import pytest
import torch

from spotlight.actors.scheduling.journal import (
    MAGIC,
    Committed,
    Completed,
    Delivered,
    EpochStarted,
    Journal,
    JournalConfig,
    JournalCorruptError,
    Submitted,
)
from spotlight.actors.scheduling.leases import LeaseTable
from spotlight.actors.scheduling.work import SampleRequest, Snapshot

TTL = 10.0


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def req(rid: str, group: str = "g", num_steps: int = 4) -> SampleRequest:
    return SampleRequest(
        request_id=rid, group_id=group, prompt=rid, seed=1, num_steps=num_steps, kind="explore"
    )


def plain_encode(obj: Any) -> list[bytes]:
    return [msgpack.packb(obj, use_bin_type=True)]


def plain_decode(frames: list[bytes]) -> Any:
    return msgpack.unpackb(frames[0], raw=False)


PLAIN: dict[str, Any] = {"encode_payload": plain_encode, "decode_payload": plain_decode}
FAST = JournalConfig(fsync="never", compact_above_bytes=None)


def open_table(path: Path, clock: FakeClock | None = None, **kw: Any) -> LeaseTable:
    kw.setdefault("config", FAST)
    for k, v in PLAIN.items():
        kw.setdefault(k, v)
    return LeaseTable.from_journal(path, lease_ttl_s=TTL, clock=clock or FakeClock(), **kw)


def close(table: LeaseTable) -> None:
    assert table.journal is not None
    table.journal.close()


def sample_journal(path: Path) -> list[int]:
    """A journal with one record of each kind; returns the record start offsets."""
    with Journal(path, config=FAST, **PLAIN) as j:
        j.log_epoch(1)
        j.log_submit([req("a"), req("b")])
        j.log_commit("a", 5, Snapshot(step=1, payload={"x": [1, 2]}))
        j.log_complete("b", 6, "w", "result-b")
        j.log_commit("a", 5, Snapshot(step=2, payload="second"))
    data = path.read_bytes()
    offsets, off = [], len(MAGIC)
    while off < len(data):
        offsets.append(off)
        off += 12 + int.from_bytes(data[off : off + 4], "little")
    assert off == len(data)
    return offsets


# ---------------------------------------------------------------- format


def test_records_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "j"
    sample_journal(path)
    with Journal(path, config=FAST, **PLAIN) as j:
        assert j.recovered() == [
            EpochStarted(epoch=1),
            Submitted(requests=[req("a"), req("b")]),
            Committed(request_id="a", token=5, snapshot=Snapshot(step=1, payload={"x": [1, 2]})),
            Completed(request_id="b", token=6, worker_id="w", result="result-b"),
            Committed(request_id="a", token=5, snapshot=Snapshot(step=2, payload="second")),
        ]
        j.log_delivered(["g"])
    with Journal(path, config=FAST, **PLAIN) as j:
        assert j.recovered()[-1] == Delivered(group_ids=["g"])
        assert j.statistics().truncated_tail_bytes == 0


def test_default_codec_keeps_tensors_bit_exact(tmp_path: Path) -> None:
    """Snapshots hold bf16 latents, float32 log-probs, numpy arrays: all come back bit-exact."""
    g = torch.Generator().manual_seed(0)
    payload: dict[str, Any] = {
        "latent": torch.randn(2, 64, 16, generator=g).to(torch.bfloat16),
        "log_probs": torch.randn(7, generator=g),
        "trajectory": [torch.randn(3, 3, generator=g) for _ in range(2)],
        "noise_pos": np.arange(5, dtype=np.int64),
        "step": 3,
    }
    path = tmp_path / "j"
    table = LeaseTable.from_journal(
        path, lease_ttl_s=TTL, clock=FakeClock(), config=JournalConfig(fsync="never")
    )
    table.submit([req("a", num_steps=8)])
    (lease,) = table.pull("w", 1)
    assert table.commit("a", lease.token, Snapshot(step=3, payload=payload))
    close(table)
    table = LeaseTable.from_journal(path, lease_ttl_s=TTL, clock=FakeClock())
    (lease,) = table.pull("w2", 1)
    assert lease.resume_from is not None and lease.resume_from.step == 3
    got = lease.resume_from.payload
    assert got["latent"].dtype == torch.bfloat16
    assert torch.equal(got["latent"].view(torch.int16), payload["latent"].view(torch.int16))
    assert torch.equal(got["log_probs"], payload["log_probs"])
    assert all(
        torch.equal(a, b) for a, b in zip(got["trajectory"], payload["trajectory"], strict=True)
    )
    assert np.array_equal(got["noise_pos"], payload["noise_pos"]) and got["step"] == 3
    close(table)


def test_bad_magic_and_second_opener(tmp_path: Path) -> None:
    path = tmp_path / "j"
    path.write_bytes(b"hello world, not a journal")
    with pytest.raises(
        JournalCorruptError, match=r"j is corrupt at byte offset 0: not a Spotlight"
    ):
        Journal(path, **PLAIN)
    other = tmp_path / "k"
    with Journal(other, **PLAIN), pytest.raises(RuntimeError, match="open in another process"):
        Journal(other, **PLAIN)


@pytest.mark.parametrize(
    "config", [{"fsync": "sometimes"}, {"fsync_interval_ms": 0}, {"compact_above_bytes": 0}]
)
def test_config_validates(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        JournalConfig(**config)


# ---------------------------------------------------------------- torn tail / corruption


def test_every_torn_tail_is_cut(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Cut the file at every byte inside the last record: the first four always survive."""
    path = tmp_path / "j"
    offsets = sample_journal(path)
    whole = path.read_bytes()
    for cut in range(offsets[-1] + 1, len(whole)):
        path.write_bytes(whole[:cut])
        caplog.clear()
        with (
            caplog.at_level(logging.WARNING, logger="spotlight.actors.scheduling.journal"),
            Journal(path, config=FAST, **PLAIN) as j,
        ):
            assert len(j.recovered()) == 4, cut
            assert j.statistics().truncated_tail_bytes == cut - offsets[-1]
        assert path.stat().st_size == offsets[-1], "torn tail truncated on disk"
        assert len(caplog.records) == 1 and "torn tail" in caplog.records[0].getMessage()


@pytest.mark.parametrize("tail", ["zeros", "bad_crc_last"])
def test_zero_fill_and_bad_last_crc_are_torn(tmp_path: Path, tail: str) -> None:
    path = tmp_path / "j"
    offsets = sample_journal(path)
    data = bytearray(path.read_bytes())
    if tail == "zeros":
        data += bytes(4096)  # the file grew but the data never reached the disk
        keep = 5
    else:
        data[-1] ^= 0xFF  # the last record's body is garbage: never acknowledged
        keep = 4
    path.write_bytes(bytes(data))
    with Journal(path, config=FAST, **PLAIN) as j:
        assert len(j.recovered()) == keep
    assert path.stat().st_size == (len(data) - 4096 if tail == "zeros" else offsets[-1])


@pytest.mark.parametrize("where", ["body", "length"])
def test_corruption_in_the_middle_raises(tmp_path: Path, where: str) -> None:
    path = tmp_path / "j"
    offsets = sample_journal(path)
    data = bytearray(path.read_bytes())
    bad = offsets[2]
    data[bad + (20 if where == "body" else 1)] ^= 0x01
    path.write_bytes(bytes(data))
    what = "record body CRC mismatch" if where == "body" else "record header CRC mismatch"
    with pytest.raises(JournalCorruptError, match=f"corrupt at byte offset {bad}: {what}") as info:
        Journal(path, config=FAST, **PLAIN)
    assert info.value.path == path and info.value.offset == bad
    assert path.read_bytes() == bytes(data), "a corrupt journal is never modified"


def test_crc_valid_garbage_raises(tmp_path: Path) -> None:
    import struct
    import zlib

    path = tmp_path / "j"
    body = msgpack.packb(["?", 1])
    header = struct.pack(
        "<III", len(body), zlib.crc32(struct.pack("<I", len(body))), zlib.crc32(body)
    )
    path.write_bytes(MAGIC + header + body)
    with pytest.raises(
        JournalCorruptError, match=r"offset 8: record passes its CRC but does not parse"
    ):
        Journal(path, config=FAST, **PLAIN)


@pytest.mark.parametrize("prefix", [b"", b"SPL"])
def test_torn_file_header_is_recreated(tmp_path: Path, prefix: bytes) -> None:
    path = tmp_path / "j"
    path.write_bytes(prefix)
    with Journal(path, config=FAST, **PLAIN) as j:
        assert j.recovered() == []
    assert path.read_bytes() == MAGIC


# ---------------------------------------------------------------- fsync policies


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_fsync_policies(tmp_path: Path) -> None:
    mono = FakeMonotonic()
    policies: list[tuple[Literal["always", "never"], int]] = [("always", 5), ("never", 1)]
    for policy, expected in policies:
        with Journal(tmp_path / policy, config=JournalConfig(fsync=policy), **PLAIN) as j:
            j.log_epoch(1)  # always synced: fencing depends on it
            for i in range(4):
                j.log_submit([req(f"r{i}", f"g{i}")])
            assert j.statistics().fsyncs == expected, policy
    cfg = JournalConfig(fsync="interval", fsync_interval_ms=100)
    with Journal(tmp_path / "interval", config=cfg, monotonic=mono, **PLAIN) as j:
        j.log_submit([req("a", "ga")])
        mono.now += 0.05
        j.log_submit([req("b", "gb")])
        assert j.statistics().fsyncs == 0
        mono.now += 0.06
        j.log_submit([req("c", "gc")])  # 110 ms since the last sync
        assert j.statistics().fsyncs == 1
        j.log_submit([req("d", "gd")])
        j.sync_if_due()
        assert j.statistics().fsyncs == 1
        mono.now += 0.1
        j.sync_if_due()  # the owner's timer syncs a quiet journal
        assert j.statistics().fsyncs == 2
        j.sync_if_due()
        assert j.statistics().fsyncs == 2  # nothing pending


# ---------------------------------------------------------------- replay


def test_replay_resumes_leases_from_last_commit_and_fences(tmp_path: Path) -> None:
    path = tmp_path / "j"
    clock = FakeClock()
    table = open_table(path, clock)
    table.submit([req("a", "g1", 8), req("b", "g1", 8), req("c", "g2")])
    la, lb, lc = table.pull("w", 3)
    table.commit("a", la.token, Snapshot(step=2, payload="a2"))
    table.commit("a", la.token, Snapshot(step=5, payload="a5"))
    table.complete("c", lc.token, "rc")
    live = table.durable_state()
    close(table)  # the process dies with three leases outstanding

    table = open_table(path, clock)
    assert table.durable_state() == live
    assert table.statistics().active_leases == 0 and table.statistics().queued == 2
    assert table.commit("a", la.token, Snapshot(step=6, payload="old lease")) is False
    assert table.complete("b", lb.token, "old lease") is False
    new = {lease.request.request_id: lease for lease in table.pull("w2", 5)}
    assert new["a"].resume_from == Snapshot(step=5, payload="a5")
    assert new["b"].resume_from is None
    assert min(lease.token for lease in new.values()) > max(la.token, lb.token, lc.token)
    assert [g for g, _ in table.take_completed_groups()] == ["g2"]
    close(table)
    table = open_table(path, clock)
    assert table.take_completed_groups() == [], "a delivered group is never delivered again"
    with pytest.raises(ValueError, match="duplicate request_id 'c'"):
        table.submit([req("c", "g9")])
    close(table)


def test_failed_journal_write_leaves_table_unchanged(tmp_path: Path) -> None:
    def encode(obj: Any) -> list[bytes]:
        if obj == "unencodable":
            raise TypeError("cannot encode")
        return plain_encode(obj)

    table = open_table(tmp_path / "j", encode_payload=encode)
    table.submit([req("a")])
    (lease,) = table.pull("w", 1)
    with pytest.raises(TypeError):
        table.commit("a", lease.token, Snapshot(step=1, payload="unencodable"))
    with pytest.raises(TypeError):
        table.complete("a", lease.token, "unencodable")
    assert table.durable_state()["requests"]["a"][1:] == ("queued", None, None)
    assert table.complete("a", lease.token, "fine")
    close(table)


# ---------------------------------------------------------------- compaction


def test_compaction_shrinks_and_replays_same_state(tmp_path: Path) -> None:
    path = tmp_path / "j"
    clock = FakeClock()
    table = open_table(path, clock)
    for i in range(50):
        table.submit([req(f"r{i}", f"g{i}", 8)])
        (lease,) = table.pull("w", 1)
        for step in range(1, 8):
            table.commit(f"r{i}", lease.token, Snapshot(step=step, payload="x" * 200))
        if i % 10:
            table.complete(f"r{i}", lease.token, f"res{i}")
    table.take_completed_groups()
    table.submit([req("late", "gl")])
    live = table.durable_state()
    before = path.stat().st_size
    table.compact_journal()
    after = path.stat().st_size
    assert after < before / 5
    table.submit([req("after", "ga")])  # appends continue on the new file
    live_after = table.durable_state()
    close(table)
    table = open_table(path, clock)
    assert table.durable_state() == live_after
    del live_after["requests"]["after"]
    live_after["queue_order"].remove("after")
    assert live_after == live
    with pytest.raises(ValueError, match="duplicate request_id 'r1'"):
        table.submit([req("r1", "gx")])  # delivered before compaction: still taken
    assert not (tmp_path / "j.compact").exists()
    close(table)


def test_automatic_compaction(tmp_path: Path) -> None:
    path = tmp_path / "j"
    cfg = JournalConfig(fsync="never", compact_above_bytes=4096)
    table = open_table(path, config=cfg)
    for i in range(200):
        table.submit([req(f"r{i}", f"g{i}")])
        (lease,) = table.pull("w", 1)
        table.complete(f"r{i}", lease.token, "y" * 100)
        table.take_completed_groups()
    assert table.journal is not None
    assert table.journal.statistics().compactions >= 1
    assert path.stat().st_size < 2 * 4096 + 3000  # ids of delivered requests stay
    close(table)


def test_leftover_compaction_file_is_harmless(tmp_path: Path) -> None:
    path = tmp_path / "j"
    (tmp_path / "j.compact").write_bytes(b"half-written by a crashed compaction")
    table = open_table(path)
    table.submit([req("a")])
    table.compact_journal()
    close(table)
    with Journal(path, config=FAST, **PLAIN) as j:
        assert j.recovered() == [EpochStarted(epoch=1), Submitted(requests=[req("a")])]


# ---------------------------------------------------------------- a real kill -9


CHILD = textwrap.dedent(
    """
    import signal, sys, msgpack
    from spotlight.actors.scheduling.journal import JournalConfig
    from spotlight.actors.scheduling.leases import LeaseTable, SampleRequest, Snapshot
    enc = lambda o: [msgpack.packb(o, use_bin_type=True)]
    dec = lambda f: msgpack.unpackb(f[0], raw=False)
    table = LeaseTable.from_journal(sys.argv[1], lease_ttl_s=10.0, clock=lambda: 0.0,
        config=JournalConfig(fsync=sys.argv[2]), encode_payload=enc, decode_payload=dec)
    table.submit([SampleRequest(request_id=f"r{i}", group_id=f"g{i}", prompt="p", seed=i,
                                num_steps=20, kind="rollout") for i in range(8)])
    leases = table.pull("w", 8)
    for step in range(1, 20):
        for lease in leases:
            assert table.commit(lease.request.request_id, lease.token,
                                Snapshot(step=step, payload=[step, lease.request.seed]))
        if step == 10:
            for lease in leases[:4]:
                table.complete(lease.request.request_id, lease.token, "half")
            leases = leases[4:]
            print("committed", flush=True)
    print("waiting", flush=True)
    signal.pause()  # until the parent's SIGKILL
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("policy", ["never", "always"])
def test_kill_9_loses_no_acknowledged_work(tmp_path: Path, policy: str) -> None:
    """A scheduler process killed with SIGKILL: every commit it acknowledged is replayed."""
    path = tmp_path / "j"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), policy], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "committed"
        assert proc.stdout.readline().strip() == "waiting"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    table = open_table(path)
    state = table.durable_state()["requests"]
    assert sum(status == "done" for _, status, _, _ in state.values()) == 4
    leases = table.pull("w2", 8)
    assert len(leases) == 4
    assert all(
        lease.resume_from == Snapshot(step=19, payload=[19, lease.request.seed]) for lease in leases
    )
    close(table)


class _FailingFile:
    """Wraps the journal's file: the next write lands half its bytes, then ENOSPC."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.fail_next = True

    def write(self, blob: bytes) -> int:
        if self.fail_next:
            self.fail_next = False
            self.real.write(blob[: len(blob) // 2])
            self.real.flush()
            raise OSError(28, "No space left on device")
        return int(self.real.write(blob))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_failed_append_is_cut_so_later_records_stay_readable(tmp_path: Path) -> None:
    path = tmp_path / "j"
    table = open_table(path)
    assert table.journal is not None
    table.journal._file = _FailingFile(table.journal._file)  # type: ignore[assignment]
    with pytest.raises(OSError, match="No space left"):
        table.submit([req("a", "ga")])
    assert table.statistics().queued == 0, "a failed write changes nothing"
    table.submit([req("b", "gb")])
    close(table)
    table = open_table(path)  # no JournalCorruptError: the half record was cut
    assert list(table.durable_state()["requests"]) == ["b"]
    close(table)


def test_batch_shares_one_fsync(tmp_path: Path) -> None:
    table = open_table(tmp_path / "j", config=JournalConfig(fsync="always"))
    journal = table.journal
    assert journal is not None
    base = journal.statistics().fsyncs
    table.submit([req(f"r{i}", f"g{i}") for i in range(8)])
    leases = table.pull("w", 8)
    with journal.batch():
        for lease in leases:
            table.commit(lease.request.request_id, lease.token, Snapshot(step=1, payload=None))
        with journal.batch():  # nested: still one fsync, at the outer exit
            table.complete(leases[0].request.request_id, leases[0].token, "r")
        assert journal.statistics().fsyncs == base + 1  # only the submit so far
    assert journal.statistics().fsyncs == base + 2
    close(table)


def test_release_makes_its_snapshots_durable_with_one_fsync(tmp_path: Path) -> None:
    table = open_table(tmp_path / "j", config=JournalConfig(fsync="always"))
    assert table.journal is not None
    table.submit([req(f"r{i}", f"g{i}") for i in range(3)])
    table.pull("w", 3)
    before = table.journal.statistics()
    snaps = {f"r{i}": Snapshot(step=2, payload=i) for i in range(3)}
    assert table.release("w", snaps) == 3
    after = table.journal.statistics()
    assert (after.records_written - before.records_written, after.fsyncs - before.fsyncs) == (3, 1)
    close(table)
    table = open_table(tmp_path / "j")
    assert [lease.resume_from for lease in table.pull("w2", 3)] == list(snaps.values())
    close(table)
