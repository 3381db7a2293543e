"""The README and docs/ a newcomer reads: short, the two set-up commands first and true, every
link resolving, the headline numbers equal to the JSON they link to, every benchmark
documented, and the monitor capture showing every panel."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.monitor_text import PANELS, is_empty, panel_bodies

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
TWO_COMMANDS = (
    "make run     # install, then run the main job (`spotlight run`)\n"
    "make test    # install, then run the test suite (what CI runs, via .ci/run)\n"
)


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)


def test_readme_is_short_and_its_first_commands_are_the_two_set_up_commands() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 150, "README: keep it short, move detail to docs/"
    assert _code_blocks(text)[0] == TWO_COMMANDS
    assert text.index("## Set-up: two commands") < text.index("```")
    makefile = (ROOT / "Makefile").read_text()
    # the commands do what the README says: `make run` runs `spotlight run`, `make test` pytest
    assert re.search(r"^run: install\n\t\$\(VENV\)/bin/spotlight run \$\(ARGS\)$", makefile, re.M)
    assert re.search(r"^test: install\n\t@\$\(PY\) -m pytest", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def _links(path: Path) -> list[str]:
    return re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    missing = []
    for link in _links(page):
        if "://" in link:
            continue
        target = (page.parent / link).resolve()
        if not target.exists():
            missing.append(link)
    assert not missing, f"{page.name} links to what does not exist: {missing}"


def _json(name: str) -> dict:
    return json.loads((ROOT / "benchmarks" / "results" / name).read_text())


def test_the_readme_headline_numbers_are_the_jsons() -> None:
    """The results table quotes the JSON it links to (rerun a bench: update both)."""
    table = README.read_text().split("## Results so far", 1)[1].split("\n\n", 2)[1]
    rows = {r.split("|")[1].strip(): r for r in table.splitlines()[2:]}
    e2e = _json("e2e.json")
    its = e2e["iters_to_target"]
    assert (
        f"Spotlight {its['spotlight']}, restart {its['restart']}"
        in rows["end to end, iterations to target"]
        and f"on-demand {its['ondemand']}" in rows["end to end, iterations to target"]
    )
    usd, ratio = e2e["cost_to_target"], e2e["cost_ratio_vs_ondemand"]["spotlight"]
    row = rows["end to end, $ to target"]
    assert f"Spotlight {usd['spotlight']:.2f} ({ratio:.2f}×), restart {usd['restart']:.2f}" in row
    assert f"on-demand {usd['ondemand']:.2f}" in row
    lost = {k: e2e[k]["steps_lost"] for k in ("spotlight", "restart")}
    assert (
        f"Spotlight {lost['spotlight']}" in rows["end to end, sample-steps lost to 11 preemptions"]
    )
    assert f"restart {lost['restart']}" in rows["end to end, sample-steps lost to 11 preemptions"]
    sp = _json("elastic_sp.json")
    row = rows["elastic SP group back after a SIGKILL (degree 4 → 2)"]
    assert f"p50 {sp['reform_p50_s']:.2f} s" in row and f"({int(sp['speedup_vs_restart'])}×)" in row
    ex = _json("exploration.json")
    assert (
        f"{ex['seed_rank_spearman_lag1']:.2f}"
        in rows["seed-ranking Spearman, consecutive policies"]
    )
    assert f"{ex['selected_std_over_random_std']:.2f}× random" in rows["chosen groups' reward std"]
    learn = _json("learning.json")
    row = rows["RL on the tiny testbed, 10 min (NFT)"]
    assert f"{learn['base_val_score']:.3f} → {learn['final_val_score']:.3f}" in row
    auc = _json("selection.json")["auc_gain"]
    lo, hi = auc["paired_diff_ci95"]
    row = rows["seed selection, paired, 5 seeds per arm (NFT, 40 iterations)"]
    assert f"+{auc['paired_diff_mean']:.3f} [{lo:.3f}, +{hi:.3f}]".replace("-", "−") in row
    auc = _json("selection_strict.json")["auc_gain"]
    lo, hi = auc["paired_diff_ci95"]
    row = rows["the same, trained on the strict (all-or-nothing) reward"]
    assert f"+{auc['paired_diff_mean']:.3f} [{lo:.3f}, +{hi:.3f}]".replace("-", "−") in row
    wins = sum(s > r for s, r in zip(auc["selected"], auc["random"], strict=True))
    assert f"{wins} of {len(auc['random'])} pairs" in row
    pre = _json("preemption.json")["steps_recomputed_per_preemption"]
    row = rows["steps recomputed per preemption"]
    assert f"{pre['notice_0s']['ours']['median']:g} with none" in row
    assert f"restart {pre['notice_120s']['baseline_restart_from_0']['median']:g}" in row


def test_every_benchmark_is_documented_with_its_json() -> None:
    text = (DOCS / "benchmarks.md").read_text()
    for script in sorted((ROOT / "scripts").glob("bench_*.py")):
        assert f"scripts/{script.name}" in text, f"docs/benchmarks.md does not cover {script.name}"
    for name in re.findall(r"results/(\w+\.json)", text):
        assert (ROOT / "benchmarks" / "results" / name).is_file(), name


def test_the_readme_monitor_capture_shows_every_panel_alive() -> None:
    text = README.read_text().split("## What you will see", 1)[1]
    capture = _code_blocks(text)[0]
    assert capture.startswith("spotlight monitor  run ")
    bodies = panel_bodies(capture)
    for panel in PANELS[:7]:  # Rewards and Rollouts appear only when they run
        assert bodies.get(panel), f"{panel} missing from the capture"
        assert not is_empty(bodies[panel][0]), f"{panel} is empty in the capture"
