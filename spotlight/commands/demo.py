"""`spotlight demo`: a live demo of the actor runtime (tensors around a ring of processes).

It was `spotlight run` until the whole system landed there; it stays as a quick check that
the runtime, transport and codec work on this machine.

The parent process hosts a ``collector`` actor and draws the view; ``--workers`` child
processes each host one ``worker`` actor. Workers form a ring (0 -> 1 -> ... -> 0):

    parent: collector  <--- report (tell, every 0.5 s) ---  each worker's driver
    worker i driver    --- Chunk tensors (tell, credits) --->  worker i+1 actor
    worker i driver    --- ping (ask, round trip)        --->  worker i+1 actor

Each chunk is a tensor of a rotating dtype (float32, bfloat16, float16, int64, uint8)
carrying its CRC-32; the receiver recomputes it, and at the end the parent checks that
every chunk a worker sent was received exactly once, intact. ``tell`` waits for credits,
so a fast sender cannot flood a slow receiver (back-pressure).

Shutdown order: the parent asks every worker to ``stop`` (the driver stops sending, then
flushes with one ask through the same FIFO path, so the receiver has handled everything
before ``stop`` returns), reads the final counters, closes each child's stdin (the child
shuts its runtime down and exits), waits, and kills by PID whatever is still alive.
Children run in their own session, so Ctrl-C reaches only the parent, which then
performs the same shutdown. A child whose parent dies sees stdin close and exits.

When stdout is not a terminal the view is replaced by JSON lines (one per second, plus
a ``start`` and a ``done`` record) for logs and tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
import zlib
from collections import deque
from typing import Any

import torch

from spotlight.runtime import Actor, ActorRef, Runtime, RuntimeConfig, endpoint
from spotlight.runtime.codec import register_wire_type

__all__ = ["add_arguments", "run"]

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.uint8)
REPORT_EVERY_S = 0.5
JOIN_TIMEOUT_S = 120.0  # children import torch on a possibly busy machine
CALL_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 15.0
RTT_WINDOW = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration", type=float, default=25.0, help="seconds of traffic (default 25)"
    )
    parser.add_argument(
        "--workers", type=int, default=3, help="worker processes in the ring, 2..8 (default 3)"
    )
    parser.add_argument(
        "--tensor-kib",
        type=int,
        default=256,
        help="size of each tensor chunk in KiB (default 256: above the 64 KiB zero-copy threshold)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="chunks per second each worker sends; 0 (default) sends as fast as credits "
        "allow, so round trips include queueing behind the chunks in flight",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON lines instead of the live view (automatic when stdout is not a TTY)",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What the demo runs; validated so a bad flag fails before any process starts."""

    duration_s: float
    """Seconds of traffic after every worker has joined."""
    workers: int
    """Worker processes in the ring."""
    tensor_bytes: int
    """Size of each chunk's tensor."""
    rate: float = 0.0
    """Chunks per second per worker; 0 means as fast as back-pressure allows."""
    json_lines: bool
    """JSON lines instead of the rich live view."""

    def __post_init__(self) -> None:
        if not 0 < self.duration_s <= 24 * 3600:
            raise ValueError(f"--duration {self.duration_s} must be in (0, 86400] seconds")
        if not 2 <= self.workers <= 8:
            raise ValueError(f"--workers {self.workers} must be between 2 and 8")
        if not 8 <= self.tensor_bytes <= 256 * 1024 * 1024:
            raise ValueError(
                f"--tensor-kib {self.tensor_bytes // 1024} must be between 1 and 262144"
            )
        if not 0 <= self.rate <= 1e6:
            raise ValueError(f"--rate {self.rate} must be between 0 (unlimited) and 1e6 per s")


@register_wire_type(name="spotlight.demo.Chunk")
@dataclasses.dataclass(frozen=True)
class Chunk:
    """One tensor on the ring with the CRC-32 of its bytes, checked on arrival."""

    sender: str
    seq: int
    data: torch.Tensor
    crc: int


@register_wire_type(name="spotlight.demo.Plan")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """What the parent tells a worker once the whole ring has joined."""

    next: str
    """Address of the next worker's runtime in the ring (its actor is named ``worker``)."""
    tensor_bytes: int
    rate: float


def _crc(t: torch.Tensor) -> int:
    return zlib.crc32(t.reshape(-1).view(torch.uint8).numpy().data)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# ===================================================================== worker side


