"""scripts/bench_e2e.py's analysis on made-up run directories: target, crossings, cost, ratios."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from spotlight.config import SystemConfig, apply_overrides
from tests.script_module import load_script

REPO = Path(__file__).resolve().parent.parent
OD_PRICE, SPOT_PRICE = 12.29, 3.32  # the aws-p5 preset (spotlight/actors/spot/prices.py)


def _bench() -> ModuleType:
    return load_script("bench_e2e")


def _write_run(
    root: Path, mode: str, scores: list[float], trace: Path, *, restarts: int = 0
) -> None:
    run_dir = root / mode
    run_dir.mkdir(parents=True)
    sets = [f"spot.trace={trace}", "spot.time_scale=6", "spot.notice_s=0", "trainer.num_steps=6"]
    sets += ["trainer.prompts_per_iter=8", "trainer.group_size=8"]  # 64 samples, not defaults
    if mode == "ondemand":
        sets.append("spot.enabled=false")
    cfg = apply_overrides(SystemConfig(), sets)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
    lines, metrics = [], []
    for i, score in enumerate(scores):
        k = 2 * i
        if k > 0:
            lines.append({"kind": "iteration", "iteration": k - 1, "wall_s": 10.0 * (k - 1)})
            lines.append({"kind": "iteration", "iteration": k, "wall_s": 10.0 * k})
            for it in (k - 1, k):
                fields = {"iteration": it, "rollout_s": 0.384, "train_s": 1.0, "reward_s": 0.1}
                metrics.append({"topic": "trainer", "fields": fields | {"iteration_s": 10.0}})
        lines.append({"kind": "validation", "iteration": k, "val_score": score, "val_spread": 0.04})
    (run_dir / "trainer.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    spot_on = mode != "ondemand"
    report: dict[str, Any] = {
        "iterations": 2 * (len(scores) - 1),
        "wall_s": 20.0 * len(scores),
        "exploration": {"explored_seeds": 10 if spot_on else 0, "fallback_seeds": 2},
        "spot": {
            "enabled": spot_on,
            "preemptions_with_notice": 1 if spot_on else 0,
            "preemptions_silent": 1 if spot_on else 0,
            "work_lost_steps": 3,
            "nodes_started": 1 if spot_on else 0,
        },
        "stats": {"scheduler": {"leases": {"expired": 2, "released": 1, "re_leases": 3}}},
        "cost": {"prices": {"name": "aws-p5"}},
    }
    (run_dir / "report.json").write_text(json.dumps(report))
    if restarts:
        pool = [{"restarts": restarts, "relaunched": 2 * restarts}]
        (run_dir / "restart_pool.json").write_text(json.dumps(pool))


def test_target_crossings_costs_and_ratios(tmp_path: Path) -> None:
    bench = _bench()
    trace = tmp_path / "t.csv"
    trace.write_text("t_s,event,node\n0,add,a\n1000,remove,a\n")
    # ondemand: smoothed (window 2) 0.40 0.41 0.43 0.45 0.47 -> best gain 0.07,
    # target 0.40 + 0.75 x 0.07 = 0.4525, first crossed at iteration 8
    _write_run(tmp_path, "ondemand", [0.40, 0.42, 0.44, 0.46, 0.48], trace)
    # spotlight: smoothed 0.40 0.43 0.47 -> crossed at iteration 4
    _write_run(tmp_path, "spotlight", [0.40, 0.46, 0.48], trace)
    # restart: never gets there
    _write_run(tmp_path, "restart", [0.40, 0.41, 0.42], trace, restarts=4)
    settings = bench.QUICK | {"smooth": 2, "target_fraction": 0.75, "time_scale": 6.0}
    out = bench.combine(tmp_path, settings, quick=True)

    assert out["target_val_score"] == pytest.approx(0.4525)
    assert out["iters_to_target"] == {"ondemand": 8, "restart": None, "spotlight": 4}
    assert out["iters_ratio_vs_ondemand"] == {"ondemand": 1.0, "restart": None, "spotlight": 2.0}
    assert out["restart"]["not_reached_within_iterations"] == 4
    # cost on one clock (wall x 6): ondemand 80 s -> 480 s of one on-demand GPU;
    # spotlight 40 s -> 240 s on-demand + node a alive those 240 s at the spot price
    od = 480 / 3600 * OD_PRICE
    sl = 240 / 3600 * (OD_PRICE + SPOT_PRICE)
    assert out["cost_to_target"]["ondemand"] == pytest.approx(od)
    assert out["cost_to_target"]["spotlight"] == pytest.approx(sl)
    assert out["cost_ratio_vs_ondemand"]["spotlight"] == pytest.approx(od / sl)
    assert out["wall_s_to_target"] == {"ondemand": 80.0, "restart": None, "spotlight": 40.0}
    # preemptions, steps lost (3 drained + 2 expired leases x 6 steps), restarts
    assert out["spotlight"]["preemptions"] == 2 and out["ondemand"]["preemptions"] == 0
    assert out["spotlight"]["steps_lost"] == 3 + 2 * 6
    assert out["restart"]["restarts"] == 4 and out["restart"]["nodes_relaunched"] == 8
    assert out["targets_met"] == {
        "spotlight_iters_ratio_ge_2": True,
        "spotlight_cost_ratio_ge_1.4": od / sl >= 1.4,
    }
    # the curves compared where all three validated; the projection needs all three
    assert out["common_iteration"] == 4
    assert out["smoothed_at_common_iteration"]["spotlight"] == pytest.approx(0.47)
    assert "restart" in out["projection"]["skipped"]
    assert math.isfinite(out["noise"]["validation_noise_sd"])
    json.dumps(out)  # what the bench writes


def test_projection_runs_from_measured_step_costs(tmp_path: Path) -> None:
    bench = _bench()
    trace = tmp_path / "t.csv"
    trace.write_text("t_s,event,node\n0,add,a\n5,notice,a\n50,remove,a\n60,add,b\n")
    _write_run(tmp_path, "ondemand", [0.40, 0.42, 0.44, 0.46, 0.48], trace)
    _write_run(tmp_path, "spotlight", [0.40, 0.46, 0.48], trace)
    _write_run(tmp_path, "restart", [0.40, 0.44, 0.47], trace)
    settings = bench.QUICK | {"smooth": 2, "target_fraction": 0.75, "time_scale": 6.0}
    proj = bench.combine(tmp_path, settings, quick=True)["projection"]
    assert proj["label"].startswith("PROJECTION")
    assert proj["iterations_needed"] == {"ondemand": 8, "restart": 4, "spotlight": 4}
    # 0.384 s of rollout per 64 samples x 6 steps = 1 ms per sample-step, measured
    assert proj["measured_wall_s"]["step_gpu_s"] == pytest.approx(0.001)
    assert proj["measured_wall_s"]["train_step_s"] == pytest.approx(1.1)
    assert proj["assumptions"] and all(isinstance(a, str) for a in proj["assumptions"])
    assert set(proj["strategies"]) == {
        "ondemand", "ondemand_same_gpus", "restart", "spotlight_no_explore", "spotlight",
    }  # fmt: skip


def test_projection_runs_on_the_runs_clock(tmp_path: Path) -> None:
    """Measured wall costs x time_scale: the trace's preemptions meet the iterations as in
    the runs (unscaled, a whole tiny run fits before the first spot node is ready)."""
    bench = _bench()
    trace = tmp_path / "t.csv"
    trace.write_text("t_s,event,node\n0,add,a\n0,add,b\n300,remove,a\n2000,remove,b\n")
    _write_run(tmp_path, "ondemand", [0.40, 0.42, 0.44, 0.46, 0.48], trace)
    _write_run(tmp_path, "spotlight", [0.40, 0.46, 0.48], trace)
    _write_run(tmp_path, "restart", [0.40, 0.44, 0.47], trace)
    settings = bench.QUICK | {"smooth": 2, "target_fraction": 0.75, "time_scale": 6.0}
    proj = bench.combine(tmp_path, settings, quick=True)["projection"]
    cfg = proj["config"]
    assert cfg["step_gpu_s"] == pytest.approx(0.001 * 6)
    assert cfg["train_step_s"] == pytest.approx(1.1 * 6)
    assert cfg["loss_detect_s"] == pytest.approx(bench.liveness_s() * 6)
    sweep = proj["by_compute_scale"]
    assert set(sweep) == {f"{k:g}" for k in bench.PROJECTION_COMPUTE_SCALES}
    # 4 spot-strategy iterations of (64 x 6 x 0.006 + 6.6) s take ~36 trace seconds at x1,
    # before node a's removal at 300 s; at x10 (~340 s) the runs meet it
    for strategy in ("restart", "spotlight"):
        assert sweep["1"][strategy]["preemptions"] == 0
        assert sweep["10"][strategy]["preemptions"] == 1
        assert sweep["10"][strategy]["wall_s"] > 9 * sweep["1"][strategy]["wall_s"]
    assert sweep["10"]["ondemand"]["cost_ratio_vs_ondemand"] == pytest.approx(1.0)


def test_projection_config_rejects_a_bad_time_scale() -> None:
    bench = _bench()
    costs = {"step_gpu_s": 0.001, "train_step_s": 1.0, "rollout_samples": 4, "denoise_steps": 2}
    with pytest.raises(ValueError, match="time_scale"):
        bench.projection_config(
            costs, ondemand_gpus=1, gpus_per_node=1, weight_load_s=1, reform_s=0.1, time_scale=0
        )
