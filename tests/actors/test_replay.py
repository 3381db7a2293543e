"""Trace replay on a fake clock, and the process launcher with real child processes."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from spotlight.actors.spot.replay import (
    ProcessNodeLauncher,
    RecordingLauncher,
    ReplayEvent,
    TraceReplayer,
)
from spotlight.actors.spot.trace import parse_trace, synthesize_notices
from spotlight.actors.weights.share import remove_published_by
from spotlight.commands import cluster
from tests.procs import process_gone, wait_for

pytestmark = pytest.mark.timeout(60)

TRACE = "t_s,event,node\n0,add,a\n10,add,b\n100,notice,a\n220,remove,a\n300,remove,b\n"


class FakeClock:
    """A clock whose sleep advances time at once (no real waiting)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


def test_replay_order_timing_and_deadlines() -> None:
    clock, launcher = FakeClock(), RecordingLauncher()
    seen: list[ReplayEvent] = []
    replayer = TraceReplayer(
        parse_trace(TRACE),
        launcher,
        time_scale=10,
        clock=clock,
        sleep=clock.sleep,
        on_event=seen.append,
    )
    stats = asyncio.run(replayer.run())
    assert launcher.calls == [
        ("add", "a", None),
        ("add", "b", None),
        ("notice", "a", pytest.approx(1000.0 + 22.0)),  # deadline = start + 220 / 10
        ("remove", "a", False),
        ("remove", "b", True),  # no notice before it: silent
    ]
    assert [e.played_at for e in seen] == pytest.approx([0.0, 1.0, 10.0, 22.0, 30.0])
    assert [e.trace_t_s for e in seen] == [0.0, 10.0, 100.0, 220.0, 300.0]
    assert seen[2].deadline_in_s == pytest.approx(12.0)
    assert (stats.adds, stats.notices, stats.removes_with_notice, stats.removes_silent) == (
        2,
        1,
        1,
        1,
    )
    assert stats.max_lag_s == 0.0
    assert json.loads(json.dumps(seen[4].to_dict()))["silent"] is True


def test_replay_with_synthesized_notices() -> None:
    clock, launcher = FakeClock(), RecordingLauncher()
    trace = synthesize_notices(parse_trace(TRACE), 30)
    asyncio.run(TraceReplayer(trace, launcher, clock=clock, sleep=clock.sleep).run())
    assert ("notice", "b", pytest.approx(1300.0)) in launcher.calls
    assert ("remove", "b", False) in launcher.calls


