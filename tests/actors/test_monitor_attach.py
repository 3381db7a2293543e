"""`spotlight monitor --attach` against a live monitor in a child process (killed by PID)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from spotlight.actors.monitor.metrics import read_jsonl
from tests.runtime.helpers import REPO

pytestmark = pytest.mark.timeout(90)

START_TIMEOUT_S = 60.0  # children import torch on a possibly busy 2-core machine


def child_main(ready_file: str, run_dir: str) -> None:
    """Body of the child: a Monitor named ``monitor`` fed by a trainer-like publisher."""
    from spotlight.actors.monitor.actor import Monitor, MonitorConfig
    from spotlight.actors.monitor.metrics import MetricsPublisher
    from spotlight.runtime import Runtime, RuntimeConfig, run
    from tests.actors.metric_records import node_fields, trainer_fields

    async def main(rt: Runtime) -> None:
        ref = await rt.spawn(Monitor, MonitorConfig(run_dir=run_dir), name="monitor")
        pub = MetricsPublisher(ref, source="trainer", runtime=rt)
        pub.publish("node", **node_fields("ondemand", "alive"))
        await pub.flush()
        tmp = ready_file + ".tmp"
        Path(tmp).write_text(rt.address)  # noqa: ASYNC240 (tiny, once)
        os.replace(tmp, ready_file)
        iteration = 0
        while True:  # until killed
            pub.publish("trainer", **trainer_fields(iteration, loss=1.0 / (iteration + 1)))
            iteration += 1
            await asyncio.sleep(0.1)

    run(main, RuntimeConfig(heartbeat_s=0.25, missed_heartbeats=4))


@contextmanager
def monitor_child(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    ready = tmp_path / "monitor.addr"
    run_dir = tmp_path / "run"
    code = (
        "from tests.actors.test_monitor_attach import child_main; "
        f"child_main({str(ready)!r}, {str(run_dir)!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"monitor child exited early with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"monitor child did not publish its address in {START_TIMEOUT_S}s"
                )
            time.sleep(0.05)
        yield proc, ready.read_text(), run_dir
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def attach_cmd(*args: str) -> list[str]:
    """The CLI entry when cli.py lists ``monitor``; else the command module directly."""
    from spotlight.cli import COMMANDS

    if "monitor" in COMMANDS:
        return [sys.executable, "-m", "spotlight.cli", "monitor", *args]
    code = (
        "import argparse, sys; from spotlight.commands import monitor as m; "
        "p = argparse.ArgumentParser(prog='spotlight monitor'); m.add_arguments(p); "
        "sys.exit(m.run(p.parse_args(sys.argv[1:])))"
    )
    return [sys.executable, "-c", code, *args]


@contextmanager
def attach(*args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        attach_cmd(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_attach_follows_updates_then_exits_and_fails_when_the_monitor_dies(
    tmp_path: Path,
) -> None:
    with monitor_child(tmp_path) as (child, address, run_dir):
        # 1. stdout is a pipe, so JSON lines without --json (one line per event or iteration)
        with attach("--attach", address, "--updates", "3", "--every", "0.1") as viewer:
            out, err = viewer.communicate(timeout=START_TIMEOUT_S)
        assert viewer.returncode == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        assert {"event": "node", "node": "trainer", "kind": "ondemand", "status": "alive"} in events
        its = [e["iteration"] for e in events if e["event"] == "iteration"]
        assert its and its == list(range(its[0], its[0] + len(its)))  # one line each, in order
        assert all(e["event"] != "state" for e in events)
        # --full-state: the whole state per update instead; exits after 3 updates
        with attach(
            "--attach", address, "--updates", "3", "--every", "0.1", "--full-state"
        ) as viewer:
            out, err = viewer.communicate(timeout=START_TIMEOUT_S)
        assert viewer.returncode == 0, err
        states = [json.loads(line) for line in out.splitlines()]
        assert len(states) == 3 and all(s["event"] == "state" for s in states)
        assert states[0]["latest"]["node"]["trainer"]["status"] == "alive"
        actors = states[0]["latest"]["runtime"][address]["actors"]  # the monitor's self-report
        assert [a["name"] for a in actors] == ["monitor"]
        records = [s["records"] for s in states]
        assert records == sorted(records) and records[-1] > records[0]  # live updates
        assert "trainer" in states[-1]["latest"]

        # 2. attached with no limit: the monitor's process dies -> exit 1, saying so
        with attach(
            "--attach", address, "--json", "--full-state", "--every", "0.1", "--timeout", "20"
        ) as viewer:
            assert viewer.stdout is not None
            assert json.loads(viewer.stdout.readline())["event"] == "state"
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
            _out, err = viewer.communicate(timeout=START_TIMEOUT_S)
        assert viewer.returncode == 1
        assert f"lost the monitor at {address}" in err
    written = read_jsonl(run_dir / "metrics.jsonl")  # a SIGKILL loses no flushed line
    assert len(written.records) >= records[-1]
    assert all(n == len(written.records) + 1 for n, _ in written.bad_lines)  # at most a torn tail


def _run_in_process(*argv: str) -> int:
    import argparse

    from spotlight.commands import monitor

    parser = argparse.ArgumentParser(prog="spotlight monitor")
    monitor.add_arguments(parser)
    return monitor.run(parser.parse_args(list(argv)))


def test_attach_to_nothing_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert _run_in_process("--attach", f"tcp://127.0.0.1:{port}", "--timeout", "2") == 1
    assert f"cannot reach the monitor at tcp://127.0.0.1:{port}" in capsys.readouterr().err
    assert _run_in_process("--attach", "127.0.0.1:1") == 2
    assert "must be a tcp://HOST:PORT" in capsys.readouterr().err
    assert _run_in_process("--attach", "tcp://127.0.0.1:1", "--updates", "-1") == 2
    assert "--updates -1 must be >= 0" in capsys.readouterr().err


def test_state_display_json_lines_and_live_view() -> None:
    import io

    from spotlight.actors.monitor.actor import MonitorState
    from spotlight.commands.monitor import StateDisplay

    state = MonitorState.empty(now=1.0)
    buf = io.StringIO()
    with StateDisplay(json_lines=True, file=buf) as display:
        display.show(state)  # nothing happened: no line
    assert buf.getvalue() == ""
    with StateDisplay(json_lines=True, full_state=True, file=buf) as display:
        display.show(state)
        display.show(state)
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert len(lines) == 2 and lines[0]["event"] == "state" and lines[0]["records"] == 0
    buf = io.StringIO()
    with StateDisplay(json_lines=False, file=buf) as display:
        display.show(state)
    assert "spotlight monitor" in buf.getvalue() and "Preemptions" in buf.getvalue()
