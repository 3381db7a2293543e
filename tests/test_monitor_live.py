"""The live monitor against the real main job: `spotlight run` for a few iterations, piped,
with TensorBoard on; its own metrics.jsonl rendered by the view with no empty panel; one
output line per event or iteration; the tracker's events read back; uptime after setup."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from spotlight.actors.monitor.metrics import read_jsonl
from spotlight.actors.monitor.records import RECORDS
from tests.monitor_text import PANELS, is_empty, panel_bodies, render_metrics
from tests.test_run_system import SMALL, _spotlight_run

ITERATIONS = 3


@pytest.fixture(scope="module")
def main_job(micro_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `spotlight run` (no spot pool, TensorBoard on), stdout piped: what every test reads."""
    run_dir = tmp_path_factory.mktemp("live") / "run"
    proc = _spotlight_run(
        ["--no-spot", "--iterations", str(ITERATIONS), "--run-dir", str(run_dir),
         "--set", f"trainer.base={micro_base}", *SMALL,
         "--set", "tracking.tensorboard=true", "--set", "tracking.val_images=2"],
        timeout=400,  # wall time on a loaded 2-core box; ~60 s idle
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"run_dir": run_dir, "stdout": proc.stdout}


@pytest.mark.timeout(600)
def test_the_view_of_the_main_jobs_own_metrics_has_no_empty_panel(main_job: dict[str, Any]) -> None:
    records = read_jsonl(main_job["run_dir"] / "metrics.jsonl")
    assert not records.bad_lines
    by_topic = Counter(r.topic for r in records.records)
    # every topic the view draws was published by the main job itself, and parses as its record
    for topic in ("node", "cost", "runtime", "scheduler", "trainer", "validation", "val_images",
                  "exploration", "planner", "rewards", "rollouts"):  # fmt: skip
        assert by_topic[topic] > 0, (topic, by_topic)
    for r in records.records:
        if r.topic in RECORDS:
            RECORDS[r.topic].parse(r.fields)  # raises, naming the field, if one drifted
    sources = {r.source for r in records.records if r.topic == "scheduler"}
    assert sources == {"explore_scheduler", "rollout_scheduler"}
    text = render_metrics(main_job["run_dir"])
    assert "unreadable" not in text, text
    bodies = panel_bodies(text)
    for title in PANELS:  # every panel, Rewards and Rollouts included: the default run has both
        assert bodies.get(title) and not is_empty(bodies[title][0]), (title, text)
    assert f"iter {ITERATIONS}  loss" in text
    assert "explore  q" in text and "rollout  q" in text
    assert f"iter {ITERATIONS}: 0 explored + 4 random seeds" in text  # no explorers: fallbacks
    assert "in all: 0 explored, 12 random" in text
    assert "0: 0 with notice, 0 silent; steps lost 0" in text
    assert "od0" in text and "1 node: 1 alive" in text and "/h now" in text
    assert "planner" in text and "PlannerActor" in text  # the monitor's own node's actors


@pytest.mark.timeout(300)
def test_piped_output_is_one_line_per_event_or_iteration(main_job: dict[str, Any]) -> None:
    lines = [json.loads(line) for line in main_job["stdout"].splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert events[0] == "start" and events[-1] == "report"
    assert "state" not in events  # the whole state only with --full-state
    iterations = [line["iteration"] for line in lines if line["event"] == "iteration"]
    assert iterations == list(range(1, ITERATIONS + 1))  # each exactly once, in order
    first = next(line for line in lines if line["event"] == "iteration")
    assert {"reward_mean", "loss", "iteration_s", "explored", "random", "cost_usd"} <= set(first)
    assert first["random"] == 4 and first["explored"] == 0
    vals = [line["iteration"] for line in lines if line["event"] == "validation"]
    assert vals == [0, 2, 3]
    assert {"event": "node", "node": "od0", "kind": "ondemand", "status": "alive"} in lines
    # a few short lines, not the whole state (~2 KB) every 2 s; the final report is one line
    running = [line for line in main_job["stdout"].splitlines() if '"event": "report"' not in line]
    assert len(running) == len(lines) - 1 and sum(map(len, running)) < 3000, running


@pytest.mark.timeout(300)
def test_tensorboard_holds_the_runs_metrics_and_validation_images(main_job: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = main_job["run_dir"]
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("train/reward_mean")]
    assert steps == list(range(1, ITERATIONS + 1))
    assert [e.step for e in events.Scalars("val/score")] == [0, 2, 3]
    assert [e.value for e in events.Scalars("spot/live_nodes")][-1] == 0  # no spot pool
    assert [e.step for e in events.Images("val/images/00")] == [0, 2, 3]
    assert sorted(p.name for p in (run_dir / "validation").iterdir()) == [
        "iter_000000.png", "iter_000002.png", "iter_000003.png",
    ]  # fmt: skip


def test_uptime_starts_after_the_policy_spec_is_ready(
    micro_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The monitor is spawned after the base is built or loaded, so its uptime is the run's."""
    from spotlight.config import apply_overrides
    from spotlight.config.system import SystemConfig
    from spotlight.nodes import ondemand
    from spotlight.nodes.serving import Serving
    from spotlight.runtime import Runtime, RuntimeConfig

    real = ondemand._policy_spec
    ready_at: list[float] = []

    def slow_spec(*args: Any) -> Any:
        time.sleep(1.0)  # a base build (minutes for the shipped base's first use)
        spec = real(*args)
        ready_at.append(time.time())
        return spec

    monkeypatch.setattr(ondemand, "_policy_spec", slow_spec)
    cfg = apply_overrides(SystemConfig(), [f"trainer.base={micro_base}", "spot.enabled=false"])
    cfg = ondemand.resolve_ondemand_gpus(cfg, 1)  # as Controller.run does before spawning

    async def main() -> float:
        controller = ondemand.Controller(
            cfg,
            tmp_path,
            resume=False,
            serving=Serving(runtime=RuntimeConfig()),
            on_event=lambda *a, **k: None,
        )
        async with Runtime() as rt:
            actors = await controller._spawn(rt, cfg.trainer_loop().algo.sampler, False)
            state = await actors.monitor.snapshot.ask(timeout=30.0)
            await actors.publisher.close()
            await actors.metrics.close()
            return float(state.started_at)

    started_at = asyncio.run(main())
    assert ready_at and started_at >= ready_at[0]