@dataclasses.dataclass
class WorkerState:
    """Counters shared by a worker's actor (receiving side) and its driver (sending side)."""

    name: str
    sent_msgs: int = 0
    sent_bytes: int = 0
    recv_msgs: int = 0
    recv_bytes: int = 0
    corrupt: int = 0
    pings: int = 0
    recv_from: dict[str, int] = dataclasses.field(default_factory=dict)
    rtt_us: deque[float] = dataclasses.field(default_factory=lambda: deque(maxlen=RTT_WINDOW))
    plan: asyncio.Future[Plan] = dataclasses.field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    stopped: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def counters(self) -> dict[str, Any]:
        rtt = list(self.rtt_us)
        return {
            "name": self.name,
            "pid": os.getpid(),
            "sent_msgs": self.sent_msgs,
            "sent_bytes": self.sent_bytes,
            "recv_msgs": self.recv_msgs,
            "recv_bytes": self.recv_bytes,
            "corrupt": self.corrupt,
            "pings": self.pings,
            "recv_from": dict(self.recv_from),
            "rtt_p50_us": _percentile(rtt, 50),
            "rtt_p99_us": _percentile(rtt, 99),
        }


class Worker(Actor):
    """Receives chunks and pings from its ring neighbour; takes orders from the parent."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state

    @endpoint
    async def chunk(self, chunk: Chunk) -> None:
        state = self.state
        state.recv_msgs += 1
        state.recv_bytes += chunk.data.nbytes
        state.recv_from[chunk.sender] = state.recv_from.get(chunk.sender, 0) + 1
        if _crc(chunk.data) != chunk.crc:
            state.corrupt += 1

    @endpoint
    async def flush(self) -> int:
        """Answered in mailbox order: every chunk sent before it has been handled."""
        return self.state.recv_msgs

    @endpoint(concurrent=True)
    async def ping(self, t_ns: int) -> int:
        return t_ns

    @endpoint(concurrent=True)
    async def start(self, plan: Plan) -> None:
        if not self.state.plan.done():
            self.state.plan.set_result(plan)

    @endpoint(concurrent=True)
    async def stop(self) -> dict[str, Any]:
        """Stop sending, wait until the neighbour handled all we sent, return counters."""
        self.state.stop.set()
        await asyncio.wait_for(self.state.stopped.wait(), CALL_TIMEOUT_S)
        return self.state.counters()

    @endpoint(concurrent=True)
    async def counters(self) -> dict[str, Any]:
        return self.state.counters()


def _payloads(tensor_bytes: int, name: str) -> list[tuple[torch.Tensor, int]]:
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    out = []
    for dtype in DTYPES:
        itemsize = torch.empty((), dtype=dtype).element_size()
        n = max(1, tensor_bytes // itemsize)
        if dtype.is_floating_point:
            t = torch.randn(n, generator=gen).to(dtype)
        else:
            t = torch.randint(0, 200, (n,), generator=gen).to(dtype)
        out.append((t, _crc(t)))
    return out


async def _drive(rt: Runtime, state: WorkerState, plan: Plan, parent: str) -> None:
    """Send chunks and pings to the next worker and report to the parent until stopped."""
    nxt = await rt.lookup(plan.next, "worker", timeout=CALL_TIMEOUT_S)
    collector = await rt.lookup(parent, "collector", timeout=CALL_TIMEOUT_S)
    payloads = _payloads(plan.tensor_bytes, state.name)

    async def send() -> None:
        seq = 0
        period = 1.0 / plan.rate if plan.rate else 0.0
        next_t = time.monotonic()
        while not state.stop.is_set():
            if period:
                next_t += period
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.stop.wait(), max(0.0, next_t - time.monotonic()))
                if state.stop.is_set():
                    break
            data, crc = payloads[seq % len(payloads)]
            await nxt.chunk.tell(Chunk(state.name, seq, data, crc), timeout=CALL_TIMEOUT_S)
            state.sent_msgs += 1
            state.sent_bytes += data.nbytes
            seq += 1

    async def ping() -> None:
        while not state.stop.is_set():
            t0 = time.perf_counter_ns()
            await nxt.ping.ask(t0, timeout=CALL_TIMEOUT_S)
            state.rtt_us.append((time.perf_counter_ns() - t0) / 1e3)
            state.pings += 1
            await asyncio.sleep(0.01)

    async def report() -> None:
        while not state.stop.is_set():
            await collector.report.tell(state.counters(), timeout=CALL_TIMEOUT_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.stop.wait(), REPORT_EVERY_S)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(send())
        tg.create_task(ping())
        tg.create_task(report())
    await nxt.flush.ask(timeout=CALL_TIMEOUT_S)  # same FIFO path as the chunks
    state.stopped.set()


async def _stdin_closed() -> None:
    """Completes when the parent closes our stdin (or dies)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while await reader.read(4096):
            pass
    finally:
        transport.close()


