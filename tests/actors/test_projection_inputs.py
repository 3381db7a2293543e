"""Projection inputs: shipped traces and presets, bad input, the CLI and its reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spotlight.actors.spot.projection import (
    MEASURED_ITERATIONS,
    Assumptions,
    IterationsToTarget,
    Range,
    cost_preset,
    load_shaped,
    parse_shaped,
    window,
)
from spotlight.actors.spot.projection.costs import COST_PRESETS, qwen_image_step_s
from spotlight.actors.spot.trace import TraceError, parse_trace
from spotlight.cli import main

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
SHIPPED = ("aws_p3_32node_bamboo", "gcp_a100x1_us-east1-b_bamboo")
META = "#@ gpus_per_node: 1\n#@ ondemand_usd_per_gpu_hour: 3\n#@ spot_usd_per_gpu_hour: 1\n"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_real_traces_carry_shape_and_source(name: str) -> None:
    shaped = load_shaped(REPO / "traces" / f"{name}.csv")
    assert shaped.shape.gpus_per_node == 1
    assert shaped.shape.spot_usd_per_gpu_hour < shaped.shape.ondemand_usd_per_gpu_hour
    assert shaped.shape.notice_s == {"aws": 120.0, "gcp": 30.0}[shaped.shape.cloud]
    text = (REPO / "traces" / f"{name}.csv").read_text()
    assert "80809293289419d40a870b4a9ccb8df0082ce3fb" in text and "MIT" in text
    assert shaped.max_gpus() == {"aws": 32, "gcp": 64}[shaped.shape.cloud]


def test_trace_without_instance_metadata_is_refused() -> None:
    with pytest.raises(TraceError, match=r"(?s)no instance metadata.*#@ gpus_per_node"):
        parse_shaped("t_s,event,node\n0,add,a\n", source="bare.csv")
    with pytest.raises(TraceError, match="unknown metadata key 'gpus_per_nod'"):
        parse_shaped("#@ gpus_per_nod: 1\nt_s,event,node\n0,add,a\n", source="typo.csv")
    with pytest.raises(TraceError, match="gpus_per_node must be an int >= 1"):
        parse_shaped(META.replace("node: 1", "node: 0") + "t_s,event,node\n0,add,a\n", source="z")


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown cost preset 'qwen'; valid presets: qwen-image"):
        cost_preset("qwen")


def test_cap_larger_than_the_trace_offers_is_refused() -> None:
    shaped = parse_shaped(META + "t_s,event,node\n0,add,a\n0,add,b\n9,remove,a\n", source="t.csv")
    shaped.check_cap(2)
    with pytest.raises(ValueError, match=r"spot cap 3 GPUs is more than trace t ever offers \(2"):
        shaped.check_cap(3)


@pytest.mark.parametrize("bad", [0.0, -3.0])
def test_non_positive_iterations_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match=r"iterations to target must be > 0.*--iters"):
        IterationsToTarget(random=Range(bad, bad, bad), selection_speedup=Range(1, 1, 1))
    with pytest.raises(ValueError, match="selection speed-up must be > 0"):
        IterationsToTarget(random=Range(5, 5, 5), selection_speedup=Range(bad, bad, bad))


def test_window_starts_a_run_inside_the_trace() -> None:
    t = parse_trace("t_s,event,node\n0,add,a\n10,add,b\n20,notice,a\n30,remove,a\n40,remove,b\n")
    w = window(t, 25)
    assert [(e.t_s, e.event, e.node) for e in w.events] == [
        (0.0, "add", "a"), (0.0, "add", "b"), (0.0, "notice", "a"),
        (5.0, "remove", "a"), (15.0, "remove", "b"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="past the trace's last event"):
        window(t, 50)


def test_measured_defaults_match_the_result_files() -> None:
    """The hard-coded measured inputs are the benchmark files' numbers (rerun -> update)."""
    sel = IterationsToTarget.from_selection_json(RESULTS / "selection.json")
    assert sel.random == MEASURED_ITERATIONS.random
    assert sel.selection_speedup == MEASURED_ITERATIONS.selection_speedup
    assert sel.selection_speedup.median == 1.0 and sel.censored == MEASURED_ITERATIONS.censored
    e2e = json.loads((RESULTS / "e2e.json").read_text())["projection"]["measured_wall_s"]
    sp = json.loads((RESULTS / "elastic_sp.json").read_text())
    lora = json.loads((RESULTS / "lora.json").read_text())
    tiny = COST_PRESETS["tiny-cpu"]
    assert tiny.sample_step_s == e2e["step_gpu_s"]
    assert tiny.train_gpu_s == pytest.approx(e2e["train_step_s"])
    assert tiny.sp_reform_s == sp["reform_p50_s"] and tiny.sp_join_s == sp["join_p50_s"]
    restart = min(
        sp["detail"]["restart"], key=lambda r: abs(r["total"] - sp["restart_baseline_p50_s"])
    )
    assert tiny.process_launch_s == restart["launch_and_load"]
    assert tiny.version_bytes_full == lora["version_bytes_full"]
    q = COST_PRESETS["qwen-image-h100-512"]
    assert q.version_bytes_full == lora["qwen_image_20b"]["version_bytes_full"]
    assert q.version_bytes_lora == lora["qwen_image_20b"]["version_bytes_lora"]


