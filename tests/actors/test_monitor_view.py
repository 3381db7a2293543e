"""The monitor view: every section from a synthetic state, "—" for missing ones, 100×30."""

from __future__ import annotations

import dataclasses
import math
from io import StringIO

import pytest
from rich.console import Console

from spotlight.actors.monitor.actor import MonitorConfig, MonitorState, MonitorStore
from spotlight.actors.monitor.metrics import MetricRecord
from spotlight.actors.monitor.view import DASH, render, sparkline

NOW = 1_800_000_000.0


def synthetic_state() -> MonitorState:
    """A cluster in mid-run: 1 on-demand + 6 spot nodes, an SP group, 60 iterations."""
    clock = [NOW - 600]
    store = MonitorStore(MonitorConfig(), clock=lambda: clock[0])
    recs: list[MetricRecord] = []

    def add(t: float, source: str, topic: str, **fields: object) -> None:
        recs.append(MetricRecord(time=t, source=source, topic=topic, fields=dict(fields)))

    add(NOW - 2, "od-0", "node", kind="ondemand", status="alive", gpus=2, gpu_hours=0.33,
        cost_usd=4.1)  # fmt: skip
    statuses = ["alive", "alive", "notice", "gone", "alive", "gone"]
    for i, status in enumerate(statuses):
        add(NOW - 5 - i, f"spot-{i}", "node", kind="spot", status=status, gpus=1,
            gpu_hours=0.1 * i, cost_usd=0.33 * i)  # fmt: skip
    add(NOW - 1, "meter", "cost", ondemand_gpu_hours=0.33, spot_gpu_hours=1.5, ondemand_usd=4.1,
        spot_usd=4.98, total_usd=9.08)  # fmt: skip
    add(NOW - 1, "sp-0", "sp_group", epoch=3, degree=2, members=["spot-0", "spot-1"],
        status="sampling", node="spot-0")  # fmt: skip
    add(NOW - 1, "od-0", "runtime", address="tcp://127.0.0.1:5555", actors=[
        {"name": "trainer", "class": "Trainer", "generation": 1, "state": "running",
         "restarts": 0},
        {"name": "scheduler", "class": "SchedulerActor", "generation": 2, "state": "running",
         "restarts": 1},
    ])  # fmt: skip
    add(NOW - 1, "scheduler", "scheduler", queue_depth=12, active_leases=4,
        leases={"re_leases": 3, "expired": 1, "completed": 120, "stale_results": 0,
                "steps_recomputed": 5})  # fmt: skip
    for it in range(60):
        reward = 0.4 + 0.3 * (1 - math.exp(-it / 20)) + 0.02 * math.sin(it)
        add(NOW - 300 + it * 5, "trainer", "trainer", iteration=it, loss=0.1 / (1 + it),
            reward_mean=reward, reward_std=0.2, zero_std_fraction=0.125)  # fmt: skip
        if it % 5 == 0:
            add(NOW - 300 + it * 5, "eval", "validation", iteration=it,
                score=0.45 + 0.2 * (1 - math.exp(-it / 25)))  # fmt: skip
    add(NOW - 100, "planner", "exploration", budget_s=60.0, budget_used_s=45.0, fallbacks=2,
        seeds=512)  # fmt: skip
    add(NOW - 200, "spot-3", "preemption", node="spot-3", kind="notice", lead_s=120, steps_lost=0)
    add(NOW - 150, "spot-5", "preemption", node="spot-5", kind="silent", steps_lost=2)
    recs.sort(key=lambda r: r.time)
    store.apply(recs, publisher="trainer", dropped=3)
    clock[0] = NOW
    return store.snapshot(run_dir="runs/demo")


def to_text(state: MonitorState, width: int = 100) -> str:
    console = Console(file=StringIO(), width=width, height=30, record=True, color_system=None)
    console.print(render(state))
    return console.export_text()


def test_every_section_renders_from_a_synthetic_state() -> None:
    text = to_text(synthetic_state())
    assert "spotlight monitor  run runs/demo  up 0:10:00  records 86  drops 3" in text
    # nodes: class, status, GPU-hours, cost, the metered total
    assert "od-0" in text and "on-dem" in text and "spot-5" in text
    for status in ("alive", "notice", "gone"):
        assert status in text
    assert "7 nodes: 4 alive 1 notice 2 gone · 1.83 GPU-h" in text and "$9.08" in text
    assert "spot $4.98" in text
    # actors and SP groups: epoch, degree, restarts
    assert "sp-0" in text and "SP group" in text and "sampling" in text
    assert "scheduler  Schedule…  od-0      2    —  running ↻1" in text
    # trainer and validation
    assert "iter 59" in text and "loss 0.001667" in text and "zero-std 12%" in text
    assert "reward 0.697 ± 0.200" in text
    assert "score 0.628 @ iter 55  best 0.628  (12 pts)" in text
    assert sum(ch in "▁▂▃▄▅▆▇█" for ch in text) >= 40 + 12  # both sparklines drawn
    # scheduler, exploration, preemptions
    assert "queue 12  leases 4  re-leases 3  expired 1" in text
    assert "done 120  stale 0  recomputed steps 5" in text
    assert "budget used 75% (45.0 of 60.0 s)" in text and "fallbacks 2  seeds 512" in text
    assert "2: 1 with notice, 1 silent; steps lost 2" in text
    assert "spot-5  silent, lost 2 steps" in text and "spot-3  notice 120s, lost 0 steps" in text


