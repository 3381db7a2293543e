"""scripts/gpu_check.{sh,py} on a CPU machine: arguments, the per-block arithmetic, the JSON,
the no-CUDA exit; and (slow) the same checks run end to end at toy sizes on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.script_module import load_script

REPO = Path(__file__).resolve().parent.parent


def _gpu_check() -> ModuleType:
    sys.path[:0] = [str(REPO / "scripts")]
    return load_script("gpu_check")  # gpu_check_runs imports it by this name


gc = _gpu_check()


def test_defaults_and_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    args = gc.parse_args([])
    assert (args.blocks, args.resolutions, args.skip) == (3, (512, 1024), set())
    assert gc.parse_args(["--resolutions", "256,512", "--skip", "vae,nccl"]).skip == {"vae", "nccl"}
    for bad, says in (
        (["--blocks", "1"], "--blocks must be in 2..60"),
        (["--blocks", "61"], "--blocks must be in 2..60"),
        (["--resolutions", "500"], "multiples of 16"),
        (["--resolutions", "a,b"], "must be integers"),
        (["--reps", "0"], "--reps must be >= 1"),
        (["--skip", "dit,warp"], "warp: unknown check"),
    ):
        assert gc.main(bad) == gc.EXIT_USAGE, bad
        assert says in capsys.readouterr().err, bad


def test_per_block_fit_and_projection_by_hand() -> None:
    # 1 block 0.10 s, 3 blocks 0.26 s: 0.08 s a block, 0.02 s outside the blocks,
    # so 60 blocks take 0.02 + 60 * 0.08 = 4.82 s.
    fit = gc.fit_per_block([(1, 0.10), (3, 0.26)])
    assert fit["per_block"] == pytest.approx(0.08)
    assert fit["overhead"] == pytest.approx(0.02)
    assert gc.project(fit) == pytest.approx(4.82)
    assert gc.project(fit, 10) == pytest.approx(0.82)
    # Least squares over repeated depths: the means at each depth are 1.0 and 2.0.
    fit = gc.fit_per_block([(2, 0.9), (2, 1.1), (4, 1.9), (4, 2.1)])
    assert (fit["per_block"], fit["overhead"]) == pytest.approx((0.5, 0.0))
    with pytest.raises(ValueError, match="two or more depths"):
        gc.fit_per_block([(3, 1.0), (3, 1.1)])
    out = gc.scaled([(1, 2.0), (3, 4.0)], "gb")
    assert out["per_block_gb"] == pytest.approx(1.0)
    assert out["projected_60_blocks_gb"] == pytest.approx(61.0)
    assert out["measured"] == [{"blocks": 1, "gb": 2.0}, {"blocks": 3, "gb": 4.0}]


def test_a_failing_check_is_recorded_and_the_json_says_so(tmp_path: Path) -> None:
    results: dict = {"checks": {}}
    gc.run_check("fine", lambda: {"x": 1}, results)

    def broken() -> dict:
        raise RuntimeError("CUDA error: out of memory")

    gc.run_check("broken", broken, results)
    assert results["checks"]["fine"]["ok"] and results["checks"]["fine"]["x"] == 1
    bad = results["checks"]["broken"]
    assert not bad["ok"] and bad["error"] == "RuntimeError: CUDA error: out of memory"
    assert any("out of memory" in line for line in bad["traceback_tail"])
    path = gc.write_results(tmp_path / "deep" / "gpu_check.json", results)
    written = json.loads(path.read_text())
    assert written["ok"] is False and set(written["checks"]) == {"fine", "broken"}


def test_no_cuda_exits_with_a_message_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gc, "cuda_problem", lambda: gc.NO_CUDA)
    out = tmp_path / "gpu_check.json"
    assert gc.main(["--out", str(out)]) == gc.EXIT_OK
    assert "no CUDA device" in capsys.readouterr().err
    assert gc.main(["--out", str(out), "--require-cuda"]) == gc.EXIT_USAGE
    assert not out.exists()


def test_the_shell_wrapper_on_a_machine_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the wrapper would run the real checks")
    env = dict(os.environ, SPOTLIGHT_PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--out", str(tmp_path / "g.json")],
        capture_output=True, text=True, env=env, timeout=280,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stderr and not (tmp_path / "g.json").exists()


TOY = ["--device", "cpu", "--blocks", "2", "--resolutions", "32", "--reps", "1"]
TOY += ["--train-steps", "1", "--text-tokens", "8"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_single_process_check_runs_on_the_cpu_at_toy_size(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    assert gc.main([*TOY, "--heads", "1", "--out", str(out)]) == gc.EXIT_OK, out.read_text()
    res = json.loads(out.read_text())
    checks = res["checks"]
    assert all(checks[c]["ok"] for c in ("dit", "sampler", "lora", "vae", "weight_load"))
    assert "projected_60_blocks_s" in checks["dit"]["32px"]["forward_s"]
    assert checks["sampler"]["log_prob_dtype"] == "torch.float32"
    assert checks["lora"]["32px"]["adapter_tensors_moved"].split("/")[0] != "0"
    assert checks["nccl"]["skipped"] and checks["ulysses"]["skipped"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_two_rank_checks_run_over_gloo_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    skip = "dit,sampler,lora,vae,weight_load"
    argv = [*TOY, "--heads", "2", "--world", "2", "--skip", skip, "--out", str(out)]
    assert gc.main(argv) == gc.EXIT_OK, out.read_text()
    checks = json.loads(out.read_text())["checks"]
    assert checks["nccl"]["rank0"]["bus_gb_per_s"] > 0
    assert checks["ulysses"]["rank1"]["32px"]["max_rel_diff_vs_single"] < 5e-2