def test_qwen_image_step_from_flops_by_hand() -> None:
    # 512^2: 1024 image + 128 text tokens; 2 x 1152 x 60 x 12 x 3072^2 + 4 x 1152^2 x 3072 x 60
    flops = 2 * 1152 * 60 * 12 * 3072**2 + 4 * 1152**2 * 3072 * 60
    assert qwen_image_step_s(512) == pytest.approx(2 * flops / (989e12 * 0.4))
    assert 0.05 < qwen_image_step_s(512) < 0.15 < qwen_image_step_s(1024) < 0.5
    with pytest.raises(ValueError, match="multiple of 16"):
        qwen_image_step_s(500)


def _cli(argv: list[str]) -> int:
    return main(["cluster", "project", *argv])


def test_cli_table_json_and_pngs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = str(REPO / "traces" / "gcp_a100x1_us-east1-b_bamboo.csv")
    base = ["--trace", trace, "--preset", "qwen-image-h100-512", "--starts", "2"]
    assert _cli(base) == 0
    out = capsys.readouterr().out
    assert "PROJECTION" in out and "(e) spotlight" in out and "censored" in out
    png, heat = tmp_path / "c.png", tmp_path / "h.png"
    assert _cli([*base, "--json", "--png", str(png), "--iters", "6", "--spot-gpus", "4"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["strategies"]) == {
        "ondemand", "ondemand_same_gpus", "restart", "spotlight_no_explore", "spotlight",
    }  # fmt: skip
    assert data["iterations_to_target"]["random"]["median"] == 6
    assert data["median_scenario_runs"]["restart"]["timeline"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert _cli([*base, "--iters", "3", "--heatmap", str(heat)]) == 0
    assert heat.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--iters", "0"], "must be > 0"),
        (["--spot-gpus", "999"], "spot cap 999 GPUs is more than"),
        (["--preset", "nope"], "unknown cost preset 'nope'"),
        (["--iters", "3", "4"], "MEDIAN or MEDIAN LO HI"),
    ],
)
def test_cli_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    trace = str(REPO / "traces" / "aws_p3_32node_bamboo.csv")
    argv = ["--trace", trace, "--preset", "tiny-cpu", *extra]
    assert _cli(argv) == 2
    assert message in capsys.readouterr().err
    bare = tmp_path / "bare.csv"
    bare.write_text("t_s,event,node\n0,add,a\n")
    assert _cli(["--trace", str(bare), "--preset", "tiny-cpu"]) == 2
    assert "no instance metadata" in capsys.readouterr().err


def test_assumptions_validate() -> None:
    with pytest.raises(ValueError, match="restart_scope must be"):
        Assumptions(restart_scope="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ondemand_gpus must be an int >= 1"):
        Assumptions(ondemand_gpus=0)
