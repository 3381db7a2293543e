"""Metrics: plain values, the record, the JSON-lines file, and a publisher that never blocks."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from spotlight.actors.monitor.actor import Monitor, MonitorConfig
from spotlight.actors.monitor.metrics import (
    JsonlWriter,
    MetricRecord,
    MetricsPublisher,
    PublisherConfig,
    plain,
    read_jsonl,
)
from spotlight.actors.scheduling.leases import LeaseStats
from spotlight.runtime import Runtime, endpoint
from tests.actors.metric_records import trainer_fields
from tests.runtime.helpers import FAST, arun

pytestmark = pytest.mark.timeout(60)


async def until(cond: Callable[[], bool], within_s: float = 20.0, what: str = "condition") -> None:
    """Wait (yielding to the loop) until ``cond()``; fail with ``what`` after ``within_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.01)


def _lease_stats() -> LeaseStats:
    return LeaseStats(
        queued=3, active_leases=2, done_undelivered=0, submitted=9, leases_granted=7,
        re_leases=1, expired=1, released=0, commits=5, completed=4, groups_delivered=1,
        stale_commits=0, stale_results=0, steps_recomputed=2,
        per_worker_completions={"w0": 4}, per_worker_steps={"w0": 40},
    )  # fmt: skip


# ============================================================================ values


def test_plain_converts_stats_numpy_torch_and_non_finite() -> None:
    value = plain(
        {
            "stats": _lease_stats(),
            "np": np.float32(0.5),
            "np_int": np.int64(7),
            "t": torch.tensor(2.0),
            "tuple": (1, 2.5, "x"),
            "nan": float("nan"),
            "inf": float("inf"),
            3: None,
        }
    )
    assert value["stats"]["re_leases"] == 1 and value["stats"]["per_worker_steps"] == {"w0": 40}
    assert value["np"] == 0.5 and type(value["np"]) is float
    assert value["np_int"] == 7 and type(value["np_int"]) is int
    assert value["t"] == 2.0 and value["tuple"] == [1, 2.5, "x"]
    assert value["nan"] is None and value["inf"] is None and value["3"] is None
    json.dumps(value, allow_nan=False)  # strict JSON


def test_plain_refuses_objects_and_tensors_with_a_message() -> None:
    with pytest.raises(ValueError, match="of type object is not plain data"):
        plain({"x": object()})
    with pytest.raises(ValueError, match="not plain data"):
        plain(torch.zeros(3))


def test_record_json_round_trip_and_validation() -> None:
    rec = MetricRecord(time=1.5, source="trainer", topic="trainer", fields={"loss": 0.1}, seq=4)
    assert MetricRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    with pytest.raises(ValueError, match="missing keys"):
        MetricRecord.from_json({"time": 1.0})
    with pytest.raises(ValueError, match="'fields' must be an object"):
        MetricRecord.from_json({"time": 1.0, "source": "a", "topic": "b", "fields": [1]})
    with pytest.raises(ValueError, match="'time' must be a number"):
        MetricRecord.from_json({"time": "x", "source": "a", "topic": "b", "fields": {}})


def test_publisher_config_validates() -> None:
    with pytest.raises(ValueError, match="max_pending=0"):
        PublisherConfig(max_pending=0)
    with pytest.raises(ValueError, match="send_timeout_s=0"):
        PublisherConfig(send_timeout_s=0)


# ============================================================================ the file


def test_jsonl_writer_appends_flushed_parseable_lines(tmp_path: Path) -> None:
    writer = JsonlWriter.for_run_dir(tmp_path / "run")
    recs = [
        MetricRecord(time=float(i), source="s", topic="trainer", fields={"iteration": i})
        for i in range(5)
    ]
    for rec in recs[:3]:
        assert writer.write(rec)
    # flushed: another reader sees every line while the writer is still open
    assert [r.fields["iteration"] for r in read_jsonl(writer.path).records] == [0, 1, 2]
    assert not writer.write({"bad": float("inf")})  # not strict JSON: refused and counted
    assert writer.errors == 1 and "ValueError" in (writer.last_error or "")
    writer.close()
    with JsonlWriter.for_run_dir(tmp_path / "run") as again:  # reopen appends
        for rec in recs[3:]:
            again.write(rec)
    assert writer.path == tmp_path / "run" / "metrics.jsonl"
    lines = writer.path.read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["topic"] == "trainer" for line in lines)
    assert read_jsonl(writer.path).records == recs


def test_read_jsonl_skips_corrupt_lines_with_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    good = json.dumps(MetricRecord(time=1.0, source="a", topic="t", fields={}).to_json())
    path.write_text(f"{good}\nnot json\n\n{good}\n[1, 2]\n{good[:20]}")  # truncated last line
    result = read_jsonl(path)
    assert len(result.records) == 2 and result.blank_lines == 1
    assert [n for n, _ in result.bad_lines] == [2, 5, 6]


# ============================================================================ publisher


