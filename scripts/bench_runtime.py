#!/usr/bin/env python
"""Benchmark Spotlight's actor runtime against its floor (raw pyzmq) and Ray.

    python scripts/bench_runtime.py            # full run (a few minutes on 2 cores)
    python scripts/bench_runtime.py --quick    # < 60 s
    pip install -e '.[bench]' && python scripts/bench_runtime.py   # adds the Ray column

Ray (the ``bench`` extra, ``ray>=2.40``) is optional: without it the Ray values are
``null`` and ``status.ray`` says why. With it, Ray runs a local instance
(``ray.init(num_cpus=2, include_dashboard=False)``) with one actor doing the same three
exchanges through its synchronous driver API (``ray.get(actor.m.remote(...))``: Ray's
best case for latency). ``ray.shutdown()`` ends its processes; the script then checks
that none of its own descendants is left and kills any straggler by PID (reported in
``status.ray_leftover_processes``). Ray leaves its session logs under ``/tmp/ray``.

Every system does the same three exchanges between two processes on loopback:

* ``ask``: one small request, one reply, one outstanding at a time -> round trip p50/p99;
* ``tell``: N small one-way messages, then one ask that returns once all N were handled
  -> messages per second;
* ``tensor``: a 16 MiB float32 tensor sent one way, a tiny ack back -> GiB/s.

Spotlight runs twice: plain (loopback's default) and with CURVE forced on
(``RuntimeConfig(curve=True)``, a fresh cluster key passed to the server in
``$SPOTLIGHT_CLUSTER_KEY``): what encryption and authentication cost a cluster that
binds beyond loopback (``curve_*`` keys and the ``curve_*_vs_plain`` ratios).

The raw pyzmq server/client use asyncio on uvloop with a ROUTER/DEALER pair and
``copy=False`` sends, i.e. what the runtime does minus everything the runtime adds
(codec, routing, credits, heartbeats): it is the floor. Ray runs only when ``import ray``
works; otherwise its values are ``null``. Each measurement is repeated (raw and Spotlight
interleaved so machine noise hits both alike) and reported as the median with the
min..max spread. Results go to ``benchmarks/results/runtime.json``.

Servers are child processes of this script (``--serve raw|spotlight``); each prints
``READY <address>`` and stops when its stdin closes; the parent kills it by PID if it
does not stop in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "runtime.json"
TENSOR_BYTES = 16 * 1024 * 1024
READY_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 30.0
GIB = 1024**3


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sizes:
    repeats: int
    asks: int
    tells: int
    tensors: int
    warmup: int


FULL = Sizes(repeats=5, asks=5000, tells=20000, tensors=30, warmup=500)
QUICK = Sizes(repeats=3, asks=1000, tells=4000, tensors=8, warmup=200)


def _loop_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


# ====================================================================== server processes


def _stop_on_stdin_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """The parent closes our stdin to stop us (and it closes when the parent dies)."""

    def watch() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch, name="stdin-eof", daemon=True).start()


async def _serve_raw() -> None:
    stop = asyncio.Event()
    _stop_on_stdin_eof(asyncio.get_running_loop(), stop)
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(f"READY tcp://127.0.0.1:{port}", flush=True)
    count = 0

    async def serve() -> None:
        nonlocal count
        while True:
            frames = await sock.recv_multipart(copy=False)
            ident, kind = frames[0], frames[1].bytes
            if kind == b"ask":
                await sock.send_multipart([ident, b"ask", frames[2]], copy=False)
            elif kind == b"tell":
                count += 1
            elif kind == b"tally":
                await sock.send_multipart([ident, b"tally", str(count).encode()])
            elif kind == b"tensor":
                await sock.send_multipart([ident, b"ack", str(len(frames[2])).encode()])

    task = asyncio.create_task(serve())
    await stop.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    sock.close(linger=0)
    ctx.term()


async def _serve_spotlight(curve: bool) -> None:
    from spotlight.runtime import Runtime, RuntimeConfig

    bench_actor = _bench_actor_class()
    stop = asyncio.Event()
    _stop_on_stdin_eof(asyncio.get_running_loop(), stop)
    async with Runtime(RuntimeConfig(curve=curve)) as rt:  # key: $SPOTLIGHT_CLUSTER_KEY
        await rt.spawn(bench_actor, name="bench")
        print(f"READY {rt.address}", flush=True)
        await stop.wait()


def _bench_actor_class() -> type:
    import torch  # noqa: F401  (a tensor server: import before serving, not on the loop)

    from spotlight.runtime import Actor, endpoint

    class Bench(Actor):
        """The same three exchanges as the raw server."""

        def __init__(self) -> None:
            self.count = 0

        @endpoint
        async def echo(self, x: Any) -> Any:
            return x

        @endpoint
        async def sink(self, x: Any) -> None:
            self.count += 1

        @endpoint
        async def tally(self) -> int:
            return self.count

        @endpoint
        async def nbytes(self, t: Any) -> int:
            return int(t.numel() * t.element_size())

    return Bench


class Server:
    """A ``--serve`` child process, stopped by closing its stdin, killed by PID if stuck."""

    def __init__(self, kind: str, env: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.address = self._wait_ready()

    def _wait_ready(self) -> str:
        assert self.proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(
            target=lambda: result.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(READY_TIMEOUT_S)
        line = result[0] if result else ""
        if not line.startswith("READY "):
            self.close()
            raise RuntimeError(
                f"{self.kind} server did not start within {READY_TIMEOUT_S:.0f} s "
                f"(exit code {self.proc.poll()}, first line {line!r})"
            )
        return line.split()[1]

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ====================================================================== clients


@dataclasses.dataclass
class Client:
    """One system's side of the three exchanges (all async)."""

    ask: Callable[[bytes], Awaitable[Any]]
    tell: Callable[[bytes], Awaitable[None]]
    tally: Callable[[], Awaitable[int]]
    tensor: Callable[[Any], Awaitable[int]]


