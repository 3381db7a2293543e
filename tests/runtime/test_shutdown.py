"""Shutdown: no thread or process left behind, cancels carry reasons, Ctrl-C is graceful."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from spotlight.runtime import Actor, Runtime, endpoint, run
from tests.runtime.helpers import FAST, REPO, Adder, arun

reasons: list[str] = []


class Holder(Actor):
    @endpoint(concurrent=True)
    async def hold(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            reasons.append(str(exc.args[0]) if exc.args else "")
            raise

    @endpoint
    async def blocking(self) -> int:
        return await asyncio.to_thread(sum, range(1000))


def test_shutdown_leaves_no_thread_and_cancels_with_reason() -> None:
    before = set(threading.enumerate())
    reasons.clear()

    async def main() -> None:
        async with Runtime(FAST) as a, Runtime(FAST) as b:
            await a.spawn(Holder, name="holder")
            ref = b.ref(a.address, "holder", cls=Holder)
            assert await ref.blocking.ask() == 499500
            await ref.hold.tell()
            call = asyncio.ensure_future(ref.hold.ask(timeout=30.0))
            while a.statistics()["actors"][0]["running"] < 2:  # noqa: ASYNC110 (polls state; test timeout bounds it)
                await asyncio.sleep(0.01)
            await a.shutdown("test shutdown")
            assert a.closed
            try:
                await call
            except Exception as exc:  # the caller learns at once, it does not hang
                assert type(exc).__name__ in ("ActorStopped", "PeerLost"), exc

    t0 = time.monotonic()
    arun(main())
    assert time.monotonic() - t0 < 10.0
    assert reasons == ["test shutdown", "test shutdown"]
    leftover = [t for t in threading.enumerate() if t not in before]
    assert leftover == [], leftover


def test_run_returns_main_result_and_cleans_up() -> None:
    before = set(threading.enumerate())

    async def main(rt: Runtime) -> int:
        ref = await rt.spawn(Adder, 40)
        return await ref.add.ask(2)

    assert run(main, FAST) == 42
    assert [t for t in threading.enumerate() if t not in before] == []


_CHILD = """
import asyncio, os, sys, threading
from pathlib import Path
from spotlight.runtime import Actor, RuntimeConfig, endpoint, run

def os_threads():
    return len(os.listdir("/proc/self/task"))

def child_processes():
    return sum(len(open(f"/proc/self/task/{t}/children").read().split())
               for t in os.listdir("/proc/self/task"))

base = os_threads()

ready = Path(sys.argv[1])
hang_on_stop = sys.argv[2] == "hang"

class Worker(Actor):
    async def on_stop(self):
        print("on_stop", flush=True)
        if hang_on_stop:
            ready.with_suffix(".stopping").write_text("1")
            await asyncio.Event().wait()

async def main(rt):
    await rt.spawn(Worker, name="w")
    ready.write_text(rt.address)
    await asyncio.Event().wait()

try:
    run(main, RuntimeConfig(stop_timeout_s=60.0))
except SystemExit as exc:
    print("exit", exc.code, "threads", threading.active_count(), flush=True)
    print("os threads leaked", os_threads() - base, "children", child_processes(), flush=True)
    raise
"""


def _start_child(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(ready), mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None, "child died during start"
        assert time.monotonic() < deadline, "child did not start in 30 s"
        time.sleep(0.05)
    return proc, ready


def test_ctrl_c_once_shuts_down_gracefully(tmp_path: Path) -> None:
    proc, _ = _start_child(tmp_path, "graceful")
    try:
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 128 + signal.SIGINT
        assert "on_stop" in out
        assert "exit 130 threads 1" in out  # only the main thread is left
        assert "os threads leaked 0 children 0" in out  # zmq's I/O threads are gone too
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    proc, ready = _start_child(tmp_path, "hang")
    try:
        os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while not ready.with_suffix(".stopping").exists():
            assert time.monotonic() < deadline, "on_stop never ran"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)  # on_stop hangs for up to 60 s; this must not wait
        proc.communicate(timeout=10)
        assert proc.returncode == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
