"""`spotlight demo` (the runtime demo) finishes, checks its own traffic, and leaves no process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.procs import process_gone


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(180)
def test_spotlight_demo_exits_cleanly_and_leaves_no_processes() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "spotlight.cli", "demo", "--duration", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    records: list[dict] = []
    try:
        out, err = proc.communicate(timeout=150)
        records = [json.loads(line) for line in out.splitlines() if line.strip()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        worker_pids = next((r["pids"] for r in records if r.get("event") == "start"), [])
        leftovers = [pid for pid in worker_pids if not process_gone(pid)]
        _kill_all(worker_pids)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout tail: {out[-2000:]}\n{err}"
    assert records[0]["event"] == "start" and len(worker_pids) == 3
    done = records[-1]
    assert done["event"] == "done" and done["ok"], done
    assert done["exactly_once"] and done["chunks"] > 0 and done["exit_codes"] == [0, 0, 0]
    ticks = [r for r in records if r["event"] == "tick"]
    assert ticks and all(set(r) >= {"msgs_per_s", "bytes_per_s", "workers"} for r in ticks)
    assert leftovers == [], f"worker processes still alive after exit: {leftovers}"


def test_bad_arguments_fail_before_starting_anything() -> None:
    from spotlight.cli import main

    t0 = time.monotonic()
    assert main(["demo", "--workers", "1"]) == 2
    assert main(["demo", "--duration", "0"]) == 2
    assert time.monotonic() - t0 < 5
