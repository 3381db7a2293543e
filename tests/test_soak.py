"""scripts/soak.py: its sample ledger on made-up run directories, and its short form (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.script_module import load_script

REPO = Path(__file__).resolve().parent.parent
REAL = ("aws_p3_32node_bamboo.csv", "gcp_a100x1_us-east1-b_bamboo.csv")
SYNTHETIC = ("steady_1h.csv", "bursty_1h.csv")


def _soak() -> ModuleType:
    return load_script("soak")


def _run_dir(tmp: Path, history: list[int], rollouts: list[tuple[int, int]]) -> Path:
    """A run directory: trainer.jsonl iterations ``history``; one ``rollouts`` metric per
    (iteration, samples); batch 2 x 4 = 8 samples, 3 steps."""
    tmp.mkdir()
    cfg = {"trainer": {"prompts_per_iter": 2, "group_size": 4, "num_steps": 3}}
    (tmp / "config.json").write_text(json.dumps(cfg))
    lines = [{"kind": "validation", "iteration": 0}]
    lines += [{"kind": "iteration", "iteration": k} for k in history]
    (tmp / "trainer.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    metrics: list[dict[str, Any]] = [
        {"topic": "rollouts", "source": "trainer", "fields": {
            "iteration": k, "samples": n, "by_worker": {"od0/rollout": n}}}
        for k, n in rollouts
    ]  # fmt: skip
    metrics += [
        {"topic": "cost", "source": "coordinator", "fields": f}
        for f in (
            {"ondemand_gpu_hours": 0.1, "preemptions_notice": 1, "preemptions_silent": 0},
            {
                "ondemand_gpu_hours": 0.2,
                "preemptions_notice": 2,
                "preemptions_silent": 0,
                "work_lost_steps": 5,
            },
            # the resumed process: its GPU-hours start again, its counters from 0
            {
                "ondemand_gpu_hours": 0.01,
                "preemptions_notice": 0,
                "preemptions_silent": 4,
                "work_lost_steps": 1,
            },
        )
    ]
    text = "".join(json.dumps(m) + "\n" for m in metrics) + '{"topic": "cut by a SIGKI'
    (tmp / "metrics.jsonl").write_text(text)
    return tmp


def test_the_ledger_counts_redone_iterations_as_recomputed_not_duplicated(tmp_path: Path) -> None:
    soak = _soak()
    # Iteration 2 ran, the on-demand process died before its checkpoint; the resumed run did
    # 2 again and went on to 3.
    run = _run_dir(tmp_path / "ok", [1, 2, 3], [(1, 8), (2, 8), (2, 8), (3, 8)])
    ledger = soak.sample_ledger(run)
    assert (ledger["samples_committed"], ledger["samples_duplicated"], ledger["samples_lost"]) == (
        24,
        0,
        0,
    )
    assert ledger["iterations_redone"] == 1
    assert ledger["steps_recomputed"] == 5 + 1 + 8 * 3
    assert (ledger["preemptions_notice"], ledger["preemptions_silent"]) == (2, 4)


def test_the_ledger_finds_duplicated_and_lost_samples(tmp_path: Path) -> None:
    soak = _soak()
    twice = soak.sample_ledger(_run_dir(tmp_path / "a", [1, 2, 2], [(1, 8), (2, 8)]))
    assert twice["samples_duplicated"] == 8  # iteration 2 applied twice
    short = soak.sample_ledger(_run_dir(tmp_path / "b", [1, 2], [(1, 8), (2, 6)]))
    assert short["samples_lost"] == 2 and short["samples_committed"] == 14
    gap = soak.sample_ledger(_run_dir(tmp_path / "c", [1, 3], [(1, 8), (3, 9)]))
    assert gap["samples_lost"] == 8 and gap["samples_duplicated"] == 1


def test_the_resume_command_is_in_one_place() -> None:
    soak = _soak()
    assert soak.resume_argv(Path("/r")) == ["--resume", "/r"]
    text = (REPO / "scripts" / "soak.py").read_text()
    assert text.count('"--resume"') == 1  # switch to --resume auto in resume_argv only


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_short_soak_loses_and_duplicates_nothing_and_leaves_no_process(
    tmp_path: Path,
) -> None:
    """≤ 3 minutes of soak on a free 2-core box (start-up dominates on a loaded one)."""
    names = REAL if all((REPO / "traces" / n).is_file() for n in REAL) else SYNTHETIC
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(REPO / "scripts" / "soak.py"), "--short", "--out", str(out)]
    cmd += ["--traces", *(str(REPO / "traces" / n) for n in names)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1100)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["samples_duplicated"] == 0 and result["samples_lost"] == 0, result["ledger"]
    assert result["leftover_processes"] == 0, result["leftover_detail"]
    assert result["resumes"] == 1 and result["final_exit_code"] == 0, result["events"]
    assert result["samples_committed"] >= result["ledger"]["batch"] * 2
    assert result["injected"]["ondemand_sigkills"] == 1
