"""A local SP cluster: member processes on loopback plus the store (tests, benchmarks, and a
spot node's members, see ``sp_node.py``).

The owner (the caller's process) hosts the long-lived ``TCPStore`` (``use_libuv=False``,
which survives members coming and going) and launches ``sp_worker`` processes. Every process
is tracked by PID and killed by PID in :meth:`LocalSPCluster.close`; with ``die_with_parent``
the members are also SIGKILLed by the kernel when the owner dies (a SIGKILLed spot node).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from spotlight.actors.sp.member import MEMBER_NAME
from spotlight.actors.weights.share import remove_published_by

__all__ = ["LocalSPCluster", "Worker"]


@dataclass
class Worker:
    """One launched member process."""

    proc: subprocess.Popen[bytes]
    ready_file: Path
    node: str
    started: float = field(default_factory=time.perf_counter)
    address: str = ""

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


class LocalSPCluster:
    """Member processes on 127.0.0.1 sharing one store; use as a context manager."""

    def __init__(
        self,
        workdir: Path,
        *,
        heartbeat_s: float = 0.25,
        threads: int = 1,
        model: str = "tiny",
        lora: str | None = None,
        die_with_parent: bool = False,
        log_dir: Path | None = None,
    ) -> None:
        """``model``: a config name or a DiTConfig as JSON (``sp_worker --model``); ``lora``:
        LoRA settings as JSON (members then load ``launch``'s ``checkpoint`` as the base).
        ``die_with_parent``: members get SIGKILL when this process exits (launch from the main
        thread: Linux ties it to the launching thread). ``log_dir``: each member's output goes
        to ``member<N>.log`` there (default: inherited)."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.heartbeat_s = heartbeat_s
        self.threads = threads
        self.model = model
        self.lora = lora
        self.die_with_parent = die_with_parent
        self.log_dir = log_dir
        self.store = dist.TCPStore(
            "127.0.0.1", 0, None, True, timeout=timedelta(seconds=30), use_libuv=False
        )
        self.store_port = int(self.store.port)
        self.workers: list[Worker] = []
        self._count = 0

    def __enter__(self) -> LocalSPCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def launch(
        self, n: int, *, seed: int = 0, node: str = "node0", checkpoint: str | None = None
    ) -> list[Worker]:
        """Start ``n`` member processes (not waiting for them; see :meth:`wait_ready`)."""
        out = []
        for _ in range(n):
            self._count += 1
            ready = self.workdir / f"member{self._count}.addr"
            ready.unlink(missing_ok=True)
            cmd = [
                sys.executable,
                "-m",
                "spotlight.nodes.sp_member",
                "--store-port",
                str(self.store_port),
                "--node",
                node,
                "--seed",
                str(seed),
                "--ready-file",
                str(ready),
                "--heartbeat-s",
                str(self.heartbeat_s),
                "--threads",
                str(self.threads),
                "--model",
                self.model,
            ]
            if checkpoint is not None:
                cmd += ["--checkpoint", checkpoint]
            if self.lora is not None:
                cmd += ["--lora", self.lora]
            if self.die_with_parent:
                cmd += ["--parent-pid", str(os.getpid())]
            out_file = None
            if self.log_dir is not None:
                out_file = open(self.log_dir / f"member{self._count}.log", "ab")  # noqa: SIM115
            try:
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out_file,
                    stderr=subprocess.STDOUT if out_file is not None else None,
                )
            finally:
                if out_file is not None:
                    out_file.close()  # the child holds its own descriptor
            w = Worker(proc=proc, ready_file=ready, node=node)
            self.workers.append(w)
            out.append(w)
        return out

    def wait_ready(self, workers: list[Worker], timeout_s: float = 120.0) -> list[str]:
        """Block until each worker published its runtime address; returns the addresses."""
        deadline = time.monotonic() + timeout_s
        for w in workers:
            while not w.ready_file.exists():
                if not w.alive:
                    raise RuntimeError(f"SP worker {w.proc.pid} exited with {w.proc.returncode}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"SP worker {w.proc.pid} not ready after {timeout_s} s")
                time.sleep(0.01)
            w.address = w.ready_file.read_text()
        return [w.address for w in workers]

    @staticmethod
    def member_name() -> str:
        return MEMBER_NAME

    def terminate(self, grace_s: float) -> None:
        """SIGTERM every live member, wait up to ``grace_s`` in all, then :meth:`close`."""
        for w in self.workers:
            if w.alive:
                os.kill(w.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for w in self.workers:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
        self.close()

    def kill(self, w: Worker, sig: int = signal.SIGKILL) -> None:
        if w.alive:
            os.kill(w.proc.pid, sig)
        w.proc.wait(timeout=30)
        remove_published_by(w.proc.pid)

    def close(self) -> None:
        for w in self.workers:
            if w.alive:
                os.kill(w.proc.pid, signal.SIGKILL)
        for w in self.workers:
            try:
                w.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                print(f"SP worker {w.proc.pid} did not exit after SIGKILL", file=sys.stderr)
            remove_published_by(w.proc.pid)  # killed members cannot clean up their snapshots
