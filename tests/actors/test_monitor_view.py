"""The monitor view: every section from a synthetic state of typed records, "—" for missing
ones, "unreadable" for a record that does not parse, 100×30."""

from __future__ import annotations

import dataclasses
import math
from io import StringIO

import pytest
from rich.console import Console

from spotlight.actors.monitor.actor import MonitorConfig, MonitorState, MonitorStore
from spotlight.actors.monitor.metrics import MetricRecord
from spotlight.actors.monitor.records import (
    CostRecord,
    ExplorationRecord,
    NodeRecord,
    PlannerRecord,
    PreemptionRecord,
    Record,
    RewardsRecord,
    RolloutsRecord,
    RuntimeRecord,
    SchedulerRecord,
    SPGroupRecord,
    TrainerRecord,
    ValidationRecord,
)
from spotlight.actors.monitor.view import DASH, render, sparkline

NOW = 1_800_000_000.0


def rec(t: float, source: str, record: Record) -> MetricRecord:
    return MetricRecord(time=t, source=source, topic=record.TOPIC, fields=record.fields())


def _sched(queue: int, done: int, **kw: int) -> SchedulerRecord:
    base = dict(queue_depth=queue, active_leases=4, submitted=done + queue + 4, completed=done,
                re_leases=3, expired=1, stale_results=0, steps_recomputed=5, workers=6)  # fmt: skip
    return SchedulerRecord(**(base | kw))


def synthetic_records() -> list[MetricRecord]:
    """A cluster in mid-run: 1 on-demand + 6 spot nodes, an SP group, 60 iterations."""
    recs = [rec(NOW - 2, "od-0", NodeRecord(kind="ondemand", status="alive", gpus=2,
                                            gpu_hours=0.33, cost_usd=4.1))]  # fmt: skip
    for i, status in enumerate(["alive", "alive", "notice", "gone", "alive", "gone"]):
        recs.append(rec(NOW - 5 - i, f"spot-{i}", NodeRecord(
            kind="spot", status=status, gpus=1, gpu_hours=0.1 * i, cost_usd=0.33 * i)))  # fmt: skip
    recs.append(rec(NOW - 1, "coordinator", CostRecord(
        ondemand_gpu_hours=0.33, spot_gpu_hours=1.5, ondemand_usd=4.1, spot_usd=4.98,
        total_usd=9.08, usd_per_hour=36.86, live_nodes=4, alive_spot_gpus=3,
        preemptions_notice=1, preemptions_silent=1, rejoined=0, work_lost_steps=2)))  # fmt: skip
    recs.append(rec(NOW - 1, "sp/spot-0", SPGroupRecord(
        node="spot-0", group="sp-0", epoch=3, degree=2, members=2, active=2,
        status="sampling")))  # fmt: skip
    recs.append(rec(NOW - 1, "od-0", RuntimeRecord(address="tcp://127.0.0.1:5555", peers=7, actors=[
        {"name": "trainer", "class": "Trainer", "generation": 1, "state": "running", "restarts": 0},
        {"name": "scheduler", "class": "SchedulerActor", "generation": 2, "state": "running",
         "restarts": 1},
    ])))  # fmt: skip
    recs.append(rec(NOW - 1, "explore_scheduler", _sched(12, 120)))
    recs.append(rec(NOW - 1, "rollout_scheduler", _sched(0, 3840, re_leases=48)))
    for it in range(60):
        reward = 0.4 + 0.3 * (1 - math.exp(-it / 20)) + 0.02 * math.sin(it)
        recs.append(rec(NOW - 300 + it * 5, "trainer", TrainerRecord(
            iteration=it, loss=0.1 / (1 + it), reward_mean=reward, reward_std=0.2,
            zero_std_fraction=0.125, iteration_s=4.8, weight_version=it, world=1)))  # fmt: skip
        if it % 5 == 0:
            recs.append(rec(NOW - 300 + it * 5, "trainer", ValidationRecord(
                iteration=it, score=0.45 + 0.2 * (1 - math.exp(-it / 25)), spread=0.01,
                val_s=0.4)))  # fmt: skip
    recs.append(rec(NOW - 6, "trainer", ExplorationRecord(
        iteration=59, batch_id="b59", mode="explored", seeds=56, fallbacks=8,
        fallback_prompts=1, budget_s=60.0, budget_used_s=45.0, seeds_total=5631,
        fallbacks_total=370)))  # fmt: skip
    recs.append(rec(NOW - 4, "planner", PlannerRecord(
        batch_id="b60", budget_gpu_s=10.0, used_gpu_s=1.0, explored_seeds=1, fallbacks=63,
        fallback_prompts=8, fallbacks_total=371, explorers=4, seconds_per_seed=0.25)))  # fmt: skip
    recs.append(rec(NOW - 200, "spot-3", PreemptionRecord(node="spot-3", kind="notice", lead_s=120,
                                                          steps_lost=0)))  # fmt: skip
    recs.append(rec(NOW - 150, "spot-5", PreemptionRecord(node="spot-5", kind="silent",
                                                          lead_s=0.0, steps_lost=2)))  # fmt: skip
    return sorted(recs, key=lambda r: r.time)


