"""Fault-injection harness: scheduler and worker processes on loopback, killed by PID.

Used by ``tests/faults`` and ``scripts/bench_preemption.py``. Every process started here is
recorded in a :class:`Cluster` and SIGKILLed by PID in ``close()``. Waits poll a condition
under a deadline (a process's ready file, a step-log count); nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
PROMPTS = (
    "two red circles",
    "a blue square",
    "three green triangles",
    "a yellow circle left of a red square",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], bool], timeout: float, what: str, poll: float = 0.02) -> None:
    """Poll ``pred`` until true; TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


class ForkedProc:
    """A child of the launcher, with the part of ``Popen``'s interface the harness uses."""

    def __init__(self, launcher: Launcher, pid: int) -> None:
        self.launcher = launcher
        self.pid = pid

    @property
    def returncode(self) -> int | None:
        return self.launcher.exits.get(self.pid)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        with self.launcher.cond:
            if not self.launcher.cond.wait_for(
                lambda: self.pid in self.launcher.exits, timeout=timeout
            ):
                raise TimeoutError(f"process {self.pid} still running after {timeout} s")
            return self.launcher.exits[self.pid]

    def terminate(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)


class Launcher:
    """A fork server (``worker_main launcher``): imports once, forks each process in ~0.1 s.

    Its children are killed by PID in ``close()`` (and by the launcher itself on EOF)."""

    def __init__(self, log: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        with open(log, "ab") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "spotlight.nodes.pull_worker", "launcher"],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
            )
        self.cond = threading.Condition()
        self.pids: list[int] = []
        self.exits: dict[int, int] = {}
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            msg = json.loads(line)
            with self.cond:
                if "pid" in msg:
                    self.pids.append(int(msg["pid"]))
                else:
                    self.exits[int(msg["exit"])] = int(msg["rc"])
                self.cond.notify_all()

    def spawn(self, argv: list[str], log: Path) -> ForkedProc:
        assert self.popen.stdin is not None
        with self.cond:
            before = len(self.pids)
            self.popen.stdin.write((json.dumps({"argv": argv, "log": str(log)}) + "\n").encode())
            self.popen.stdin.flush()
            if not self.cond.wait_for(lambda: len(self.pids) > before, timeout=60.0):
                raise TimeoutError("the launcher did not fork within 60 s")
            return ForkedProc(self, self.pids[before])

    def close(self) -> None:
        for pid in self.pids:
            if pid not in self.exits:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes] | ForkedProc
    ready_file: Path
    report_file: Path | None = None
    notice_grace: float | None = None
    fate: str = "running"
    """running | notice | kill | exited"""
    signalled_at: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def report(self) -> dict[str, Any] | None:
        if self.report_file is not None and self.report_file.exists():
            data: dict[str, Any] = json.loads(self.report_file.read_text())
            return data
        return None