async def _worker_main(index: int, parent: str) -> None:
    name = f"worker-{index}"
    state = WorkerState(name=name)
    async with Runtime(RuntimeConfig()) as rt:
        await rt.spawn(Worker, state, name="worker")
        collector = await rt.lookup(parent, "collector", timeout=JOIN_TIMEOUT_S)
        await collector.register.ask(index, rt.address, os.getpid(), timeout=CALL_TIMEOUT_S)
        eof: asyncio.Future[None] = asyncio.ensure_future(_stdin_closed())
        try:
            first: set[asyncio.Future[Any]] = {eof, state.plan}
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
            if state.plan.done():
                drive = asyncio.ensure_future(_drive(rt, state, state.plan.result(), parent))
                await asyncio.wait({eof, drive}, return_when=asyncio.FIRST_COMPLETED)
                if not drive.done():  # parent gone or interrupted: no flush, just leave
                    state.stop.set()
                    drive.cancel()
                    await asyncio.wait({drive}, timeout=CALL_TIMEOUT_S)
                    if drive.done() and not drive.cancelled():
                        # Neighbours leave at the same moment (PeerLost "peer shut down"):
                        # expected while stopping, so retrieve it instead of logging it.
                        drive.exception()
                elif not drive.cancelled() and drive.exception() is not None:
                    raise RuntimeError(f"{name} driver failed") from drive.exception()
            await eof
        finally:
            eof.cancel()


def _child_main(argv: list[str]) -> int:
    """Entry point of a worker process: ``_child_main([index, parent_address])``."""
    import uvloop

    index, parent = int(argv[0]), argv[1]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_worker_main(index, parent))
    return 0


# ===================================================================== parent side


@dataclasses.dataclass
class Peer:
    index: int
    proc: subprocess.Popen[bytes]
    address: str | None = None
    reports: deque[tuple[float, dict[str, Any]]] = dataclasses.field(
        default_factory=lambda: deque(maxlen=4)
    )
    final: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"worker-{self.index}"

    def rates(self) -> dict[str, float]:
        if len(self.reports) < 2:
            return {
                "sent_msgs_s": 0.0,
                "sent_bytes_s": 0.0,
                "recv_msgs_s": 0.0,
                "recv_bytes_s": 0.0,
            }
        (t0, a), (t1, b) = self.reports[0], self.reports[-1]
        dt = max(t1 - t0, 1e-6)
        return {
            f"{k}_s": (b[k] - a[k]) / dt
            for k in ("sent_msgs", "sent_bytes", "recv_msgs", "recv_bytes")
        }

    def row(self, now: float) -> dict[str, Any]:
        last_t, last = self.reports[-1] if self.reports else (0.0, {})
        code = self.proc.poll()
        status = (
            f"exited {code}"
            if code is not None
            else ("joining" if self.address is None else "silent" if now - last_t > 3 else "up")
        )
        return {
            "name": self.name,
            "pid": self.proc.pid,
            "address": self.address,
            "status": status,
            **{k: round(v, 1) for k, v in self.rates().items()},
            "rtt_p50_us": last.get("rtt_p50_us"),
            "rtt_p99_us": last.get("rtt_p99_us"),
            "sent_msgs": last.get("sent_msgs", 0),
            "recv_msgs": last.get("recv_msgs", 0),
            "corrupt": last.get("corrupt", 0),
        }


class Collector(Actor):
    """The parent's mailbox: workers register here and report their counters."""

    def __init__(self, peers: dict[int, Peer], joined: asyncio.Event) -> None:
        self.peers = peers
        self.joined = joined

    @endpoint
    async def register(self, index: int, address: str, pid: int) -> None:
        peer = self.peers.get(index)
        if peer is None or peer.proc.pid != pid:
            raise ValueError(f"unknown worker {index} (pid {pid})")
        peer.address = address
        if all(p.address is not None for p in self.peers.values()):
            self.joined.set()

    @endpoint
    async def report(self, counters: dict[str, Any]) -> None:
        for peer in self.peers.values():
            if peer.name == counters.get("name"):
                peer.reports.append((time.monotonic(), counters))


