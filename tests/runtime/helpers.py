"""Shared test helpers: an event-loop runner with asyncio debug on, a fast config,
actor classes used on both sides of a process boundary, and a child-process peer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from spotlight.runtime import Actor, RuntimeConfig, endpoint

T = TypeVar("T")

# Heartbeats shrunk so loss is detected in ~1 s; generous enough for a loaded 2-core box.
FAST = RuntimeConfig(heartbeat_s=0.25, missed_heartbeats=4, ask_timeout_s=20.0, stop_timeout_s=3.0)
REPO = Path(__file__).resolve().parents[2]


def arun(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop with asyncio debug mode (a blocked loop gets reported)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop, debug=True) as runner:
        return runner.run(coro)


class Adder(Actor):
    def __init__(self, base: int = 0) -> None:
        self.base = base
        self.seen: list[int] = []

    @endpoint
    async def add(self, a: int) -> int:
        return self.base + a

    @endpoint
    async def record(self, x: int) -> None:
        self.seen.append(x)

    @endpoint
    async def history(self) -> list[int]:
        return self.seen

    @endpoint
    async def count(self, n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            yield i

    @endpoint
    async def boom(self, message: str) -> None:
        raise ValueError(message)

    @endpoint
    async def echo(self, value: Any) -> Any:
        return value

    @endpoint
    async def hang(self) -> None:
        await asyncio.Event().wait()

    @endpoint
    async def runtime_stats(self) -> dict[str, Any]:
        return self.runtime.statistics()

    def helper(self) -> None:
        """Not an endpoint (a ref must refuse it with a hint)."""


def peer_main(ready_file: str, heartbeat_s: float) -> None:
    """Body of the child process: host an ``Adder`` named ``adder`` until killed."""
    import torch  # noqa: F401  (tensors arrive: import before serving, not on the loop)

    from spotlight.runtime import Runtime, run

    async def main(rt: Runtime) -> None:
        await rt.spawn(Adder, 100, name="adder")
        tmp = ready_file + ".tmp"
        Path(tmp).write_text(rt.address)  # noqa: ASYNC240 (tiny, once)
        os.replace(tmp, ready_file)
        await asyncio.Event().wait()

    run(main, RuntimeConfig(heartbeat_s=heartbeat_s, missed_heartbeats=4))


@contextmanager
def child_peer(
    tmp_path: Path, heartbeat_s: float = 0.25
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start a child process hosting a runtime; yield (process, address); kill by PID."""
    ready = tmp_path / f"peer-{os.getpid()}-{id(tmp_path)}.addr"
    code = f"from tests.runtime.helpers import peer_main; peer_main({str(ready)!r}, {heartbeat_s})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        deadline = 30.0
        step = 0.05
        waited = 0.0
        import time

        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"peer process exited early with {proc.returncode}")
            if waited > deadline:
                raise TimeoutError("peer process did not publish its address in 30 s")
            time.sleep(step)
            waited += step
        yield proc, ready.read_text()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