def synthetic_state(extra: list[MetricRecord] | None = None) -> MonitorState:
    clock = [NOW - 600]
    store = MonitorStore(MonitorConfig(), clock=lambda: clock[0])
    store.apply(synthetic_records() + (extra or []), publisher="trainer", dropped=3)
    clock[0] = NOW
    return store.snapshot(run_dir="runs/demo")


def to_text(state: MonitorState, width: int = 100) -> str:
    console = Console(file=StringIO(), width=width, height=30, record=True, color_system=None)
    console.print(render(state))
    return console.export_text()


def test_every_section_renders_from_a_synthetic_state() -> None:
    text = to_text(synthetic_state())
    assert "spotlight monitor  run runs/demo  up 0:10:00  records 88  drops 3" in text
    # nodes: class, status, GPU-hours, cost, the metered total and the rate now
    assert "od-0" in text and "on-dem" in text and "spot-5" in text
    for status in ("alive", "notice", "gone"):
        assert status in text
    assert "7 nodes: 4 alive 1 notice 2 gone · 1.83 GPU-h" in text
    assert "$9.08 (on-demand $4.10, spot $4.98) · $36.86/h now" in text
    # actors and SP groups: epoch, degree, restarts
    assert "sp/spot-0" in text and "SP group" in text and "sampling" in text
    assert "scheduler  Schedule…  od-0      2    —  running ↻1" in text
    # trainer and validation
    assert "iter 59  loss 0.001667  zero-std 12%  4.8 s" in text
    assert "reward 0.697 ± 0.200" in text
    assert "score 0.628 @ iter 55  best 0.628  (12 pts)" in text
    assert sum(ch in "▁▂▃▄▅▆▇█" for ch in text) >= 40 + 12  # both sparklines drawn
    # both schedulers, by name
    assert "explore  q 12  leased 4  done 120  6 workers" in text
    assert "rollout  q 0  leased 4  done 3,840  6 workers" in text
    assert "re-leased 48  expired 1  stale 0  redone 5" in text
    # exploration: the trainer's record (the seeds it trained on) and the planner's beside it
    assert "iter 59: 56 explored + 8 random seeds" in text
    assert "in all: 5,631 explored, 370 random" in text
    assert "budget 45.0/60.0 GPU-s (75%)  4 explorers" in text
    # preemptions: the coordinator's tally, the spot nodes live, the last events
    assert "2: 1 with notice, 1 silent; steps lost 2" in text
    assert "spot-5  silent 0s, lost 2 steps" in text and "spot-3  notice 120s, lost 0 steps" in text
    assert DASH not in text.split("\n", 1)[1].replace(f"  {DASH}  running", "")


def test_view_fits_100_by_30() -> None:
    text = to_text(synthetic_state(), width=100)
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 30, "\n".join(lines)
    assert max(len(line) for line in lines) <= 100


