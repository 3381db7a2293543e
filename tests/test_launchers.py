"""The torchrun launchers (scripts/launch_ondemand.sh, scripts/launch_spot.sh) and the
cluster options of `spotlight run` they rely on (spotlight/nodes/serving.py).

The CI test of issue 8: an on-demand launch (torchrun, gloo, one process) with an external
spot pool on loopback, two spot launches that join it through its ready file; once both
have registered, one is SIGKILLed (silent loss) and one SIGTERMed (a notice); the trainer
must keep iterating and the run must finish cleanly with both preemptions in its report.
Every process is started in its own session and its process group killed by PID at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spotlight.nodes.process import write_atomic
from spotlight.nodes.serving import external_pool_view, parse_listen, runtime_config
from spotlight.nodes.torchrun import EXIT_DIR_ENV, exit_status, record_exit
from spotlight.runtime.config import TOKEN_ENV

REPO = Path(__file__).resolve().parent.parent
ONDEMAND = REPO / "scripts" / "launch_ondemand.sh"
SPOT = REPO / "scripts" / "launch_spot.sh"

# A run that does almost nothing per iteration: the test is about processes, not learning.
SMALL = [
    "--set", "trainer.prompts_per_iter=2",
    "--set", "trainer.group_size=2",
    "--set", "trainer.num_steps=3",
    "--set", "trainer.micro_batch=4",
    "--set", "trainer.val_per_kind=1",
    "--set", "trainer.val_seeds=2",
]  # fmt: skip


# ---------------------------------------------------------------- pure pieces, fast


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("0.0.0.0:29600") == ("0.0.0.0", 29600)
    assert parse_listen("[::1]:5") == ("::1", 5)
    for bad, message in (
        ("29600", "expected HOST:PORT"),
        (":29600", "expected HOST:PORT"),
        ("h:port", "'port' is not a number"),
        ("h:70000", "not in 0..65535"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_listen(bad)


def test_runtime_config_needs_a_token_beyond_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    cfg = runtime_config(None, None)
    assert cfg.bind_host == "127.0.0.1" and cfg.port == 0
    cfg = runtime_config("127.0.0.1:4567", None)
    assert (cfg.bind_host, cfg.port, cfg.cluster_token) == ("127.0.0.1", 4567, None)
    with pytest.raises(ValueError, match=rf"cluster_token.*\${TOKEN_ENV}"):
        runtime_config("0.0.0.0:4567", None)
    with pytest.raises(ValueError, match="--advertise-host needs --listen"):
        runtime_config(None, "node7")
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    cfg = runtime_config("0.0.0.0:4567", None)
    assert cfg.cluster_token == "s3cret" and cfg.advertise_host == socket.gethostname()
    assert runtime_config("0.0.0.0:1", "od0.example").advertise_host == "od0.example"


def test_write_atomic_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "coord.addr"
    write_atomic(target, "tcp://127.0.0.1:1\n")
    write_atomic(target, "tcp://127.0.0.1:2\n")
    assert target.read_text() == "tcp://127.0.0.1:2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["coord.addr"]  # no temporary left


def _node(kind: str, joined: float, ended: float | None, status: str) -> dict[str, Any]:
    return {"kind": kind, "joined_at": joined, "ended_at": ended, "status": status}


def test_external_pool_view_bills_lifetimes_and_counts_the_coordinators_tally() -> None:
    coordinator = {
        "nodes": {
            "od0": _node("ondemand", 1000.0, None, "alive"),
            "host-b-2": _node("spot", 1010.0, None, "alive"),
            "host/a:1": _node("spot", 1005.0, 1020.0, "gone"),
            "c": _node("spot", 1030.0, 1030.0, "left"),
        },
        "preemptions_notice": 1,
        "preemptions_silent": 1,
        "notice_unclean": 0,
    }
    trace, stats = external_pool_view(coordinator, t0_wall=1000.0, end_wall=1100.0)
    assert trace is not None
    assert [(e.t_s, e.event, e.node) for e in trace.events] == [
        (5.0, "add", "n0"),
        (10.0, "add", "n1"),
        (20.0, "remove", "n0"),
        (30.0, "add", "n2"),
        (30.0, "remove", "n2"),
    ]
    assert sum(lt.duration_s(100.0) for lt in trace.lifetimes()) == pytest.approx(15 + 90 + 0)
    assert (stats.adds, stats.removes_with_notice, stats.removes_silent) == (3, 1, 1)
    assert external_pool_view(None, t0_wall=0, end_wall=1)[0] is None
    only_od = {"nodes": {"od0": _node("ondemand", 0.0, None, "alive")}}
    trace, stats = external_pool_view(only_od, t0_wall=0, end_wall=1)
    assert trace is None and stats.adds == 0


def test_exit_status_after_a_signal_is_0_only_when_every_local_worker_recorded_0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(EXIT_DIR_ENV, str(tmp_path))
    for local_rank, code in ((0, 0), (1, 130)):
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
        record_exit(code)
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.iterdir())]
    assert records == [
        {"local_rank": 0, "local_world_size": 3, "code": 0},
        {"local_rank": 1, "local_world_size": 3, "code": 130},
    ]
    sigint, sigterm = signal.SIGINT, signal.SIGTERM
    assert exit_status(sigint, records[:1]) == (
        130,
        ["local rank 1 left no record", "local rank 2 left no record"],
    )
    assert exit_status(sigterm, records) == (
        143,
        ["local rank 1 exited 130", "local rank 2 left no record"],
    )
    clean = [{"local_rank": r, "local_world_size": 2, "code": 0} for r in (1, 0)]
    assert exit_status(sigint, clean) == (0, [])
    assert exit_status(sigint, clean[:1]) == (130, ["local rank 0 left no record"])
    assert exit_status(sigterm, []) == (143, ["no worker left an exit record"])
    monkeypatch.delenv(EXIT_DIR_ENV)
    record_exit(0)  # outside the launcher: nothing written
    assert len(list(tmp_path.iterdir())) == 2


def test_launcher_help_and_argument_errors() -> None:
    for script in (ONDEMAND, SPOT):
        out = subprocess.run(
            [str(script), "--help"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        assert "SPOTLIGHT_PYTHON" in out and "SIGTERM" in out and not out.startswith("#")
    dry = subprocess.run(
        [str(ONDEMAND), "--dry-run", "--nproc-per-node", "2", "--", "--no-spot"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert "spotlight.nodes.torchrun" in dry and "--nproc-per-node 2" in dry
    assert "--standalone" in dry and dry.rstrip().endswith("-m spotlight.cli run --no-spot")
    dry = subprocess.run(
        [str(ONDEMAND), "--dry-run", "--nnodes", "2", "--node-rank", "1",
         "--rdzv-endpoint", "h0:29500", "--iterations", "3"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert "--rdzv-endpoint h0:29500" in dry and "--node-rank 1" in dry
    assert "--standalone" not in dry and "run --iterations 3" in dry
    for script, args, message in (
        (ONDEMAND, ["--nnodes", "2"], "needs --rdzv-endpoint"),
        (ONDEMAND, ["--nproc-per-node", "0"], "--nproc-per-node must be"),
        (ONDEMAND, ["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"], "0..1"),
        (SPOT, [], "no coordinator"),
        (SPOT, ["--coordinator", "127.0.0.1:5"], "tcp://HOST:PORT"),
        (SPOT, ["--coordinator", "tcp://h:1", "--notice-grace", "soon"], "--notice-grace"),
        (SPOT, ["--bogus"], "unknown option '--bogus'"),
        (SPOT, ["--coordinator", "tcp://h:1", "--sp-degree", "0"], "--sp-degree must be"),
        (SPOT, ["--coordinator", "tcp://h:1", "--sp-degree", "2"], "--gpus is 1"),
        (SPOT, ["--coordinator", "tcp://h:1", "--base", "/no/such"], "not a checkpoint directory"),
    ):
        proc = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and message in proc.stderr, (script.name, args, proc.stderr)


def test_spotlight_run_refuses_bad_cluster_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from spotlight.cli import main
    from spotlight.commands import run

    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    text = parser.format_help()
    for flag in ("--spot-pool", "--listen", "--advertise-host", "--ready-file", "--stop-file"):
        assert flag in text
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main(["run", "--listen", "0.0.0.0:0", "--no-spot"]) == 2
    assert TOKEN_ENV in capsys.readouterr().err
    assert main(["run", "--listen", "nowhere", "--no-spot"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    assert main(["run", "--no-spot", "--spot-pool", "external"]) == 2
    assert "contradicts" in capsys.readouterr().err


# ---------------------------------------------------------------- processes


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny policy with random weights (what the explorers build), no pretraining."""
    from spotlight.models.checkpoint import CheckpointCard, save_checkpoint
    from spotlight.models.dit import build_policy, get_config

    path = tmp_path_factory.mktemp("base") / "tiny"
    save_checkpoint(
        build_policy("tiny", seed=1), path, CheckpointCard(config=get_config("tiny"), steps=0)
    )
    return path


