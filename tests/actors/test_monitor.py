"""Monitor: the pure store, and the actor across two runtimes (snapshot, subscribe, file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spotlight.actors.monitor.actor import Monitor, MonitorConfig, MonitorState, MonitorStore
from spotlight.actors.monitor.metrics import MetricRecord, MetricsPublisher, read_jsonl
from spotlight.runtime import Runtime
from tests.actors.metric_records import trainer_fields, validation_fields
from tests.runtime.helpers import FAST, arun

pytestmark = pytest.mark.timeout(60)


def rec(topic: str, source: str, t: float, **fields: Any) -> MetricRecord:
    return MetricRecord(time=t, source=source, topic=topic, fields=fields)


def test_store_keeps_latest_per_source_and_bounded_histories() -> None:
    clock = [100.0]
    store = MonitorStore(
        MonitorConfig(history_len=3, max_sources_per_topic=2), clock=lambda: clock[0]
    )
    batch = [rec("trainer", "tr", float(i), iteration=i, loss=1.0 / (i + 1), big=[1, 2])
             for i in range(5)]  # fmt: skip
    assert store.apply(batch, publisher="tr", dropped=2) == 5
    assert store.apply([rec("node", n, 1.0, status="alive") for n in ("a", "b", "c")]) == 3
    assert store.apply(["junk", {"topic": "node"}]) == 0  # malformed items: counted, ignored
    store.apply([rec("node", "b", 2.0, status="gone")])
    state = store.snapshot(run_dir="/r")
    assert state.latest["trainer"]["tr"]["fields"]["iteration"] == 4
    # history: the last 3, scalar fields only
    assert [h["fields"] for h in state.history["trainer"]] == [
        {"iteration": i, "loss": 1.0 / (i + 1)} for i in (2, 3, 4)
    ]
    # at most 2 sources per topic: the least recently updated ("a") was forgotten
    assert list(state.latest["node"]) == ["c", "b"]
    assert state.latest["node"]["b"]["fields"]["status"] == "gone"
    assert state.records == 9 and state.rejected == 2
    assert state.records_by_topic == {"trainer": 5, "node": 4}
    assert state.publisher_drops == {"tr": 2} and state.version == 3
    assert state.time == 100.0 and state.run_dir == "/r"
    # the copy is detached from the store
    store.apply([rec("trainer", "tr", 9.0, iteration=9)])
    assert state.latest["trainer"]["tr"]["fields"]["iteration"] == 4
    assert len(state.history["trainer"]) == 3 and state.history["trainer"][-1]["time"] == 4.0
    summary = state.summary()
    assert summary["latest"]["node"]["b"] == {"status": "gone"} and "history" not in summary


def test_config_validates() -> None:
    with pytest.raises(ValueError, match="history_len=0"):
        MonitorConfig(history_len=0)
    with pytest.raises(ValueError, match="keepalive_s=0"):
        MonitorConfig(keepalive_s=0)
    with pytest.raises(ValueError, match="self_report_s=0"):
        MonitorConfig(self_report_s=0)


def test_monitor_reports_its_own_runtime_actors() -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt:
            config = MonitorConfig(self_report_s=0.05, node_id="od-0")
            ref = await rt.spawn(Monitor, config, name="monitor")
            async with ref.subscribe.stream(0.05, timeout=10.0) as states:
                async for state in states:
                    if state.records_by_topic.get("runtime", 0) >= 2:  # periodic, not once
                        break
            fields = state.latest["runtime"]["od-0"]["fields"]
            assert fields["address"] == rt.address
            assert [(a["name"], a["class"], a["state"]) for a in fields["actors"]] == [
                ("monitor", "Monitor", "running")
            ]
            await rt.stop_actor("monitor")
            assert not [t for t in rt._tasks if "self-report" in t.get_name()]

    arun(main())


def test_monitor_across_two_runtimes_snapshot_subscribe_and_file(tmp_path: Path) -> None:
    """Monitor in runtime A; a publisher and a subscriber in runtime B (over loopback)."""

    async def main() -> None:
        async with Runtime(FAST) as a, Runtime(FAST) as b:
            config = MonitorConfig(run_dir=str(tmp_path), keepalive_s=0.5, self_report_s=None)
            await a.spawn(Monitor, config, name="monitor")
            ref = await b.lookup(a.address, "monitor", timeout=10.0)
            pub = MetricsPublisher(ref, source="trainer-0", runtime=b)
            empty = await ref.snapshot.ask(timeout=10.0)
            assert isinstance(empty, MonitorState) and empty.records == 0

            seen: list[MonitorState] = []
            async with ref.subscribe.stream(0.05, timeout=10.0) as states:
                async for state in states:
                    seen.append(state)
                    n = len(seen)
                    if n <= 3:  # each state we see triggers the next record
                        fields = trainer_fields(n, reward_mean=0.1 * n, loss=1.0 / n)
                        pub.publish("trainer", **fields)
                    elif state.records >= 3:
                        break
            assert seen[0].records == 0 and seen[-1].records == 3
            versions = [s.version for s in seen]
            assert versions == sorted(versions)
            assert [h["fields"]["iteration"] for h in seen[-1].history["trainer"]] == [1, 2, 3]
            assert seen[-1].subscribers == 1

            # a quiet monitor still sends keepalive states (same version) to its viewers
            async with ref.subscribe.stream(0.05, timeout=10.0) as states:
                quiet = [s.version async for s in _take(states, 2)]
            assert quiet[0] == quiet[1]

            pub.publish_stats("validation", validation_fields(3, 0.7))
            assert await pub.flush()
            stats = await ref.statistics.ask(timeout=10.0)
            assert stats["records"] == 4 and stats["lines_written"] == 4
            assert stats["subscribers"] == 0  # both streams closed
            await pub.close()
        result = read_jsonl(tmp_path / "metrics.jsonl")
        assert not result.bad_lines
        assert [(r.topic, r.source) for r in result.records] == [("trainer", "trainer-0")] * 3 + [
            ("validation", "trainer-0")
        ]
        assert [r.seq for r in result.records] == [1, 2, 3, 4]

    arun(main())


async def _take(states: Any, n: int) -> Any:
    count = 0
    async for state in states:
        yield state
        count += 1
        if count >= n:
            return


def test_subscribe_refuses_a_bad_rate() -> None:
    from spotlight.runtime.errors import RemoteError

    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = await rt.spawn(Monitor, name="monitor")
            with pytest.raises((RemoteError, ValueError), match="every_s"):
                async for _ in ref.subscribe.stream(-1.0, timeout=10.0):
                    pass

    arun(main())