def test_missing_sections_render_a_dash() -> None:
    text = to_text(MonitorState.empty(now=NOW))
    for title in ("Nodes", "Actors & SP groups", "Trainer", "Validation", "Schedulers",
                  "Exploration", "Preemptions"):  # fmt: skip
        assert title in text
    body = text.split("\n", 1)[1]
    assert body.count(DASH) >= 5 + 6 + 7  # every empty section, every empty table cell
    # a partly assembled system: only a trainer so far
    store = MonitorStore(clock=lambda: NOW)
    t = TrainerRecord(iteration=1, loss=None, reward_mean=None, reward_std=None,
                      zero_std_fraction=None, iteration_s=2.0, weight_version=1, world=1)  # fmt: skip
    store.apply([rec(NOW, "trainer", t)])
    text = to_text(store.snapshot())
    assert "iter 1  loss —" in text and "reward — ± —" in text
    section = text[text.index("Validation") :]
    assert DASH in section.splitlines()[1]


def test_a_record_that_does_not_parse_is_shown_as_unreadable_not_as_a_dash() -> None:
    bad = [
        MetricRecord(time=NOW, source="planner", topic="exploration", fields={"budget_gpu_s": 9}),
        MetricRecord(time=NOW, source="rogue", topic="scheduler", fields={"queue": 1}),
    ]
    text = to_text(synthetic_state(bad), width=140)
    assert "unreadable exploration record from planner" in text
    assert "unreadable scheduler record from rogue" in text
    assert "explore  q 12" in text  # the readable sources still show


def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([1.0, None, float("nan"), 3.0]) == "▁  █"
    assert sparkline([2, 2, 2]) == "▅▅▅"
    assert sparkline([]) == DASH and sparkline([None]) == DASH
    assert len(sparkline(list(range(100)), width=10)) == 10
    with pytest.raises(ValueError, match="width=0"):
        sparkline([1], width=0)


def test_rewards_and_rollouts_sections_appear_once_they_report() -> None:
    text = to_text(synthetic_state())
    assert "Rewards" not in text and "Rollouts" not in text  # workers 0, rollout.workers trainer
    rewards = RewardsRecord(workers=2, calls=9, images=576, chunks=36, remote_images=570,
                            local_images=6, retries=1, seconds=3.0, last_call_s=0.0123)  # fmt: skip
    rollouts = RolloutsRecord(iteration=12, seconds=1.234, samples=64, spot_samples=24,
                              spot_workers=2, by_worker={"rollout_local": 40, "s1/rollout": 24})  # fmt: skip
    state = synthetic_state([rec(NOW, "trainer", rewards), rec(NOW, "trainer", rollouts)])
    text = to_text(dataclasses.replace(state, history={}), width=100)
    assert "Rewards" in text and "workers 2  calls 9  last 12 ms" in text
    assert "images 570 remote, 6 in process  retries 1" in text
    assert "iter 12: 64 in 1.23 s, 24 by 2 spot workers" in text, text


def test_a_rejoined_node_is_neither_a_notice_nor_a_silent_preemption() -> None:
    store = MonitorStore(MonitorConfig(), clock=lambda: NOW)
    recs = [
        rec(NOW - 9, "s1", PreemptionRecord(node="s1", kind="silent", lead_s=0.0, steps_lost=None)),
        rec(NOW - 8, "s1", PreemptionRecord(node="s1", kind="rejoined", lead_s=None, steps_lost=None)),
        rec(NOW - 5, "s2", PreemptionRecord(node="s2", kind="notice", lead_s=30, steps_lost=4)),
    ]  # fmt: skip
    store.apply(recs, publisher="coordinator", dropped=0)
    text = to_text(store.snapshot(run_dir="runs/r"), width=140)
    assert "1: 1 with notice, 0 silent, 1 rejoined; steps lost 4" in text
    assert "s1  rejoined" in text and "rejoined, lost" not in text  # it lost nothing