async def raw_client(ctx: zmq.asyncio.Context, address: str) -> tuple[Client, zmq.asyncio.Socket]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)

    async def recv() -> list[zmq.Frame]:
        if not await sock.poll(CALL_TIMEOUT_S * 1000):
            raise TimeoutError(f"raw zmq server silent for {CALL_TIMEOUT_S} s")
        return await sock.recv_multipart(copy=False)

    async def ask(payload: bytes) -> bytes:
        await sock.send_multipart([b"ask", payload])
        return (await recv())[1].bytes

    async def tell(payload: bytes) -> None:
        await sock.send_multipart([b"tell", payload])

    async def tally() -> int:
        await sock.send_multipart([b"tally"])
        return int((await recv())[1].bytes)

    async def tensor(t: Any) -> int:
        await sock.send_multipart([b"tensor", t.reshape(-1).numpy().data], copy=False)
        return int((await recv())[1].bytes)

    return Client(ask, tell, tally, tensor), sock


async def spotlight_client(rt: Any, address: str) -> Client:
    ref = await rt.lookup(address, "bench", timeout=CALL_TIMEOUT_S)

    async def ask(payload: bytes) -> Any:
        return await ref.echo.ask(payload, timeout=CALL_TIMEOUT_S)

    async def tell(payload: bytes) -> None:
        await ref.sink.tell(payload)

    async def tally() -> int:
        return int(await ref.tally.ask(timeout=CALL_TIMEOUT_S))

    async def tensor(t: Any) -> int:
        return int(await ref.nbytes.ask(t, timeout=CALL_TIMEOUT_S))

    return Client(ask, tell, tally, tensor)


# ====================================================================== measurements


def _percentile(sorted_values: list[float], q: float) -> float:
    idx = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[idx]


