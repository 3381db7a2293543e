"""`spotlight run --run-dir X --resume auto`: one command right for every attempt.

The decisions are unit-tested on directories laid out by hand (no process); one test runs
the real command three times, killed twice, and compares the weights with one
uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spotlight.cli import main
from spotlight.commands import run as run_cmd
from spotlight.commands import run_resume
from spotlight.commands.run_resume import recover_checkpoint
from spotlight.config import ConfigError, SystemConfig

REPO = Path(__file__).resolve().parent.parent


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    run_cmd.add_arguments(parser)
    return parser.parse_args(list(argv))


def _lay_out(run_dir: Path, cfg: SystemConfig, *, checkpoint: int | None) -> None:
    """A run directory as `spotlight run` leaves it (config.json, maybe a checkpoint)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run_dir / "metrics.jsonl").write_text("")
    if checkpoint is not None:
        (run_dir / "checkpoint").mkdir()
        (run_dir / "checkpoint" / "state.json").write_text(json.dumps({"iteration": checkpoint}))


def test_empty_or_absent_or_fresh_volume_starts_fresh(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "volume" / "lost+found").mkdir(parents=True)  # a fresh volume's root
    (tmp_path / "writing").mkdir()  # rank 0's config.json on its way in, seen by rank 1
    (tmp_path / "writing" / ".config.json.tmp123").write_text("{")
    for run_dir in (tmp_path / n for n in ("absent", "empty", "volume", "writing")):
        cfg, got_dir, resume = run_cmd.resolve_config(
            _args("--run-dir", str(run_dir), "--resume", "auto")
        )
        assert (got_dir, resume) == (run_dir, False)
        assert cfg.run.resume == "auto"


def test_this_runs_checkpoint_resumes_and_changed_settings_are_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    _lay_out(run_dir, SystemConfig(), checkpoint=3)
    cfg, _, resume = run_cmd.resolve_config(_args("--run-dir", str(run_dir), "--resume", "auto"))
    assert resume and cfg == SystemConfig.from_dict({"run": {"resume": "auto"}})
    err = capsys.readouterr().err
    assert "resuming" in err and "iteration 3" in err and "changed" not in err
    # the same command with changed flags resumes too, and says what changed
    cfg, _, resume = run_cmd.resolve_config(
        _args("--run-dir", str(run_dir), "--resume", "auto", "--iterations", "9",
              "--set", "trainer.lr=3e-5")
    )  # fmt: skip
    assert resume and cfg.trainer.lr == 3e-5 and cfg.run.iterations == 9
    err = capsys.readouterr().err
    assert "settings changed since" in err
    base = SystemConfig()  # the stored run's settings: the defaults
    assert f"run.iterations: {base.run.iterations!r} -> 9" in err
    assert f"trainer.lr: {base.trainer.lr!r} -> 3e-05" in err
    # so does an explicit --resume DIR with --set
    run_cmd.resolve_config(_args("--resume", str(run_dir), "--set", "planner.safety=0.5"))
    assert f"planner.safety: {base.planner.safety!r} -> 0.5" in capsys.readouterr().err