def test_view_fits_100_by_30() -> None:
    text = to_text(synthetic_state(), width=100)
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 30, "\n".join(lines)
    assert max(len(line) for line in lines) <= 100


def test_missing_sections_render_a_dash() -> None:
    text = to_text(MonitorState.empty(now=NOW))
    for title in ("Nodes", "Actors & SP groups", "Trainer", "Validation", "Scheduler",
                  "Exploration", "Preemptions"):  # fmt: skip
        assert title in text
    body = text.split("\n", 1)[1]
    assert body.count(DASH) >= 5 + 6 + 7  # every empty section, every empty table cell
    # a partly assembled system: only a trainer so far
    store = MonitorStore(clock=lambda: NOW)
    store.apply([MetricRecord(time=NOW, source="t", topic="trainer", fields={"iteration": 1})])
    text = to_text(store.snapshot())
    assert "iter 1  loss —" in text and "reward —" in text
    section = text[text.index("Validation") :]
    assert DASH in section.splitlines()[1]


def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([1.0, None, float("nan"), 3.0]) == "▁  █"
    assert sparkline([2, 2, 2]) == "▅▅▅"
    assert sparkline([]) == DASH and sparkline([None]) == DASH
    assert len(sparkline(list(range(100)), width=10)) == 10
    with pytest.raises(ValueError, match="width=0"):
        sparkline([1], width=0)


def test_rewards_section_appears_once_reward_actors_report() -> None:
    assert "Rewards" not in to_text(synthetic_state())  # rewards.workers: 0 publishes nothing
    state = synthetic_state()
    store = MonitorStore(clock=lambda: NOW)
    fields = {"workers": 2, "calls": 9, "last_call_s": 0.0123, "remote_images": 570,
              "local_images": 6, "retries": 1}  # fmt: skip
    store.apply([MetricRecord(time=NOW, source="trainer", topic="rewards", fields=fields)])
    state = dataclasses.replace(state, latest={**state.latest, **store.snapshot().latest})
    text = to_text(state)
    assert "Rewards" in text and "workers 2  calls 9  last 12 ms" in text
    assert "images 570 remote, 6 in process  retries 1" in text
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 30 and max(len(line) for line in lines) <= 100, "\n".join(lines)


def test_rollouts_section_shows_the_spot_share_of_the_last_batch() -> None:
    assert "Rollouts" not in to_text(synthetic_state())  # rollout.workers: trainer
    state = synthetic_state()
    store = MonitorStore(clock=lambda: NOW)
    fields = {"iteration": 12, "samples": 64, "seconds": 1.234, "spot_samples": 24,
              "spot_workers": 2,
              "by_worker": {"rollout_local": 40, "spot-1/rollout": 16, "spot-2/rollout": 8}}  # fmt: skip
    store.apply([MetricRecord(time=NOW, source="trainer", topic="rollouts", fields=fields)])
    state = dataclasses.replace(state, latest={**state.latest, **store.snapshot().latest})
    text = to_text(state)
    assert "Rollouts" in text
    assert "iter 12: 64 in 1.23 s, 24 by 2 spot workers" in text, text
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 30 and max(len(line) for line in lines) <= 100, "\n".join(lines)


def test_a_rejoined_node_is_neither_a_notice_nor_a_silent_preemption() -> None:
    store = MonitorStore(MonitorConfig(), clock=lambda: NOW)
    recs = [
        MetricRecord(time=NOW - 9, source="s1", topic="preemption",
                     fields={"node": "s1", "kind": "silent", "steps_lost": None}),
        MetricRecord(time=NOW - 8, source="s1", topic="preemption",
                     fields={"node": "s1", "kind": "rejoined", "steps_lost": None}),
        MetricRecord(time=NOW - 5, source="s2", topic="preemption",
                     fields={"node": "s2", "kind": "notice", "lead_s": 30, "steps_lost": 4}),
    ]  # fmt: skip
    store.apply(recs, publisher="coordinator", dropped=0)
    text = to_text(store.snapshot(run_dir="runs/r"), width=140)
    assert "3: 1 with notice, 1 silent, 1 rejoined; steps lost 4" in text
    assert "s1  rejoined" in text and "rejoined, lost" not in text  # it lost nothing