def test_replay_is_cancellable_between_events() -> None:
    async def main() -> list[tuple[str, str, object]]:
        clock, launcher = FakeClock(), RecordingLauncher()
        blocked = asyncio.Event()

        async def sleep(delay: float) -> None:
            if clock.now + delay > 1005.0:  # the event at t=10 never comes
                blocked.set()
                await asyncio.Event().wait()
            await clock.sleep(delay)

        task = asyncio.create_task(
            TraceReplayer(parse_trace(TRACE), launcher, clock=clock, sleep=sleep).run()
        )
        await asyncio.wait_for(blocked.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return launcher.calls

    assert asyncio.run(main()) == [("add", "a", None)]


# ---- real processes ---------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    out, node = sys.argv[1], os.environ["SPOTLIGHT_NODE_ID"]
    assert sys.argv[2] == node
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    def on_term(*_):  # a preemption handler that records the notice and keeps running
        with open(os.path.join(out, node + ".term"), "w") as f:
            f.write("notice")
    signal.signal(signal.SIGTERM, on_term)
    # what an SP spot node leaves in /dev/shm when it is killed (its weight snapshot)
    with open(f"/dev/shm/spotlight-w-{os.getpid()}-replaytest", "w") as f:
        f.write("weights")
    with open(os.path.join(out, node + ".tmp"), "w") as f:
        f.write(f"{os.getpid()} {grandchild.pid}")
    os.rename(os.path.join(out, node + ".tmp"), os.path.join(out, node + ".pids"))
    while True:
        signal.pause()
    """
)


def _command(tmp_path: Path) -> str:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return f"{sys.executable} {script} {tmp_path} {{node}}"


def _snapshots_of(pid: int) -> list[Path]:
    return list(Path("/dev/shm").glob(f"spotlight-w-{pid}-*"))


async def _pids(tmp_path: Path, node: str) -> list[int]:
    f = tmp_path / f"{node}.pids"
    await wait_for(f.exists, f"{node} to start")
    return [int(x) for x in f.read_text().split()]


@pytest.mark.skipif(sys.platform == "win32", reason="process groups")
def test_process_launcher_notice_and_kill(tmp_path: Path) -> None:
    async def main() -> None:
        all_pids: list[int] = []
        try:
            async with ProcessNodeLauncher(
                _command(tmp_path), on_reaped=remove_published_by
            ) as launcher:
                await launcher.add("a")
                await launcher.add("b")
                pa, pb = await _pids(tmp_path, "a"), await _pids(tmp_path, "b")
                all_pids += pa + pb
                assert sorted(launcher.live_pids()) == sorted([pa[0], pb[0]])
                with pytest.raises(RuntimeError, match="already running"):
                    await launcher.add("a")
                # notice: SIGTERM to the group; the handler records it and keeps running
                await launcher.notice("a", deadline=0.0)
                await wait_for((tmp_path / "a.term").exists, "a's SIGTERM handler")
                assert not process_gone(pa[0])
                # removal at the deadline: SIGKILL, reaped by PID
                await launcher.remove("a", silent=False)
                assert launcher.history[0].returncode == -9 and launcher.history[0].killed
                # silent removal: SIGKILL at once, grandchild included
                await launcher.remove("b", silent=True)
                assert not (tmp_path / "b.term").exists()
                await wait_for(lambda: all(process_gone(p) for p in pa + pb), "every process gone")
                assert launcher.live_pids() == []
                # the killed nodes' /dev/shm weight snapshots are removed by PID
                assert not _snapshots_of(pa[0]) and not _snapshots_of(pb[0])
        finally:
            for pid in all_pids:  # belt and braces: never leave a process behind
                if not process_gone(pid):
                    os.kill(pid, 9)

    asyncio.run(main())


@pytest.mark.skipif(sys.platform == "win32", reason="process groups")
def test_cancelled_replay_reaps_every_child(tmp_path: Path) -> None:
    async def main() -> None:
        all_pids: list[int] = []
        clock = FakeClock()
        started = asyncio.Event()

        async def sleep(delay: float) -> None:
            if clock.now + delay > 1005.0:
                started.set()
                await asyncio.Event().wait()  # stuck until cancelled
            await clock.sleep(delay)

        trace = parse_trace("t_s,event,node\n0,add,a\n0,add,b\n60,remove,a\n")

        async def replay() -> None:
            async with ProcessNodeLauncher(
                _command(tmp_path), on_reaped=remove_published_by
            ) as launcher:
                await TraceReplayer(trace, launcher, clock=clock, sleep=sleep).run()

        task = asyncio.create_task(replay())
        try:
            await asyncio.wait_for(started.wait(), 30)
            all_pids += await _pids(tmp_path, "a") + await _pids(tmp_path, "b")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_for(lambda: all(process_gone(p) for p in all_pids), "every process gone")
        finally:
            for pid in all_pids:
                if not process_gone(pid):
                    os.kill(pid, 9)

    asyncio.run(main())


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cluster.add_arguments(parser)
    return cluster.run(parser.parse_args(argv))


def test_cli_dry_run_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("t_s,event,node\n0,add,a\n0,add,b\n1800,remove,a\n3600,remove,b\n")
    rc = _cli(
        [
            "replay",
            "--trace",
            str(trace),
            "--time-scale",
            "1e6",
            "--notice",
            "120",
            "--gpus-per-node",
            "8",
            "--spot-price",
            "2.0",
        ]
    )
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    events = [x for x in lines if x["kind"] == "event"]
    assert [e["event"] for e in events] == ["add", "add", "notice", "remove", "notice", "remove"]
    summary = lines[-1]
    assert summary["kind"] == "summary"
    assert summary["preemptions_with_notice"] == 2 and summary["preemptions_silent"] == 0
    assert summary["spot_gpu_hours"] == pytest.approx(8 * 1.5)
    assert summary["spot_usd"] == pytest.approx(8 * 1.5 * 2.0)


def test_cli_runs_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("t_s,event,node\n0,add,a\n1,remove,a\n")
    cmd = f"{sys.executable} -c 'import time; time.sleep(600)'"
    assert _cli(["replay", "--trace", str(trace), "--time-scale", "100", "--command", cmd]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["preemptions_silent"] == 1


def test_cli_reports_bad_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text("t_s,event,node\n0,boot,a\n")
    assert _cli(["replay", "--trace", str(trace)]) == 2
    assert f"{trace}:2: unknown event 'boot'" in capsys.readouterr().err


def test_replay_event_record() -> None:
    ev = ReplayEvent(1.0, 0.5, "notice", "a", deadline_in_s=2.0)
    assert ev.to_dict()["deadline_in_s"] == 2.0


@pytest.mark.skipif(sys.platform == "win32", reason="signals")
@pytest.mark.parametrize(("signame", "exit_code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_ctrl_c_kills_every_node(tmp_path: Path, signame: str, exit_code: int) -> None:
    """SIGINT or SIGTERM to the replay command: it exits 128+signal, no node is left behind.

    The command starts with SIGINT *ignored*, as a shell starts background jobs (CI does):
    the command must still stop on it, so it may not rely on Python's KeyboardInterrupt.
    """
    import signal
    import subprocess

    sig = getattr(signal, signame)

    trace = tmp_path / "t.csv"
    trace.write_text("t_s,event,node\n0,add,a\n0,add,b\n3600,remove,a\n")
    code = (
        "import argparse, sys\n"
        "from spotlight.commands import cluster\n"
        "p = argparse.ArgumentParser(); cluster.add_arguments(p)\n"
        "sys.exit(cluster.run(p.parse_args(sys.argv[1:])))\n"
    )
    argv = [sys.executable, "-c", code, "replay", "--trace", str(trace), "--json",
            "--command", _command(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    pids: list[int] = []
    try:
        asyncio.run(wait_for(lambda: (tmp_path / "a.pids").exists()
                              and (tmp_path / "b.pids").exists(), "both nodes"))  # fmt: skip
        for node in ("a", "b"):
            pids += [int(x) for x in (tmp_path / f"{node}.pids").read_text().split()]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == exit_code, err
        asyncio.run(wait_for(lambda: all(process_gone(p) for p in pids), "every node gone"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids:
            if not process_gone(pid):
                os.kill(pid, 9)