def test_this_run_without_a_checkpoint_starts_fresh_and_run_resume_key_works(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    _lay_out(run_dir, SystemConfig(), checkpoint=None)
    _, _, resume = run_cmd.resolve_config(
        _args("--run-dir", str(run_dir), "--set", "run.resume=auto")
    )
    assert not resume
    # without auto, a directory that holds a checkpoint is refused, naming both ways on
    (run_dir / "checkpoint").mkdir()
    with pytest.raises(ConfigError, match=r"--resume .*--resume auto"):
        run_cmd.resolve_config(_args("--run-dir", str(run_dir)))


def test_another_runs_directory_or_foreign_files_are_refused_with_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    _lay_out(other, SystemConfig.from_dict({"run": {"seed": 1}}), checkpoint=2)
    with pytest.raises(ConfigError) as err:
        run_cmd.resolve_config(_args("--run-dir", str(other), "--resume", "auto"))
    text = str(err.value)
    assert "holds another run" in text and "run.seed: 1 -> 0" in text
    assert f"--resume {other}" in text and "another --run-dir" in text
    # the CLI says so and exits 2 before starting anything
    assert main(["run", "--run-dir", str(other), "--resume", "auto", "--no-spot"]) == 2
    assert "holds another run" in capsys.readouterr().err
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"notes\.txt.*not a spotlight run directory"):
        run_cmd.resolve_config(_args("--run-dir", str(foreign), "--resume", "auto"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    with pytest.raises(ConfigError, match="not a readable run configuration"):
        run_cmd.resolve_config(_args("--run-dir", str(broken), "--resume", "auto"))
    with pytest.raises(ConfigError, match="needs the run directory"):
        run_cmd.resolve_config(_args("--resume", "auto"))


def test_a_crash_in_the_middle_of_a_checkpoint_save_is_recovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for present, expected in (
        (("checkpoint.partial", "checkpoint.old"), "checkpoint.partial"),
        (("checkpoint.old",), "checkpoint.old"),
    ):
        run_dir = tmp_path / expected
        for name in present:
            (run_dir / name).mkdir(parents=True)
            (run_dir / name / "state.json").write_text(json.dumps({"iteration": len(name)}))
        assert recover_checkpoint(run_dir)
        state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
        assert state["iteration"] == len(expected)
        assert not recover_checkpoint(run_dir)  # a checkpoint is there: nothing to do
    # data-parallel ranks recover at once: the rename another rank made first is success
    raced = tmp_path / "raced"
    (raced / "checkpoint.old").mkdir(parents=True)
    (raced / "checkpoint.old" / "state.json").write_text("{}")
    real_replace = os.replace

    def other_rank_first(src: Path, dst: Path) -> None:
        real_replace(src, dst)  # the other rank's rename; ours then finds no source
        raise FileNotFoundError(src)

    def refused(src: Path, dst: Path) -> None:
        raise PermissionError(src)

    monkeypatch.setattr(run_resume.os, "replace", other_rank_first)
    assert not recover_checkpoint(raced) and (raced / "checkpoint" / "state.json").is_file()
    monkeypatch.setattr(run_resume.os, "replace", real_replace)
    (tmp_path / "gone" / "checkpoint.old").mkdir(parents=True)
    (tmp_path / "gone" / "checkpoint.old" / "state.json").write_text("{}")
    monkeypatch.setattr(run_resume.os, "replace", refused)
    with pytest.raises(PermissionError):  # a real failure is not swallowed
        recover_checkpoint(tmp_path / "gone")
    monkeypatch.undo()
    torn = tmp_path / "torn"
    (torn / "checkpoint.partial").mkdir(parents=True)  # written half: no state.json yet
    assert not recover_checkpoint(torn) and not (torn / "checkpoint").exists()


# ---------------------------------------------------------------- the real command

SMALL = [
    "--set", "trainer.prompts_per_iter=2",
    "--set", "trainer.group_size=2",
    "--set", "trainer.num_steps=3",
    "--set", "trainer.micro_batch=4",
    "--set", "trainer.val_per_kind=1",
    "--set", "trainer.val_seeds=1",
    "--set", "run.val_every=100",
    "--set", "run.ckpt_every=1",
    "--set", "rewards.workers=0",
]  # fmt: skip


def _command(micro_base: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "spotlight.cli", "run", "--no-spot", "--json", "--iterations",
            "5", "--run-dir", str(run_dir), "--resume", "auto",
            "--set", f"trainer.base={micro_base}", *SMALL]  # fmt: skip


def _run_until_checkpoint(cmd: list[str], state: Path, at_least: int) -> int:
    """Start ``cmd``, SIGKILL its process group once the checkpoint reaches ``at_least``;
    the checkpointed iteration at the kill."""
    child = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and child.poll() is None:
            if state.exists() and json.loads(state.read_text())["iteration"] >= at_least:
                break
            time.sleep(0.05)
        assert child.poll() is None, f"ended before the kill: {child.communicate()[1][-2000:]}"
        os.killpg(child.pid, signal.SIGKILL)  # a crash or a preemption: no handler runs
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    return int(json.loads(state.read_text())["iteration"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_same_command_killed_twice_ends_with_the_weights_of_one_uninterrupted_run(
    micro_base: Path, tmp_path: Path
) -> None:
    import torch

    from spotlight.models.bases import load_checkpoint

    straight = tmp_path / "straight"
    proc = subprocess.run(
        _command(micro_base, straight), capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "empty: a fresh run" in proc.stderr

    attempts = tmp_path / "attempts"
    cmd = _command(micro_base, attempts)
    state = attempts / "checkpoint" / "state.json"
    first = _run_until_checkpoint(cmd, state, at_least=1)
    second = _run_until_checkpoint(cmd, state, at_least=first + 1)
    assert 1 <= first < second < 5
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"from its checkpoint (iteration {second})" in proc.stderr
    report = json.loads((attempts / "report.json").read_text())
    assert report["start_iteration"] == second and report["iterations"] == 5
    a, _ = load_checkpoint(straight / "checkpoint")
    b, _ = load_checkpoint(attempts / "checkpoint")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0, msg=name)