def _spawn_worker(index: int, parent: str) -> subprocess.Popen[bytes]:
    code = "import sys; from spotlight.commands.demo import _child_main; sys.exit(_child_main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, str(index), parent],
        stdin=subprocess.PIPE,
        start_new_session=True,  # Ctrl-C reaches only the parent, which stops us in order
    )


def _reap(peers: dict[int, Peer]) -> list[int | None]:
    """Close stdins (ask to exit), wait, then kill by PID whatever is left."""
    for peer in peers.values():
        if peer.proc.stdin is not None:
            with contextlib.suppress(OSError):
                peer.proc.stdin.close()
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    codes: list[int | None] = []
    for peer in peers.values():
        try:
            codes.append(peer.proc.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            peer.proc.kill()
            peer.proc.wait(timeout=EXIT_TIMEOUT_S)
            codes.append(None)  # did not exit by itself
    return codes


class View:
    """Rich live table on a terminal, JSON lines otherwise."""

    def __init__(self, cfg: DemoConfig) -> None:
        self.cfg = cfg
        self.live: Any = None
        self.last_json = 0.0

    def __enter__(self) -> View:
        if not self.cfg.json_lines:
            from rich.live import Live

            self.live = Live(refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def emit(self, record: dict[str, Any]) -> None:
        if self.cfg.json_lines:
            print(json.dumps(record), flush=True)
        elif self.live is not None and record["event"] == "done":
            self.live.console.print(_summary_text(record), markup=False, highlight=False)

    def update(self, peers: dict[int, Peer], elapsed: float, rt: Runtime) -> None:
        now = time.monotonic()
        rows = [p.row(now) for p in peers.values()]
        if self.cfg.json_lines:
            if now - self.last_json >= 1.0:
                self.last_json = now
                self.emit({"event": "tick", **_totals(rows, elapsed), "workers": rows})
        elif self.live is not None:
            self.live.update(_table(rows, elapsed, self.cfg, rt))


def _totals(rows: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    return {
        "t_s": round(elapsed, 2),
        "msgs_per_s": round(sum(r["recv_msgs_s"] for r in rows), 1),
        "bytes_per_s": round(sum(r["recv_bytes_s"] for r in rows), 1),
        "peers_up": sum(r["status"] == "up" for r in rows),
    }


def _table(rows: list[dict[str, Any]], elapsed: float, cfg: DemoConfig, rt: Runtime) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v / 1e3:,.2f}"

    table = Table(title="spotlight runtime demo: tensors around a ring of processes")
    for col in ("worker", "pid", "port", "status", "out msg/s", "in MiB/s", "rtt p50 ms",
                "rtt p99 ms", "bad"):  # fmt: skip
        table.add_column(col, justify="left" if col == "worker" else "right", no_wrap=True)
    for r in rows:
        table.add_row(
            r["name"],
            str(r["pid"]),
            (r["address"] or "-").rsplit(":", 1)[-1],
            r["status"],
            f"{r['sent_msgs_s']:,.0f}",
            f"{r['recv_bytes_s'] / 2**20:,.1f}",
            ms(r["rtt_p50_us"]),
            ms(r["rtt_p99_us"]),
            str(r["corrupt"]),
        )
    t = _totals(rows, elapsed)
    stats = rt.statistics()
    head = Text(
        f"{t['t_s']:.1f}/{cfg.duration_s:.0f} s  {t['msgs_per_s']:,.0f} msgs/s  "
        f"{t['bytes_per_s'] / 2**20:,.1f} MiB/s  workers up {t['peers_up']}/{len(rows)}  "
        f"parent {stats.get('address', '?')} sees {len(stats.get('peers', []))} peers  "
        f"chunk {cfg.tensor_bytes // 1024} KiB"
    )
    return Group(head, table)


def _summary_text(record: dict[str, Any]) -> str:
    verdict = "OK" if record["ok"] else "FAILED: " + "; ".join(record["problems"])
    return (
        f"{verdict}: {record['chunks']:,} chunks ({record['bytes'] / 2**30:.2f} GiB) in "
        f"{record['elapsed_s']:.1f} s, {record['chunks'] / max(record['elapsed_s'], 1e-9):,.0f} "
        f"chunks/s; every chunk received once and intact: {record['exactly_once']}"
    )


async def _parent_main(cfg: DemoConfig, view: View) -> dict[str, Any]:
    peers: dict[int, Peer] = {}
    joined = asyncio.Event()
    problems: list[str] = []
    try:
        async with Runtime(RuntimeConfig()) as rt:
            await rt.spawn(Collector, peers, joined, name="collector")
            for i in range(cfg.workers):
                peers[i] = Peer(i, _spawn_worker(i, rt.address))
            view.emit(
                {
                    "event": "start",
                    "parent": rt.address,
                    "pids": [p.proc.pid for p in peers.values()],
                }
            )
            deadline = time.monotonic() + JOIN_TIMEOUT_S
            while not joined.is_set():
                dead = [p for p in peers.values() if p.proc.poll() is not None]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"workers did not all join: {[p.row(time.monotonic()) for p in peers.values()]}"
                    )
                view.update(peers, 0.0, rt)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(joined.wait(), 0.25)

            refs: dict[int, ActorRef] = {}
            for i, peer in peers.items():
                assert peer.address is not None
                refs[i] = await rt.lookup(peer.address, "worker", timeout=CALL_TIMEOUT_S)
            for i in peers:
                nxt = peers[(i + 1) % cfg.workers]
                assert nxt.address is not None
                plan = Plan(next=nxt.address, tensor_bytes=cfg.tensor_bytes, rate=cfg.rate)
                await refs[i].start.ask(plan, timeout=CALL_TIMEOUT_S)
            t0 = time.monotonic()
            while (elapsed := time.monotonic() - t0) < cfg.duration_s:
                if any(p.proc.poll() is not None for p in peers.values()):
                    problems.append("a worker exited during the run")
                    break
                view.update(peers, elapsed, rt)
                await asyncio.sleep(0.25)
            elapsed = time.monotonic() - t0

            async with asyncio.TaskGroup() as tg:
                stops = {
                    i: tg.create_task(ref.stop.ask(timeout=CALL_TIMEOUT_S))
                    for i, ref in refs.items()
                }
            for i, task in stops.items():
                peers[i].final = task.result()
            for i, ref in refs.items():  # receive counters are final once every stop returned
                peers[i].final = await ref.counters.ask(timeout=CALL_TIMEOUT_S)
    finally:
        codes = _reap(peers)
    return _verdict(cfg, peers, codes, elapsed if peers else 0.0, problems)


def _verdict(
    cfg: DemoConfig,
    peers: dict[int, Peer],
    codes: list[int | None],
    elapsed: float,
    problems: list[str],
) -> dict[str, Any]:
    finals = {p.name: p.final for p in peers.values() if p.final is not None}
    exactly_once = len(finals) == cfg.workers
    for i, peer in peers.items():
        nxt = peers[(i + 1) % cfg.workers]
        sent = (peer.final or {}).get("sent_msgs")
        got = (nxt.final or {}).get("recv_from", {}).get(peer.name, 0)
        if sent != got:
            exactly_once = False
            problems.append(f"{peer.name} sent {sent} chunks, {nxt.name} received {got}")
    corrupt = sum(f["corrupt"] for f in finals.values() if f)
    if corrupt:
        problems.append(f"{corrupt} corrupt chunks")
    if any(code != 0 for code in codes):
        problems.append(f"worker exit codes {codes} (None: killed after {EXIT_TIMEOUT_S} s)")
    chunks = sum(f["recv_msgs"] for f in finals.values() if f)
    return {
        "event": "done",
        "ok": not problems and exactly_once,
        "problems": problems,
        "elapsed_s": round(elapsed, 2),
        "chunks": chunks,
        "bytes": sum(f["recv_bytes"] for f in finals.values() if f),
        "exactly_once": exactly_once,
        "exit_codes": codes,
        "pids": [p.proc.pid for p in peers.values()],
        "workers": list(finals.values()),
    }


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every chunk arrived exactly once, intact, and all exited."""
    import uvloop

    try:
        cfg = DemoConfig(
            duration_s=args.duration,
            workers=args.workers,
            tensor_bytes=args.tensor_kib * 1024,
            rate=args.rate,
            json_lines=args.json or not sys.stdout.isatty(),
        )
    except ValueError as exc:
        print(f"spotlight demo: {exc}", file=sys.stderr)
        return 2
    with View(cfg) as view, asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            record = runner.run(_parent_main(cfg, view))
        except KeyboardInterrupt:
            print("spotlight demo: interrupted; workers stopped", file=sys.stderr)
            return 130
        except Exception as exc:  # workers are already reaped by _parent_main
            print(f"spotlight demo: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    view.emit(record)
    return 0 if record["ok"] else 1
