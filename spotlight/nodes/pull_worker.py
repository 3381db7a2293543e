"""Process entry points for pull scheduling: a scheduler process and a rollout worker process.

    python -m spotlight.nodes.pull_worker scheduler --port 0 --journal J --ready-file F
    python -m spotlight.nodes.pull_worker worker --scheduler tcp://127.0.0.1:P --worker-id w0 \\
        [--notice-grace 2.0] [--notice-file PATH] [--coordinator tcp://...#name] ...
    python -m spotlight.nodes.pull_worker launcher   # fork server (tests, benchmarks)

Both write their runtime address to ``--ready-file`` (atomically) once serving, which is
what tests and the benchmark wait on. Timing knobs come as one JSON object
(``--timing '{"lease_ttl_s": 2, ...}'``, the fields of :class:`SchedulingConfig`).

A worker with a notice source (``--notice-grace`` = SIGTERM with that many seconds of
notice; ``--notice-file``) drains on the notice, writes ``--report-file`` (JSON) and exits
with status 0 before the deadline. ``os._exit`` is used at the very end so a denoising step
abandoned in its thread cannot hold the process past the deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any

from spotlight.nodes.process import write_atomic

__all__ = ["main"]

log = logging.getLogger("spotlight.nodes.pull_worker")


def _timing(text: str | None) -> Any:
    from spotlight.actors.scheduling.scheduler import SchedulingConfig

    return SchedulingConfig(**json.loads(text)) if text else SchedulingConfig()


def _runtime_config(args: argparse.Namespace) -> Any:
    from spotlight.runtime import RuntimeConfig

    return RuntimeConfig(
        port=args.port,
        heartbeat_s=args.runtime_heartbeat_s,
        missed_heartbeats=4,
        ask_timeout_s=20.0,
        stop_timeout_s=2.0,
    )


def run_scheduler(args: argparse.Namespace) -> None:
    from spotlight.actors.scheduling.journal import JournalConfig
    from spotlight.actors.scheduling.scheduler import SchedulerActor
    from spotlight.runtime import Runtime, run

    async def body(rt: Runtime) -> None:
        await rt.spawn(
            SchedulerActor,
            config=_timing(args.timing),
            journal_path=args.journal,
            journal_config=JournalConfig(fsync=args.fsync),
            name="scheduler",
        )
        if args.ready_file:
            write_atomic(args.ready_file, rt.address)
        await asyncio.Event().wait()

    run(body, _runtime_config(args))


def run_worker(args: argparse.Namespace) -> None:
    import torch
    import uvloop

    torch.set_num_threads(1)  # 2-core hosts; also keeps the bits independent of the host

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        code = runner.run(_worker_body(args))
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)


async def _worker_body(args: argparse.Namespace) -> int:
    from spotlight.actors.rollout.worker import RolloutSettings, RolloutWorker
    from spotlight.actors.scheduling.preemption import PreemptionHandler, PreemptionReport
    from spotlight.actors.scheduling.scheduler import SchedulerActor
    from spotlight.models.dit import build_policy
    from spotlight.runtime import Runtime
    from spotlight.runtime.notice import FileNotice, NoticeSource, SignalNotice

    policy = build_policy(args.model, seed=args.model_seed)
    policy.eval()
    timing = _timing(args.timing)
    settings = RolloutSettings(
        noise_level=args.noise_level, min_step_s=args.min_step_s, step_log=args.step_log
    )
    done = asyncio.Event()
    reports: list[PreemptionReport] = []

    def on_exit(report: PreemptionReport) -> None:
        reports.append(report)
        done.set()

    async with Runtime(_runtime_config(args)) as rt:
        scheduler = rt.ref(args.scheduler, "scheduler", cls=SchedulerActor)
        worker = await rt.spawn(
            RolloutWorker,
            scheduler=scheduler,
            worker_id=args.worker_id,
            model=policy,
            timing=timing,
            settings=settings,
            name="rollout",
        )
        sources: list[NoticeSource] = []
        if args.notice_grace is not None:
            sources.append(SignalNotice(("SIGTERM",), grace_s=args.notice_grace))
        if args.notice_file:
            sources.append(FileNotice(args.notice_file, poll_interval_s=0.1, default_lead_s=30.0))
        coordinator = None
        if args.coordinator:
            address, _, name = args.coordinator.partition("#")
            coordinator = rt.ref(address, name or "coordinator")
        if sources:
            await rt.spawn(
                PreemptionHandler,
                worker=worker,
                worker_id=args.worker_id,
                sources=sources,
                coordinator=coordinator,
                on_exit=on_exit,
                name="preemption",
            )
        if args.ready_file:
            write_atomic(args.ready_file, rt.address)
        await done.wait()
        if args.report_file and reports:
            write_atomic(args.report_file, json.dumps(dataclasses.asdict(reports[0])))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(rt.shutdown("preempted"), timeout=0.5)
    log.info("worker %s exits at %.3f", args.worker_id, time.time())
    return 0


def run_launcher() -> None:
    """Fork server for tests and benchmarks: import torch, diffusers and the actors once,
    then fork a scheduler or worker per request (start-up in ~0.1 s instead of seconds).

    Protocol on stdin/stdout, one JSON object per line: in ``{"argv": [...], "log": path}``;
    out ``{"pid": N}`` per fork and ``{"exit": N, "rc": code}`` when a child ends (rc < 0:
    killed by signal -rc). On end of input the remaining children are SIGKILLed by PID. The
    launcher itself runs no torch op before forking (an initialised OpenMP pool does not
    survive a fork).
    """
    import signal

    import uvloop  # noqa: F401 - imported before forking, on purpose
    import zmq  # noqa: F401

    import spotlight.actors.rollout.worker
    import spotlight.actors.scheduling.preemption
    import spotlight.actors.scheduling.scheduler
    import spotlight.models.dit  # noqa: F401

    children: set[int] = set()

    def emit(obj: dict[str, Any]) -> None:
        os.write(1, (json.dumps(obj) + "\n").encode())  # one write: safe in a handler

    def reap(_signum: int, _frame: Any) -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            emit({"exit": pid, "rc": os.waitstatus_to_exitcode(status)})

    signal.signal(signal.SIGCHLD, reap)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: own logs, default signals, then the role's main
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            try:
                main(req["argv"])
            except SystemExit as exc:
                os._exit(exc.code if isinstance(exc.code, int) else 1)
            except BaseException:
                import traceback

                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        children.add(pid)
        emit({"pid": pid})
    for pid in list(children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    if argv is None and sys.argv[1:2] == ["launcher"]:
        run_launcher()
        return
    parser = argparse.ArgumentParser(prog="python -m spotlight.nodes.pull_worker")
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("scheduler", "worker"):
        p = sub.add_parser(role)
        p.add_argument("--port", type=int, default=0, help="0 = a free port")
        p.add_argument("--ready-file", default=None, help="write the address here when up")
        p.add_argument("--timing", default=None, help="SchedulingConfig fields as JSON")
        p.add_argument("--runtime-heartbeat-s", type=float, default=0.25)
        p.add_argument("--log-level", default="WARNING")
    s = sub.choices["scheduler"]
    s.add_argument("--journal", default=None, help="journal path (durable across restarts)")
    s.add_argument("--fsync", default="always", choices=("always", "interval", "never"))
    w = sub.choices["worker"]
    w.add_argument("--scheduler", required=True, help="scheduler runtime address tcp://...")
    w.add_argument("--worker-id", required=True)
    w.add_argument("--model", default="tiny")
    w.add_argument("--model-seed", type=int, default=0)
    w.add_argument("--noise-level", type=float, default=0.7)
    w.add_argument("--min-step-s", type=float, default=0.0)
    w.add_argument("--step-log", default=None)
    w.add_argument("--notice-grace", type=float, default=None, help="SIGTERM = notice, lead s")
    w.add_argument("--notice-file", default=None)
    w.add_argument("--coordinator", default=None, help="ADDRESS#ACTOR told on preemption")
    w.add_argument("--report-file", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format=f"%(asctime)s {args.role} %(levelname)s %(message)s"
    )
    if args.role == "scheduler":
        run_scheduler(args)
    else:
        run_worker(args)


if __name__ == "__main__":
    main()