async def measure(client: Client, sizes: Sizes, tensor: Any) -> dict[str, float]:
    """One repeat of the three exchanges against one system."""
    payload = b"x" * 16
    for _ in range(sizes.warmup):
        await client.ask(payload)
    lat_us: list[float] = []
    for _ in range(sizes.asks):
        t_ns = time.perf_counter_ns()
        await client.ask(payload)
        lat_us.append((time.perf_counter_ns() - t_ns) / 1e3)
    lat_us.sort()

    before = await client.tally()
    t0 = time.perf_counter()
    for _ in range(sizes.tells):
        await client.tell(payload)
    after = await client.tally()
    tell_s = time.perf_counter() - t0
    if after - before != sizes.tells:
        raise RuntimeError(f"server counted {after - before} tells, expected {sizes.tells}")

    await client.tensor(tensor)  # warm the path (allocators, TCP buffers)
    times: list[float] = []
    for _ in range(sizes.tensors):
        t0 = time.perf_counter()
        got = await client.tensor(tensor)
        times.append(time.perf_counter() - t0)
        if got != TENSOR_BYTES:
            raise RuntimeError(f"server received {got} bytes, expected {TENSOR_BYTES}")
    return {
        "p50_us": _percentile(lat_us, 50),
        "p99_us": _percentile(lat_us, 99),
        "tell_msgs_per_s": sizes.tells / tell_s,
        "tensor16m_gib_s": TENSOR_BYTES / GIB / statistics.median(times),
    }


def _descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid`` (Linux /proc; empty elsewhere)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return found + [d for c in list(found) for d in _descendants(c)]


def reap_leftovers(before: set[int], grace_s: float = 10.0) -> list[str]:
    """Wait up to ``grace_s`` for new descendants to exit; kill the rest by PID."""
    deadline = time.monotonic() + grace_s
    while True:
        left = [p for p in _descendants(os.getpid()) if p not in before]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    described = []
    for pid in left:
        try:
            with open(f"/proc/{pid}/cmdline") as f:
                described.append(f"{pid} {f.read().replace(chr(0), ' ')[:80]}")
            os.kill(pid, 9)
        except OSError:
            continue
    return described