class Procs:
    """Processes each in its own session; ``close`` kills every group by its leader's PID."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop(TOKEN_ENV, None)
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                start_new_session=True,
            )  # fmt: skip
        self.started[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-4000:]

    def close(self) -> None:
        for proc in self.started.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):  # exited since poll()
                    os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.started.values():
            proc.wait(timeout=30)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _records(metrics: Path, topic: str) -> list[dict[str, Any]]:
    if not metrics.exists():
        return []
    out = []
    for line in metrics.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # the line being written right now
            continue
        if rec.get("topic") == topic:
            out.append(rec)
    return out


def _wait_for(
    what: str, check: Callable[[], bool], *, timeout: float, procs: Procs, main: str
) -> None:
    """Poll ``check`` (files written by other processes have no event to wait on) until it
    holds; fail at ``timeout`` or as soon as the main launch has exited."""
    deadline = time.monotonic() + timeout
    while not check():
        if procs.started[main].poll() is not None:
            pytest.fail(f"{main} exited ({procs.started[main].returncode}) before {what}:\n"
                        f"{procs.log(main)}")  # fmt: skip
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{procs.log(n)}" for n in procs.started)
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
        time.sleep(0.2)


def _iteration(metrics: Path) -> int:
    recs = _records(metrics, "trainer")
    return int(recs[-1]["fields"]["iteration"]) if recs else -1


@pytest.mark.timeout(300)
def test_ondemand_and_two_spot_launches_survive_sigkill_and_sigterm(
    tiny_base: Path, tmp_path: Path, procs: Procs
) -> None:
    run_dir, ready, stop = tmp_path / "run", tmp_path / "coord.addr", tmp_path / "STOP"
    metrics = run_dir / "metrics.jsonl"
    port = _free_port()
    procs.start(
        "ondemand",
        [str(ONDEMAND), "--nproc-per-node", "1", "--",
         "--spot-pool", "external", "--listen", f"127.0.0.1:{port}", "--ready-file", str(ready),
         "--stop-file", str(stop), "--run-dir", str(run_dir), "--json", "--no-live",
         "--iterations", "100000", "--set", f"trainer.base={tiny_base}",
         "--set", "run.val_every=100000", "--set", "run.ckpt_every=100000", *SMALL],
    )  # fmt: skip
    nodes = {}
    for name in ("kill9", "notice"):
        node_ready = tmp_path / f"{name}.addr"
        proc = procs.start(
            name,
            [str(SPOT), "--ready-file", str(ready), "--wait", "120", "--node-id", name,
             "--notice-grace", "5", "--node-ready-file", str(node_ready)],
        )  # fmt: skip
        nodes[name] = (proc, node_ready)
    # a node writes its ready file after its second register_node (with its explorer)
    _wait_for(
        "both spot nodes to register",
        lambda: all(f.exists() for _, f in nodes.values()),
        timeout=150, procs=procs, main="ondemand",
    )  # fmt: skip
    assert ready.read_text().strip() == f"tcp://127.0.0.1:{port}"
    for name, (proc, _) in nodes.items():
        assert proc.poll() is None, procs.log(name)
    before = _iteration(metrics)
    os.killpg(nodes["kill9"][0].pid, signal.SIGKILL)
    os.killpg(nodes["notice"][0].pid, signal.SIGTERM)
    assert nodes["kill9"][0].wait(timeout=30) == -signal.SIGKILL
    assert nodes["notice"][0].wait(timeout=30) == 0, procs.log("notice")  # left cleanly

    def both_counted() -> bool:
        costs = _records(metrics, "cost")
        f = costs[-1]["fields"] if costs else {}
        return f.get("preemptions_notice") == 1 and f.get("preemptions_silent") == 1

    _wait_for("the coordinator to count both preemptions", both_counted,
              timeout=60, procs=procs, main="ondemand")  # fmt: skip
    after = _iteration(metrics)
    _wait_for("the trainer to keep iterating", lambda: _iteration(metrics) >= after + 2,
              timeout=60, procs=procs, main="ondemand")  # fmt: skip
    stop.touch()
    code = procs.started["ondemand"].wait(timeout=120)
    assert code == 0, procs.log("ondemand")
    assert not ready.exists()  # removed at exit: a late spot launch will not join a dead run

    report = json.loads((run_dir / "report.json").read_text())
    spot = report["spot"]
    assert report["ok"] and report["stopped_early"] and not report["interrupted"]
    assert report["iterations"] >= after + 2 > before
    assert spot["pool"] == "external" and spot["nodes_started"] == 2
    assert (spot["preemptions_with_notice"], spot["preemptions_silent"]) == (1, 1)
    assert spot["preemptions_survived"] == 2
    assert report["cost"]["this_run"]["spot_gpu_hours"] > 0
    assert report["cost"]["this_run"]["ondemand_gpu_hours"] > 0
    coordinator = report["stats"]["coordinator"]
    assert {k: v["status"] for k, v in coordinator["nodes"].items()} == {
        "od0": "alive",
        "kill9": "gone",
        "notice": "left",
    }
    assert coordinator["late_exits"] == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_rank_torchrun_launch_without_spot(
    micro_base: Path, tmp_path: Path, procs: Procs
) -> None:
    """Data-parallel trainer over 2 torchrun ranks (gloo): rank 0 reports, rank 1 follows."""
    run_dir = tmp_path / "run"
    proc = procs.start(
        "ondemand",
        [str(ONDEMAND), "--nproc-per-node", "2", "--", "--no-spot", "--json", "--no-live",
         "--iterations", "2", "--run-dir", str(run_dir), "--set", f"trainer.base={micro_base}",
         "--set", "run.val_every=2", *SMALL],
    )  # fmt: skip
    assert proc.wait(timeout=240) == 0, procs.log("ondemand")
    report = json.loads((run_dir / "report.json").read_text())
    assert report["iterations"] == 2 and report["ok"] and not report["spot"]["enabled"]
    log = (tmp_path / "ondemand.log").read_text()
    assert log.count('"event": "report"') == 1  # rank 1 follows silently
    worlds = {r["fields"]["world"] for r in _records(run_dir / "metrics.jsonl", "trainer")}
    assert worlds == {2}  # the iterations ran data parallel over both ranks


def _start_endless_run(
    procs: Procs, base: Path, run_dir: Path, launcher: list[str], run: list[str] | None = None
) -> None:
    """A launch that iterates until stopped; returns once it has done an iteration."""
    procs.start(
        "ondemand",
        [str(ONDEMAND), *launcher, "--", "--no-spot", "--json", "--no-live",
         "--iterations", "100000", "--run-dir", str(run_dir), "--set", f"trainer.base={base}",
         "--set", "run.val_every=100000", "--set", "run.ckpt_every=100000", *SMALL,
         *(run or [])],
    )  # fmt: skip
    _wait_for("an iteration", lambda: _iteration(run_dir / "metrics.jsonl") >= 1,
              timeout=200, procs=procs, main="ondemand")  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("nproc", "signum"),
    [(1, signal.SIGINT), (2, signal.SIGTERM)],
    ids=["1-rank-SIGINT", "2-rank-SIGTERM"],
)
def test_signal_under_torchrun_stops_gracefully_and_exits_0(
    micro_base: Path, tmp_path: Path, procs: Procs, nproc: int, signum: signal.Signals
) -> None:
    """A signal to the launch's process group, as a terminal's Ctrl-C (or a scheduler's
    SIGTERM): torchrun forwards it (its workers have sessions of their own), rank 0 stops
    after the iteration with a checkpoint and a report, not at once as after a second
    Ctrl-C, rank 1 stops with it, and the launch exits 0 (torchrun alone exits 1)."""
    run_dir = tmp_path / "run"
    _start_endless_run(procs, micro_base, run_dir, ["--nproc-per-node", str(nproc)])
    os.killpg(procs.started["ondemand"].pid, signum)
    assert procs.started["ondemand"].wait(timeout=120) == 0, procs.log("ondemand")
    log = (tmp_path / "ondemand.log").read_text()
    assert "stopping after this iteration" in log and "interrupted; spot nodes" not in log
    assert f"launch: {signum.name}: every worker stopped cleanly" in log
    report = json.loads((run_dir / "report.json").read_text())
    assert report["interrupted"] and report["stopped_early"] and report["iterations"] >= 1
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["iteration"] == report["iterations"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_signal_under_torchrun_exits_128_plus_signal_when_a_worker_is_killed(
    micro_base: Path, tmp_path: Path, procs: Procs
) -> None:
    """--shutdown-timeout 0: torchrun SIGKILLs the workers right after forwarding SIGTERM, so
    no worker finishes its stop: the launch exits 128 + SIGTERM, not 0. Rewards in process:
    a SIGKILLed rank 0 cannot reap reward worker processes."""
    run_dir = tmp_path / "run"
    _start_endless_run(
        procs, micro_base, run_dir, ["--shutdown-timeout", "0"], ["--set", "rewards.workers=0"]
    )
    os.killpg(procs.started["ondemand"].pid, signal.SIGTERM)
    assert procs.started["ondemand"].wait(timeout=120) == 128 + signal.SIGTERM
    log = procs.log("ondemand")
    assert "launch: SIGTERM: not a clean stop (no worker left an exit record)" in log
    assert not (run_dir / "report.json").exists()
