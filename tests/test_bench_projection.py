"""scripts/bench_projection.py: the keys issue 20 names, per trace, preset and strategy."""

from __future__ import annotations

import json
from pathlib import Path

from tests.script_module import load_script

REPO = Path(__file__).resolve().parent.parent
KEYS = {
    "hours_to_target",
    "usd_to_target",
    "speedup_vs_ondemand",
    "cost_ratio_vs_ondemand",
    "gpu_hours_spot",
    "steps_lost",
}
STRATEGIES = {"ondemand", "ondemand_same_gpus", "restart", "spotlight_no_explore", "spotlight"}


def test_quick_bench_writes_exactly_the_issue_keys(tmp_path: Path) -> None:
    bench = load_script("bench_projection")
    out = tmp_path / "projection.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["label"].startswith("PROJECTION")
    assert set(data["results"]) == set(bench.TRACES)
    for per_preset in data["results"].values():
        assert {"qwen-image-h100-512", "qwen-image-h100-1024"} <= set(per_preset)
        for per_strategy in per_preset.values():
            assert set(per_strategy) == STRATEGIES
            for metrics in per_strategy.values():
                assert set(metrics) == KEYS
                for v in metrics.values():
                    assert set(v) == {"median", "lo", "hi"} and v["lo"] <= v["median"] <= v["hi"]
    # the measured selection speed-up (1.0) gives e exactly d; any other value is labelled
    for rows in data["sensitivity"]["selection_speedup"].values():
        assert [r["label"].startswith("ASSUMED") for r in rows] == [False, True]
    assert (tmp_path / "projection_curves.png").is_file()
    assert (tmp_path / "projection_heatmap_qwen-image-h100-512.png").is_file()