def measure_ray(sizes: Sizes, tensor: Any) -> list[dict[str, float]]:
    """The same exchanges with a Ray actor (synchronous driver API: Ray's best case)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote
        class RayBench:
            def __init__(self) -> None:
                self.count = 0

            def echo(self, x: Any) -> Any:
                return x

            def sink(self, x: Any) -> None:
                self.count += 1

            def tally(self) -> int:
                return self.count

            def nbytes(self, t: Any) -> int:
                return int(t.numel() * t.element_size())

        actor = RayBench.remote()  # type: ignore[attr-defined]
        ray.get(actor.tally.remote(), timeout=READY_TIMEOUT_S)
        payload = b"x" * 16
        runs = []
        for _ in range(sizes.repeats):
            for _ in range(sizes.warmup):
                ray.get(actor.echo.remote(payload), timeout=CALL_TIMEOUT_S)
            lat_us = []
            for _ in range(sizes.asks):
                t_ns = time.perf_counter_ns()
                ray.get(actor.echo.remote(payload), timeout=CALL_TIMEOUT_S)
                lat_us.append((time.perf_counter_ns() - t_ns) / 1e3)
            lat_us.sort()
            before = ray.get(actor.tally.remote(), timeout=CALL_TIMEOUT_S)
            t0 = time.perf_counter()
            for _ in range(sizes.tells):
                actor.sink.remote(payload)
            after = ray.get(actor.tally.remote(), timeout=CALL_TIMEOUT_S * 10)
            tell_s = time.perf_counter() - t0
            if after - before != sizes.tells:
                raise RuntimeError(f"ray counted {after - before} tells, expected {sizes.tells}")
            ray.get(actor.nbytes.remote(tensor), timeout=CALL_TIMEOUT_S)
            times: list[float] = []
            for _ in range(sizes.tensors):
                t0 = time.perf_counter()
                ray.get(actor.nbytes.remote(tensor), timeout=CALL_TIMEOUT_S)
                times.append(time.perf_counter() - t0)
            runs.append(
                {
                    "p50_us": _percentile(lat_us, 50),
                    "p99_us": _percentile(lat_us, 99),
                    "tell_msgs_per_s": sizes.tells / tell_s,
                    "tensor16m_gib_s": TENSOR_BYTES / GIB / statistics.median(times),
                }
            )
        return runs
    finally:
        ray.shutdown()


class Systems:
    """The raw floor and both Spotlight variants, each a server process and a client."""

    def __init__(self) -> None:
        self.servers: list[Server] = []
        self.clients: dict[str, Client] = {}
        self.errors: dict[str, str] = {}
        self.ctx = zmq.asyncio.Context()
        self.sock: Any = None
        self.runtimes: list[Any] = []

    async def start(self) -> None:
        self.servers.append(Server("raw"))
        self.clients["raw_zmq"], self.sock = await raw_client(self.ctx, self.servers[0].address)
        from spotlight.runtime.keys import KEY_ENV, generate_key

        key = generate_key()
        for name, curve in (("spotlight", False), ("spotlight_curve", True)):
            try:  # reported in the results; the floor is still measured
                from spotlight.runtime import Runtime, RuntimeConfig

                env = {KEY_ENV: key.secret.decode()} if curve else None
                self.servers.append(Server(name.replace("_", "-"), env))
                config = RuntimeConfig(curve=curve, curve_secret_key=key.secret.decode())
                runtime_cm = Runtime(config)
                rt = await runtime_cm.__aenter__()
                self.runtimes.append(runtime_cm)
                self.clients[name] = await spotlight_client(rt, self.servers[-1].address)
            except Exception as exc:
                self.errors[name] = f"{type(exc).__name__}: {exc}"
                print(f"{name} unavailable: {self.errors[name]}", file=sys.stderr)

    async def close(self) -> None:
        for runtime_cm in self.runtimes:
            with contextlib.suppress(Exception):
                await runtime_cm.__aexit__(None, None, None)
        if self.sock is not None:
            self.sock.close(linger=0)
        self.ctx.term()
        for server in self.servers:
            server.close()


async def measure_zmq_and_spotlight(
    sizes: Sizes, tensor: Any, errors: dict[str, str]
) -> dict[str, list[dict[str, float]]]:
    """Interleave raw, plain and CURVE repeats so drift on a shared machine hits all alike."""
    runs: dict[str, list[dict[str, float]]] = {}
    systems = Systems()
    try:
        await systems.start()
        for r in range(sizes.repeats):
            for name, client in systems.clients.items():
                if name in systems.errors:
                    continue
                try:
                    runs.setdefault(name, []).append(await measure(client, sizes, tensor))
                except Exception as exc:
                    if name == "raw_zmq":
                        raise
                    systems.errors[name] = f"{type(exc).__name__}: {exc}"
                    print(f"{name} run failed: {systems.errors[name]}", file=sys.stderr)
                    continue
                print(f"  repeat {r + 1}/{sizes.repeats} {name}: {_fmt_run(runs[name][-1])}")
    finally:
        await systems.close()
        errors.update(systems.errors)
    return runs


def _fmt_run(run: dict[str, float]) -> str:
    return (
        f"ask p50 {run['p50_us']:.0f} us, p99 {run['p99_us']:.0f} us, "
        f"tell {run['tell_msgs_per_s']:.0f}/s, 16 MiB {run['tensor16m_gib_s']:.2f} GiB/s"
    )


# ====================================================================== report


def summarize(runs: list[dict[str, float]]) -> dict[str, dict[str, float] | None]:
    """Median and min..max spread of each metric over the repeats."""
    out: dict[str, dict[str, float] | None] = {}
    for key in ("p50_us", "p99_us", "tell_msgs_per_s", "tensor16m_gib_s"):
        values = [run[key] for run in runs]
        out[key] = (
            {"median": statistics.median(values), "min": min(values), "max": max(values)}
            if values
            else None
        )
    return out


def _median(summary: dict[str, dict[str, float] | None], key: str) -> float | None:
    entry = summary[key]
    return None if entry is None else round(entry["median"], 3)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
    versions: dict[str, str | None] = {}
    for pkg in ("torch", "pyzmq", "msgpack", "uvloop", "ray"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_gib": mem_gib,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "libzmq": zmq.zmq_version(),
        "versions": versions,
    }


def print_table(sys_summaries: dict[str, dict[str, dict[str, float] | None] | None]) -> None:
    rows = [
        ("ask p50 (us)", "p50_us", "{:.0f}"),
        ("ask p99 (us)", "p99_us", "{:.0f}"),
        ("tell (msgs/s)", "tell_msgs_per_s", "{:.0f}"),
        ("16 MiB one way (GiB/s)", "tensor16m_gib_s", "{:.2f}"),
    ]

    def cell(summary: dict[str, dict[str, float] | None] | None, key: str, fmt: str) -> str:
        entry = None if summary is None else summary[key]
        if entry is None:
            return "n/a"
        return (
            f"{fmt.format(entry['median'])} [{fmt.format(entry['min'])}-{fmt.format(entry['max'])}]"
        )

    def ratio(key: str, a: str, b: str) -> str:
        sa, sb = sys_summaries.get(a), sys_summaries.get(b)
        value = _ratio(
            None if sa is None else _median(sa, key), None if sb is None else _median(sb, key)
        )
        return "n/a" if value is None else f"{value:.2f}x"

    header = [
        "metric",
        "spotlight",
        "spotlight+curve",
        "raw zmq (floor)",
        "ray",
        "spotlight/raw",
        "curve/plain",
        "ray/spotlight",
    ]
    table = [header]
    for label, key, fmt in rows:
        table.append(
            [
                label,
                cell(sys_summaries.get("spotlight"), key, fmt),
                cell(sys_summaries.get("spotlight_curve"), key, fmt),
                cell(sys_summaries.get("raw_zmq"), key, fmt),
                cell(sys_summaries.get("ray"), key, fmt),
                ratio(key, "spotlight", "raw_zmq"),
                ratio(key, "spotlight_curve", "spotlight"),
                ratio(key, "ray", "spotlight"),
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print()
    for i, row in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("values: median [min-max] over repeats")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats/messages: < 60 s")
    parser.add_argument("--repeats", type=int, default=None, help="override the repeat count")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    parser.add_argument("--no-ray", action="store_true", help="skip Ray even if installed")
    parser.add_argument(
        "--serve", choices=["raw", "spotlight", "spotlight-curve"], help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.serve:
        with _loop_runner() as runner:
            serve = args.serve
            runner.run(_serve_raw() if serve == "raw" else _serve_spotlight(serve != "spotlight"))
        return 0

    sizes = QUICK if args.quick else FULL
    if args.repeats is not None:
        if args.repeats < 1:
            parser.error(f"--repeats must be >= 1, got {args.repeats}")
        sizes = dataclasses.replace(sizes, repeats=args.repeats)

    import torch

    tensor = torch.randn(TENSOR_BYTES // 4, dtype=torch.float32)
    started = time.time()
    machine = machine_info()
    print(f"bench_runtime: {'quick' if args.quick else 'full'} run, {sizes}")

    errors: dict[str, str] = {}
    with _loop_runner() as runner:
        runs = runner.run(measure_zmq_and_spotlight(sizes, tensor, errors))

    ray_runs: list[dict[str, float]] = []
    ray_leftovers: list[str] = []
    ray_status = "skipped: ray is not installed (pip install ray to include it)"
    try:
        import ray  # noqa: F401
    except ImportError:
        pass
    else:
        if args.no_ray:
            ray_status = "skipped: --no-ray"
        else:
            before = set(_descendants(os.getpid()))
            try:
                ray_runs = measure_ray(sizes, tensor)
                ray_status = "ok"
            except Exception as exc:
                ray_status = f"failed: {type(exc).__name__}: {exc}"
            ray_leftovers = reap_leftovers(before)
            if ray_leftovers:
                print(f"ray left {len(ray_leftovers)} process(es); killed: {ray_leftovers}")
    print(f"ray: {ray_status}")

    def ok(name: str) -> dict[str, dict[str, float] | None] | None:
        return summarize(runs[name]) if runs.get(name) and name not in errors else None

    raw = summarize(runs["raw_zmq"])
    spot, curve = ok("spotlight"), ok("spotlight_curve")
    ray_summary = summarize(ray_runs) if ray_runs else None
    print_table({"spotlight": spot, "spotlight_curve": curve, "raw_zmq": raw, "ray": ray_summary})

    def get(summary: dict[str, dict[str, float] | None] | None, key: str) -> float | None:
        return None if summary is None else _median(summary, key)

    results: dict[str, Any] = {
        "ask_p50_us": get(spot, "p50_us"),
        "ask_p99_us": get(spot, "p99_us"),
        "tell_msgs_per_s": get(spot, "tell_msgs_per_s"),
        "tensor16m_gib_s": get(spot, "tensor16m_gib_s"),
        "raw_zmq_p50_us": get(raw, "p50_us"),
        "raw_zmq_p99_us": get(raw, "p99_us"),
        "raw_zmq_tell_msgs_per_s": get(raw, "tell_msgs_per_s"),
        "raw_zmq_tensor16m_gib_s": get(raw, "tensor16m_gib_s"),
        "ray_p50_us": get(ray_summary, "p50_us"),
        "ray_p99_us": get(ray_summary, "p99_us"),
        "ray_tell_msgs_per_s": get(ray_summary, "tell_msgs_per_s"),
        "ray_tensor16m_gib_s": get(ray_summary, "tensor16m_gib_s"),
        "curve_ask_p50_us": get(curve, "p50_us"),
        "curve_ask_p99_us": get(curve, "p99_us"),
        "curve_tell_msgs_per_s": get(curve, "tell_msgs_per_s"),
        "curve_tensor16m_gib_s": get(curve, "tensor16m_gib_s"),
    }
    p50_ratio = _ratio(results["ask_p50_us"], results["raw_zmq_p50_us"])
    bw_ratio = _ratio(results["tensor16m_gib_s"], results["raw_zmq_tensor16m_gib_s"])
    ray_ratio = _ratio(results["ray_p50_us"], results["ask_p50_us"])
    results["ratios"] = {
        "ask_p50_vs_raw_zmq": p50_ratio,
        "tensor16m_vs_raw_zmq": bw_ratio,
        "ray_p50_vs_spotlight": ray_ratio,
        "curve_ask_p50_vs_plain": _ratio(results["curve_ask_p50_us"], results["ask_p50_us"]),
        "curve_tensor16m_vs_plain": _ratio(
            results["curve_tensor16m_gib_s"], results["tensor16m_gib_s"]
        ),
    }
    results["targets"] = {
        "ask_p50_at_most_1.5x_raw": None if p50_ratio is None else p50_ratio <= 1.5,
        "tensor16m_at_least_60pct_raw": None if bw_ratio is None else bw_ratio >= 0.6,
        "ask_5x_lower_than_ray": None if ray_ratio is None else ray_ratio >= 5.0,
    }
    results["spread"] = {
        "spotlight": spot,
        "spotlight_curve": curve,
        "raw_zmq": raw,
        "ray": ray_summary,
    }
    results["status"] = {
        "spotlight": "ok" if spot is not None else f"blocked: {errors.get('spotlight')}",
        "spotlight_curve": "ok"
        if curve is not None
        else f"blocked: {errors.get('spotlight_curve')}",
        "ray": ray_status,
        "ray_leftover_processes": ray_leftovers,
    }
    results["config"] = {"quick": args.quick, **dataclasses.asdict(sizes)}
    results["machine"] = {**machine, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}
    results["started_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    results["duration_s"] = round(time.time() - started, 1)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} ({results['duration_s']} s)")
    return 0 if spot is not None and curve is not None else 1


if __name__ == "__main__":
    sys.exit(main())