def test_publisher_without_monitor_drops_and_counts() -> None:
    async def main() -> None:
        pub = MetricsPublisher(None, source="t", config=PublisherConfig(retry_s=0.05))
        assert pub.publish("trainer", **trainer_fields(1, loss=0.5))
        pub.publish_stats("lease_table", _lease_stats(), queue_depth=3)  # a topic without a record
        await until(lambda: pub.statistics().dropped_failed == 2, what="two failed drops")
        stats = pub.statistics()
        assert stats.sent == 0 and stats.pending == 0 and "no monitor" in (stats.last_error or "")
        with pytest.raises(ValueError, match="topic 'Bad Topic'"):
            pub.publish("Bad Topic", x=1)
        # a topic with a typed record refuses fields that do not parse as it, naming them
        with pytest.raises(ValueError, match=r"'trainer' record \(TrainerRecord\): loss missing"):
            pub.publish("trainer", **{k: v for k, v in trainer_fields(2).items() if k != "loss"})
        with pytest.raises(ValueError, match=r"iteration='3' is not int"):
            pub.publish("trainer", **(trainer_fields(2) | {"iteration": "3"}))
        await pub.close()
        assert not pub.publish("trainer", x=1)  # closed: ignored, never raises

    arun(main())


class GatedMonitor(Monitor):
    """A monitor that takes each batch only when the test opens the gate (a slow monitor)."""

    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__(MonitorConfig(self_report_s=None))
        self.gate = gate

    @endpoint
    async def records(self, batch: list[MetricRecord], source: str = "", dropped: int = 0) -> None:
        await self.gate.wait()
        await super().records(batch, source, dropped)


def test_publisher_never_blocks_on_a_slow_monitor_and_accounts_for_every_record() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        config = dataclasses.replace(FAST, credit_window=2)
        async with Runtime(config) as rt:
            ref = await rt.spawn(GatedMonitor, gate, name="monitor")
            cfg = PublisherConfig(max_pending=16, batch_size=4, send_timeout_s=0.2, retry_s=0.05)
            pub = MetricsPublisher(ref, source="trainer", runtime=rt, config=cfg)
            # publish is a plain function: 500 calls cannot wait on the monitor, and the
            # buffer stays bounded by max_pending (oldest records pushed out, counted)
            for i in range(500):
                pub.publish("trainer", **trainer_fields(i))
            stats = pub.statistics()
            assert stats.pending == 16 and stats.dropped_full == 484
            # the sender fills the 2 credits, then its next tell times out: dropped, counted
            await until(lambda: pub.statistics().send_failures >= 1, what="a failed send")
            assert pub.statistics().pending <= 16
            gate.set()
            for i in range(500, 520):
                pub.publish("trainer", **trainer_fields(i))
            assert await pub.flush(timeout=20.0)
            stats = pub.statistics()
            assert stats.published == 520
            assert stats.published == stats.sent + stats.dropped + stats.pending + stats.in_flight
            assert stats.pending == stats.in_flight == 0
            snap = await ref.snapshot.ask(timeout=10.0)
            assert snap.records == stats.sent  # local delivery: everything sent arrived
            assert snap.latest["trainer"]["trainer"]["fields"]["iteration"] == 519
            assert 0 < snap.publisher_drops["trainer"] <= stats.dropped
            await pub.close()

    arun(main())


def test_publisher_to_an_unreachable_monitor_drops_within_bounds() -> None:
    async def main() -> None:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        async with Runtime(dataclasses.replace(FAST, credit_window=4)) as rt:
            ghost = rt.ref(f"tcp://127.0.0.1:{port}", "monitor")
            cfg = PublisherConfig(max_pending=8, batch_size=1, send_timeout_s=0.3, retry_s=0.05)
            pub = MetricsPublisher(ghost, source="x", runtime=rt, config=cfg)
            for i in range(100):
                pub.publish("trainer", **trainer_fields(i))
            assert pub.statistics().pending == 8
            done = lambda: pub.statistics().sent + pub.statistics().dropped == 100  # noqa: E731
            await until(done, what="every record sent or dropped")
            stats = pub.statistics()
            # a tell has no receipt: up to credit_window batches leave (per connection
            # attempt) before back-pressure or peer loss makes the sender drop and count
            assert stats.dropped_full == 92 and stats.sent + stats.dropped_failed == 8
            assert stats.dropped_failed >= 1 and stats.pending == 0
            assert stats.last_error and stats.last_error.split(":")[0] in {"Timeout", "PeerLost"}
            await pub.close()

    arun(main())


def test_publish_from_a_worker_thread_is_handed_to_the_loop() -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = await rt.spawn(Monitor, MonitorConfig(self_report_s=None), name="monitor")
            pub = MetricsPublisher(ref, source="trainer", runtime=rt)

            def work() -> None:
                assert threading.current_thread() is not threading.main_thread()
                for i in range(10):
                    pub.publish("trainer", **trainer_fields(i))

            await asyncio.to_thread(work)
            await until(lambda: pub.statistics().published == 10, what="10 records")
            assert await pub.flush()
            snap = await ref.snapshot.ask(timeout=10.0)
            assert snap.records == 10 and [
                h["fields"]["iteration"] for h in snap.history["trainer"]
            ] == list(range(10))
            await pub.close()

    arun(main())
