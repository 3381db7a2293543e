"""scripts/bench_exploration.py --quick on the shipped base: the issue's keys, real values."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.script_module import load_script

REPO = Path(__file__).resolve().parent.parent
KEYS = {
    "seed_rank_spearman_lag1",
    "selected_std_over_random_std",
    "bandit_vs_uniform_variance_gain",
    "trainer_wait_s_due_to_exploration",
    "zero_std_frac_random",
    "zero_std_frac_selected",
}


def test_quick_bench_runs_on_the_shipped_base(tmp_path: Path) -> None:
    bench = load_script("bench_exploration")
    out = tmp_path / "exploration.json"
    bench.main(["--quick", "--out", str(out), "--cache", str(tmp_path / "cache")])
    data = json.loads(out.read_text())
    assert set(data) >= KEYS
    assert "base-tiny-latent" in data["base"]
    assert -1.0 <= data["seed_rank_spearman_lag1"] <= 1.0
    assert math.isfinite(data["selected_std_over_random_std"])
    # the actor run took real seeds from the planner (its explorers loaded the trainer's weights)
    # (a request whose deadline passed is completed as skipped: normal on a loaded box)
    assert max(data["explored_seeds_per_batch"]) > 0
    assert data["trainer_wait_s_due_to_exploration"] >= 0.0