@dataclass
class Cluster:
    """Processes of one run; ``close()`` kills whatever is left, by PID."""

    tmp: Path
    timing: dict[str, Any]
    min_step_s: float = 0.0
    procs: list[Proc] = field(default_factory=list)
    scheduler: Proc | None = None
    scheduler_port: int = 0
    journal: Path | None = None
    launcher: Launcher | None = None

    def _spawn(self, name: str, argv: list[str], **extra: Any) -> Proc:
        ready = self.tmp / f"{name}.addr"
        ready.unlink(missing_ok=True)
        argv = [*argv, "--ready-file", str(ready)]
        popen: subprocess.Popen[bytes] | ForkedProc
        if self.launcher is not None:
            popen = self.launcher.spawn(argv, self.tmp / f"{name}.log")
        else:
            env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
            with open(self.tmp / f"{name}.log", "ab") as log:
                popen = subprocess.Popen(
                    [sys.executable, "-m", "spotlight.nodes.pull_worker", *argv],
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
        proc = Proc(name, popen, ready, **extra)
        self.procs.append(proc)
        return proc

    def use_launcher(self) -> None:
        """Fork processes from a pre-imported launcher (fast start-up) from now on."""
        self.launcher = Launcher(self.tmp / "launcher.log")

    def start_scheduler(self, *, restart: bool = False) -> str:
        if not restart:
            self.scheduler_port = free_port()
            self.journal = self.tmp / "scheduler.journal"
        n = sum(p.name.startswith("scheduler") for p in self.procs)
        self.scheduler = self._spawn(
            f"scheduler{n}",
            [
                "scheduler",
                "--port",
                str(self.scheduler_port),
                "--journal",
                str(self.journal),
                "--timing",
                json.dumps(self.timing),
            ],
        )
        return self.wait_ready(self.scheduler)

    @property
    def scheduler_address(self) -> str:
        return f"tcp://127.0.0.1:{self.scheduler_port}"

    def start_worker(
        self,
        worker_id: str,
        *,
        notice_grace: float | None = None,
        min_step_s: float | None = None,
        step_log: Path | None = None,
    ) -> Proc:
        argv = [
            "worker",
            "--scheduler",
            self.scheduler_address,
            "--worker-id",
            worker_id,
            "--timing",
            json.dumps(self.timing),
            "--min-step-s",
            str(self.min_step_s if min_step_s is None else min_step_s),
            "--step-log",
            str(step_log or self.tmp / f"steps-{worker_id}.log"),
        ]
        report = self.tmp / f"report-{worker_id}.json"
        if notice_grace is not None:
            argv += ["--notice-grace", str(notice_grace), "--report-file", str(report)]
        return self._spawn(worker_id, argv, report_file=report, notice_grace=notice_grace)

    def wait_ready(self, proc: Proc, timeout: float = 60.0) -> str:
        def ready() -> bool:
            if proc.popen.poll() is not None:
                log = (self.tmp / f"{proc.name}.log").read_text()[-3000:]
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{log}")
            return proc.ready_file.exists()

        wait_until(ready, timeout, f"{proc.name} to come up")
        return proc.ready_file.read_text()

    def kill(self, proc: Proc) -> None:
        proc.fate = "kill"
        proc.signalled_at = time.time()
        _signal_if_alive(proc.popen, signal.SIGKILL)
        proc.popen.wait(timeout=10)

    def notice(self, proc: Proc) -> None:
        """SIGTERM now; the notice's deadline is ``notice_grace`` s later (then SIGKILL)."""
        assert proc.notice_grace is not None
        proc.fate = "notice"
        proc.signalled_at = time.time()
        _signal_if_alive(proc.popen, signal.SIGTERM)

    def enforce_deadlines(self) -> None:
        """SIGKILL every noticed worker still alive past its deadline (the node is gone)."""
        now = time.time()
        for p in self.procs:
            if (
                p.fate == "notice"
                and p.popen.poll() is None
                and p.signalled_at is not None
                and p.notice_grace is not None
                and now >= p.signalled_at + p.notice_grace
            ):
                _signal_if_alive(p.popen, signal.SIGKILL)

    def close(self) -> None:
        for p in self.procs:
            _signal_if_alive(p.popen, signal.SIGKILL)
        for p in self.procs:
            p.popen.wait(timeout=10)
        if self.launcher is not None:
            self.launcher.close()


# ---------------------------------------------------------------- step logs


@dataclass(frozen=True)
class StepLine:
    kind: str
    worker: str
    request: str
    token: int
    step: int
    t: float


def read_step_logs(tmp: Path) -> list[StepLine]:
    out = []
    for path in sorted(tmp.glob("steps-*.log")):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 6:  # a line cut by kill -9 is incomplete: ignore it
                kind, worker, rid, token, step, t = parts
                out.append(StepLine(kind, worker, rid, int(token), int(step), float(t)))
    return out


def started_steps(lines: list[StepLine]) -> int:
    return sum(1 for x in lines if x.kind == "S")


@dataclass(frozen=True)
class Segment:
    """The steps one lease (request, token) started, and how much of them were redone."""

    request: str
    token: int
    worker: str
    first: int
    last: int
    wasted: int
    """Steps of this lease run again by the next lease of the request."""


def segments(lines: list[StepLine]) -> list[Segment]:
    by_lease: dict[tuple[str, int], list[StepLine]] = defaultdict(list)
    for x in lines:
        if x.kind == "S":
            by_lease[(x.request, x.token)].append(x)
    by_request: dict[str, list[tuple[int, list[StepLine]]]] = defaultdict(list)
    for (rid, token), xs in by_lease.items():
        by_request[rid].append((token, xs))
    out = []
    for rid, leases in by_request.items():
        leases.sort()
        for i, (token, xs) in enumerate(leases):
            first = min(x.step for x in xs)
            last = max(x.step for x in xs)
            nxt = min(x.step for x in leases[i + 1][1]) if i + 1 < len(leases) else last + 1
            out.append(Segment(rid, token, xs[0].worker, first, last, max(0, last + 1 - nxt)))
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a float32 tensor (NaN-safe exact comparison)."""
    return t.contiguous().view(torch.int32)


def same_trajectory(a: dict[str, Any], b: Any) -> bool:
    """``a`` (a result dict) equals the reference TrajectoryState ``b`` bit for bit."""
    if len(a["latents"]) != len(b.latents) or len(a["log_probs"]) != len(b.log_probs):
        return False
    return all(
        torch.equal(bits(x), bits(y)) for x, y in zip(a["latents"], b.latents, strict=True)
    ) and all(
        torch.equal(bits(x), bits(y)) for x, y in zip(a["log_probs"], b.log_probs, strict=True)
    )


def reference_trajectories(
    requests: list[Any], *, model_seed: int = 0, noise_level: float = 0.7
) -> dict[str, Any]:
    """Uninterrupted runs of every request, in this process, one thread (as the workers)."""
    from spotlight.models.dit import build_policy
    from spotlight.models.sampler import SamplerConfig, sample

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        policy = build_policy("tiny", seed=model_seed).eval()
        cfg = policy.config
        out = {}
        for r in requests:
            text = policy.encode_prompts([r.prompt])
            out[r.request_id] = sample(
                lambda x, s, text=text: policy(x, s, text),
                [r.seed],
                (cfg.num_tokens, cfg.token_dim),
                SamplerConfig(num_steps=r.num_steps, noise_level=noise_level),
            )
        return out
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- the submitting client


@dataclass
class Collected:
    groups: dict[str, Any] = field(default_factory=dict)
    duplicates: int = 0
    retries: int = 0
    seconds: float = 0.0


async def submit_and_collect(
    address: str, requests: list[Any], *, within_s: float, poll_s: float = 0.1
) -> Collected:
    """Submit ``requests`` and long-poll ``collect`` until every group arrived; survives
    scheduler restarts (retries on PeerLost/Timeout); counts duplicate deliveries."""
    import asyncio

    from spotlight.actors.scheduling.scheduler import SchedulerActor
    from spotlight.runtime import Runtime, RuntimeConfig
    from spotlight.runtime.errors import SpotlightError

    want = {r.group_id for r in requests}
    out = Collected()
    t0 = time.monotonic()
    cfg = RuntimeConfig(heartbeat_s=0.25, missed_heartbeats=4, stop_timeout_s=2.0)
    async with Runtime(cfg) as rt:
        sched = rt.ref(address, "scheduler", cls=SchedulerActor)
        await sched.submit.ask(requests, timeout=20.0)
        ack: list[str] = []
        while set(out.groups) != want:
            if time.monotonic() - t0 > within_s:
                missing = sorted(want - set(out.groups))
                raise TimeoutError(f"groups {missing} not delivered within {within_s} s")
            try:
                got = await sched.collect.ask(ack, wait_s=1.0, timeout=5.0)
            except (SpotlightError, TimeoutError):
                out.retries += 1
                await asyncio.sleep(poll_s)  # retry backoff while the scheduler restarts
                continue
            ack = []
            for g in got:
                if g.group_id in out.groups:
                    out.duplicates += 1
                out.groups[g.group_id] = g
                ack.append(g.group_id)
        with contextlib.suppress(SpotlightError, TimeoutError):
            await sched.collect.ask(ack, wait_s=0.0, timeout=5.0)
    out.seconds = time.monotonic() - t0
    return out


def _signal_if_alive(popen: subprocess.Popen | ForkedProc, sig: int) -> None:
    """Signal a child unless it has exited; one that exits between the check and the
    signal (it was already on its way out) is not an error."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(popen.pid, sig)
