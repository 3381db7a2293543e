"""Chunked, versioned weight publication: WeightInbox (pure) and WeightPublisher (runtimes).

Copies move bytes without arithmetic, so every comparison is ``torch.equal``. Runtime tests
use two runtimes in this process (loopback TCP between them); the crash test kills a child
process hosting a receiver (by PID, in ``finally``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from spotlight.actors.weights.publish import (
    InboxStats,
    WeightInbox,
    WeightPublisher,
    WeightPublisherStats,
)
from spotlight.actors.weights.share import WeightManifest, flat_bytes, iter_chunks
from spotlight.runtime import Actor, Runtime, RuntimeConfig, endpoint
from spotlight.runtime.codec import decode_body, encode
from tests.runtime.helpers import FAST, REPO, arun

# -- helpers --------------------------------------------------------------------------------


def model(seed: int, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.Linear(width, 3))
    m.register_buffer("steps", torch.tensor([seed], dtype=torch.int64))
    m.register_buffer("bf16", torch.randn(5, dtype=torch.bfloat16))
    return m


def big_model(seed: int) -> nn.Module:
    """≈1 MB: 256 chunks of 4 KiB, more than the runtime's credit window (64)."""
    return model(seed, width=500)


def same_state(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


def versioned(m: nn.Module, version: int) -> tuple[WeightManifest, Tensor]:
    man, buf = flat_bytes(m)
    return WeightManifest(entries=man.entries, total_bytes=man.total_bytes, version=version), buf


class Gate:
    """Holds a receiver's chunk handler (same process only). Messages cannot do this: a
    stalled actor's mailbox is full of chunks, so an ask to it waits for credit too."""

    def __init__(self) -> None:
        self.first_chunk = asyncio.Event()
        self.opened = asyncio.Event()


class Receiver(Actor):
    """A subscriber: assembles with a WeightInbox; optionally held by a gate, or dying
    (the whole process, SIGKILL) at a given chunk."""

    def __init__(self, *, gate: Gate | None = None, die_at_chunk: int = 0) -> None:
        self.inbox = WeightInbox()
        self.versions: list[int] = []
        self.state: dict[str, Tensor] = {}
        self.chunks = 0
        self.die_at_chunk = die_at_chunk
        self.gate = gate
        self.changed = asyncio.Event()

    @endpoint
    async def weight_chunk(
        self, version: int, manifest: WeightManifest, offset: int, chunk: Tensor
    ) -> None:
        self.chunks += 1
        self.changed.set()
        if self.chunks == self.die_at_chunk:
            os.kill(os.getpid(), signal.SIGKILL)  # a node vanishing mid-stream
        if self.gate is not None:
            self.gate.first_chunk.set()
            await self.gate.opened.wait()
        got = self.inbox.offer(version, manifest, offset, chunk)
        if got is not None:
            self.versions.append(got[0])
            self.state = got[1]
            self.changed.set()

    @endpoint(concurrent=True)
    async def wait_for(self, version: int, chunks: int, timeout_s: float) -> list[int]:
        """Versions completed so far, once ``version`` is complete and ``chunks`` arrived."""
        async with asyncio.timeout(timeout_s):
            while self.inbox.completed_version < version or self.chunks < chunks:
                self.changed.clear()
                await self.changed.wait()
        return list(self.versions)

    @endpoint
    async def latest(self) -> dict[str, Tensor]:
        return self.state

    @endpoint
    async def inbox_stats(self) -> InboxStats:
        return self.inbox.statistics()


def receiver_main(ready_file: str, die_at_chunk: int, heartbeat_s: float) -> None:
    """Child process body: host ``Receiver`` named ``receiver`` until killed."""
    from spotlight.runtime import run

    async def main(rt: Runtime) -> None:
        await rt.spawn(Receiver, die_at_chunk=die_at_chunk, name="receiver")
        tmp = ready_file + ".tmp"
        Path(tmp).write_text(rt.address)  # noqa: ASYNC240 (tiny, once)
        os.replace(tmp, ready_file)
        await asyncio.Event().wait()

    run(main, RuntimeConfig(heartbeat_s=heartbeat_s, missed_heartbeats=4))


@contextmanager
def receiver_process(
    tmp_path: Path, name: str, die_at_chunk: int = 0, heartbeat_s: float = 0.25
) -> Iterator[str]:
    """Start a child runtime hosting a Receiver; yield its address; kill it by PID."""
    ready = tmp_path / f"{name}.addr"
    ready.unlink(missing_ok=True)  # never read a previous run's address
    code = (
        "from tests.actors.test_weight_publish import receiver_main; "
        f"receiver_main({str(ready)!r}, {die_at_chunk}, {heartbeat_s})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"receiver process exited early with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("receiver process did not publish its address in 60 s")
            time.sleep(0.05)
        yield ready.read_text()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# -- WeightInbox: pure -------------------------------------------------------------------


def test_inbox_out_of_order_and_duplicates_complete_exactly_once() -> None:
    src = model(0)
    man, buf = versioned(src, 3)
    chunks = list(iter_chunks(buf, 100))
    order = chunks[::-1] + chunks[:3]  # reversed, then duplicates
    inbox = WeightInbox()
    results = [inbox.offer(3, man, off, c.clone()) for off, c in order]
    done = [r for r in results if r is not None]
    assert len(done) == 1 and done[0][0] == 3
    assert results.index(done[0]) == len(chunks) - 1  # complete at the last new byte
    assert same_state(done[0][1], src.state_dict())
    s = inbox.statistics()
    assert (s.completed_version, s.completed, s.stale_chunks) == (3, 1, 3)
    assert inbox.offer(3, man, 0, chunks[0][1]) is None  # a late duplicate: ignored


def test_inbox_newer_version_drops_older_partial_and_ignores_stale() -> None:
    a, b = model(1), model(2)
    man1, buf1 = versioned(a, 1)
    man2, buf2 = versioned(b, 2)
    c1, c2 = list(iter_chunks(buf1, 64)), list(iter_chunks(buf2, 64))
    inbox = WeightInbox()
    for off, c in c1[:-1]:
        assert inbox.offer(1, man1, off, c) is None
    assert inbox.statistics().assembling_version == 1
    assert inbox.offer(2, man2, *c2[0]) is None  # v2 starts: v1's partial is dropped
    assert inbox.statistics().dropped_partial == 1
    assert inbox.offer(1, man1, *c1[-1]) is None  # v1 can no longer complete
    out = None
    for off, c in c2[1:]:
        out = inbox.offer(2, man2, off, c) or out
    assert out is not None and out[0] == 2 and same_state(out[1], b.state_dict())
    for off, c in c1:  # a whole older version arriving late changes nothing
        assert inbox.offer(1, man1, off, c) is None
    s = inbox.statistics()
    assert (s.completed_version, s.completed, s.assembling_version) == (2, 1, -1)
    assert s.stale_chunks == 1 + len(c1)


def test_inbox_overlapping_chunks_count_bytes_not_calls() -> None:
    src = model(3)
    man, buf = versioned(src, 0)
    n = man.total_bytes
    inbox = WeightInbox()
    assert inbox.offer(0, man, 0, buf[:100]) is None
    assert inbox.offer(0, man, 50, buf[50:150]) is None  # overlaps: 50 new bytes
    assert inbox.offer(0, man, 0, buf[:150]) is None  # nothing new: a duplicate
    assert inbox.statistics().duplicate_chunks == 1
    assert inbox.offer(0, man, 200, buf[200:]) is None  # a gap [150, 200) remains
    out = inbox.offer(0, man, 140, buf[140:210])
    assert out is not None and same_state(out[1], src.state_dict()) and n > 210


def test_inbox_refuses_malformed_input_with_reasons() -> None:
    man, buf = versioned(model(4), 5)
    inbox = WeightInbox()
    with pytest.raises(ValueError, match="manifest says 5"):
        inbox.offer(6, man, 0, buf[:10])
    with pytest.raises(ValueError, match="must be uint8"):
        inbox.offer(5, man, 0, buf[:8].view(torch.float32))
    with pytest.raises(ValueError, match="outside the"):
        inbox.offer(5, man, man.total_bytes - 4, buf[:8])
    e = man.entries[0]
    lying = WeightManifest(
        entries=(type(e)(key=e.key, dtype=e.dtype, shape=e.shape, offset=0, nbytes=e.nbytes + 4),),
        total_bytes=man.total_bytes,
        version=7,
    )
    with pytest.raises(ValueError, match="manifest says"):
        inbox.offer(7, lying, 0, buf[:10])
    outside = WeightManifest(entries=man.entries, total_bytes=8, version=8)
    with pytest.raises(ValueError, match="outside the 8-byte buffer"):
        inbox.offer(8, outside, 0, buf[:8])
    inbox.offer(5, man, 0, buf[:64])
    other = WeightManifest(entries=man.entries[:1], total_bytes=man.total_bytes, version=5)
    with pytest.raises(ValueError, match="differs from the first chunk"):
        inbox.offer(5, other, 64, buf[64:128])


def test_inbox_empty_state_completes_on_one_empty_chunk() -> None:
    man, buf = versioned(nn.Module(), 1)
    assert man.total_bytes == 0
    out = WeightInbox().offer(1, man, 0, buf)
    assert out == (1, {})


@settings(max_examples=40, deadline=None)
@given(
    chunk=st.integers(min_value=1, max_value=700),
    seed=st.integers(min_value=0, max_value=2**16),
    dups=st.integers(min_value=0, max_value=5),
)
def test_inbox_any_order_with_duplicates_property(chunk: int, seed: int, dups: int) -> None:
    src = model(5)
    man, buf = versioned(src, 1)
    chunks = list(iter_chunks(buf, chunk))
    g = torch.Generator().manual_seed(seed)
    order = [chunks[i] for i in torch.randperm(len(chunks), generator=g).tolist()]
    extra = [chunks[i] for i in torch.randint(len(chunks), (dups,), generator=g).tolist()]
    inbox = WeightInbox()
    results = [inbox.offer(1, man, off, c.clone()) for off, c in order + extra]
    done = [(i, r) for i, r in enumerate(results) if r is not None]
    assert len(done) == 1 and done[0][0] == len(chunks) - 1
    assert same_state(done[0][1][1], src.state_dict())


# -- WeightPublisher: validation ----------------------------------------------------------


def test_publisher_refuses_bad_config_and_old_versions() -> None:
    with pytest.raises(ValueError, match="chunk_bytes"):
        WeightPublisher(chunk_bytes=0)
    with pytest.raises(ValueError, match="send_timeout_s"):
        WeightPublisher(send_timeout_s=0)

    async def main() -> None:
        pub = WeightPublisher()
        pub.publish(2, model(0))
        with pytest.raises(ValueError, match="not newer than the last published 2"):
            pub.publish(2, model(0))
        stats = pub.statistics()
        assert isinstance(stats, WeightPublisherStats)
        assert (stats.latest_version, stats.versions, stats.subscribers) == (2, 1, 0)
        assert stats.snapshot_bytes > 0 and stats.last_publish_s >= 0
        await pub.close()
        with pytest.raises(RuntimeError, match="closed"):
            pub.publish(3, model(0))

    arun(main())


# -- WeightPublisher over two runtimes ---------------------------------------------------


@pytest.mark.timeout(60)
def test_two_subscribers_get_every_version_bit_exact() -> None:
    """v1 published on the loop, v2 from a worker thread (as a trainer step would)."""

    async def main() -> None:
        async with Runtime(FAST) as rt_a, Runtime(FAST) as rt_b:
            pub = WeightPublisher(chunk_bytes=1000)
            try:
                refs = [await rt_b.spawn(Receiver, name=f"r{i}") for i in range(2)]
                for i, r in enumerate(refs):
                    pub.subscribe(f"n{i}", rt_a.ref(rt_b.address, r.name))
                m1, m2 = model(1), model(2)
                pub.publish(1, m1)
                for r in refs:
                    assert await r.wait_for.ask(1, 0, 20.0) == [1]
                    assert same_state(await r.latest.ask(), m1.state_dict())
                await asyncio.to_thread(pub.publish, 2, m2)
                for r in refs:
                    assert await r.wait_for.ask(2, 0, 20.0) == [1, 2]
                    assert same_state(await r.latest.ask(), m2.state_dict())
                assert await pub.flush(10.0)
                assert pub.subscriber_versions() == {"n0": 2, "n1": 2}
                s = pub.statistics()
                n_chunks = -(-s.snapshot_bytes // 1000)
                assert (s.versions, s.streams_completed, s.failures, s.superseded) == (2, 4, 0, 0)
                assert s.chunks_sent == 4 * n_chunks and s.bytes_sent == 4 * s.snapshot_bytes
                assert s.streams_in_flight == 0
                pub.unsubscribe("n1")
                pub.unsubscribe("n1")  # idempotent
                pub.publish(3, model(3))
                assert await refs[0].wait_for.ask(3, 0, 20.0) == [1, 2, 3]
                assert await pub.flush(10.0)
                assert await refs[1].wait_for.ask(2, 0, 5.0) == [1, 2]  # got nothing more
                assert pub.statistics().subscribers == 1
            finally:
                await pub.close()

    arun(main())


@pytest.mark.timeout(60)
def test_newer_version_supersedes_stream_in_flight_and_others_are_not_held_up() -> None:
    """A gated receiver stalls its stream (credits run out); a second receiver still gets
    every version; v2 published mid-stream replaces v1, which is never delivered."""

    async def main() -> None:
        async with Runtime(FAST) as rt_a, Runtime(FAST) as rt_b:
            pub = WeightPublisher(chunk_bytes=4096, send_timeout_s=30.0)
            try:
                gate = Gate()
                slow = await rt_b.spawn(Receiver, gate=gate, name="slow")
                fast = await rt_b.spawn(Receiver, name="fast")
                pub.subscribe("slow", rt_a.ref(rt_b.address, "slow"))
                pub.subscribe("fast", rt_a.ref(rt_b.address, "fast"))
                m1, m2 = big_model(1), big_model(2)
                pub.publish(1, m1)
                async with asyncio.timeout(20.0):
                    await gate.first_chunk.wait()  # slow holds chunk 1, gate closed
                assert await fast.wait_for.ask(1, 0, 20.0) == [1]  # not held up by slow
                s = pub.statistics()
                assert s.streams_in_flight == 1 and s.streams_completed == 1
                assert s.snapshot_bytes > 64 * 4096  # more chunks than credits: truly stuck
                pub.publish(2, m2)
                gate.opened.set()
                assert await slow.wait_for.ask(2, 0, 20.0) == [2]  # v1 never completed
                assert same_state(await slow.latest.ask(), m2.state_dict())
                assert await fast.wait_for.ask(2, 0, 20.0) == [1, 2]
                assert await pub.flush(10.0)
                s = pub.statistics()
                assert (s.superseded, s.failures, s.streams_completed) == (1, 0, 3)
                inbox = await slow.inbox_stats.ask()
                assert (inbox.dropped_partial, inbox.completed) == (1, 1)
            finally:
                await pub.close()

    arun(main())


@pytest.mark.timeout(60)
def test_flush_times_out_and_close_stops_a_stuck_stream() -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt_a, Runtime(FAST) as rt_b:
            pub = WeightPublisher(chunk_bytes=4096, send_timeout_s=30.0)
            gate = Gate()
            await rt_b.spawn(Receiver, gate=gate, name="stuck")
            pub.subscribe("stuck", rt_a.ref(rt_b.address, "stuck"))
            pub.publish(1, big_model(1))
            async with asyncio.timeout(20.0):
                await gate.first_chunk.wait()
            assert not await pub.flush(0.2)  # waiting for credits that do not come
            assert pub.statistics().streams_in_flight == 1
            async with asyncio.timeout(5.0):
                await pub.close()  # cancels the pump blocked in tell
            s = pub.statistics()
            assert (s.subscribers, s.streams_in_flight, s.streams_completed) == (0, 0, 0)
            await pub.close()  # idempotent
            gate.opened.set()

    arun(main())


def test_manifest_travels_through_the_codec() -> None:
    man, _ = versioned(model(0), 4)
    chunk = torch.arange(10, dtype=torch.uint8)
    for _ in range(2):  # the second encode uses the cached plain form
        frames = encode({"k": "tell"}, [4, man, 0, chunk])
        got = decode_body(frames[1:])
        assert got[1] == man and isinstance(got[1], WeightManifest)
        assert torch.equal(got[3], chunk)


@pytest.mark.timeout(60)
def test_late_subscriber_gets_the_latest_version_only() -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt_a, Runtime(FAST) as rt_b:
            pub = WeightPublisher(chunk_bytes=500)
            try:
                pub.publish(1, model(1))
                m2 = model(2)
                pub.publish(2, m2)
                r = await rt_b.spawn(Receiver, name="late")
                pub.subscribe("late", rt_a.ref(rt_b.address, "late"))
                assert await r.wait_for.ask(2, 0, 20.0) == [2]
                assert same_state(await r.latest.ask(), m2.state_dict())
                assert await pub.flush(10.0)
                # Re-subscribing (a node that registers again) sends the latest again.
                pub.subscribe("late", rt_a.ref(rt_b.address, "late"))
                assert await pub.flush(10.0)
                # flush means handed to the transport: wait until every chunk sent has arrived
                await r.wait_for.ask(2, pub.statistics().chunks_sent, 20.0)
                assert (await r.inbox_stats.ask()).stale_chunks > 0  # already had v2
                assert pub.statistics().streams_completed == 2
            finally:
                await pub.close()

    arun(main())


@pytest.mark.timeout(90)
def test_subscriber_dying_mid_stream_is_dropped_and_others_continue(tmp_path: Path) -> None:
    with receiver_process(tmp_path, "doomed", die_at_chunk=2) as doomed_addr:

        async def main() -> None:
            async with Runtime(FAST) as rt_a, Runtime(FAST) as rt_b:
                pub = WeightPublisher(chunk_bytes=4096, send_timeout_s=30.0)
                try:
                    ok = await rt_b.spawn(Receiver, name="ok")
                    pub.subscribe("doomed", rt_a.ref(doomed_addr, "receiver"))
                    pub.subscribe("ok", rt_a.ref(rt_b.address, "ok"))
                    m1, m2 = big_model(1), big_model(2)
                    pub.publish(1, m1)
                    assert await ok.wait_for.ask(1, 0, 30.0) == [1]
                    # The doomed stream fails (peer lost) instead of hanging or retrying.
                    assert await pub.flush(30.0)
                    s = pub.statistics()
                    assert (s.failures, s.streams_completed, s.subscribers) == (1, 1, 2)
                    pub.publish(2, m2)  # the dead one is tried once more, fails again
                    assert await ok.wait_for.ask(2, 0, 30.0) == [1, 2]
                    assert same_state(await ok.latest.ask(), m2.state_dict())
                    assert await pub.flush(30.0)
                    s = pub.statistics()
                    assert (s.failures, s.streams_completed) == (2, 2)
                    assert s.streams_in_flight == 0
                finally:
                    await pub.close()

        arun(main())


# -- the "never stalls training" numbers (slow; quoted in weight_publish's docstring) ------


def _synthetic_state(total_mb: int) -> dict[str, Tensor]:
    n = total_mb * (1 << 20) // 4 // 25
    return {f"w{i}": torch.randn(n) for i in range(25)}


class _LagProbe:
    """A 1 ms ticker on the loop: the largest extra delay it saw is how long the loop was
    ever busy (or the process descheduled) at once."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - 0.001)
            last = now

    def stop(self) -> float:
        self._task.cancel()
        return self.worst


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_publish_does_not_stall(tmp_path: Path) -> None:
    """Caller-blocked time vs stream time, 2 subscriber processes, 4 MiB chunks (no asyncio
    debug mode here: it slows the loop and would inflate the lag)."""
    from spotlight.models.dit import build_policy

    tiny = build_policy("tiny")
    states: dict[str, Any] = {"tiny": tiny, "100MB": _synthetic_state(100)}
    with (
        receiver_process(tmp_path, "b0", heartbeat_s=1.0) as addr0,
        receiver_process(tmp_path, "b1", heartbeat_s=1.0) as addr1,
    ):

        async def main() -> dict[str, dict[str, float]]:
            cfg = RuntimeConfig(heartbeat_s=1.0, missed_heartbeats=4, ask_timeout_s=120.0)
            async with Runtime(cfg) as rt:
                pub = WeightPublisher()
                refs = [rt.ref(a, "receiver") for a in (addr0, addr1)]
                for i, r in enumerate(refs):
                    pub.subscribe(f"b{i}", r)
                probe = _LagProbe()
                await asyncio.sleep(2.0)  # the idle baseline of the same loop, same load
                out: dict[str, dict[str, float]] = {"idle": {"lag_max_ms": probe.stop() * 1e3}}
                version = 0
                for label, state in states.items():
                    rows: list[tuple[float, ...]] = []
                    for rep in range(6):
                        version += 1
                        t0 = time.perf_counter()
                        pub.publish(version, state)
                        t1 = time.perf_counter()
                        probe = _LagProbe()
                        cpu0, proc0 = time.thread_time(), time.process_time()
                        await asyncio.gather(*(r.wait_for.ask(version, 0, 100.0) for r in refs))
                        t2 = time.perf_counter()
                        cpu = time.thread_time() - cpu0  # this loop's thread, while streaming
                        proc = time.process_time() - proc0  # + ZeroMQ's I/O thread
                        lag = probe.stop()
                        if rep > 0:  # rep 0 warms up (first allocation, connection set-up)
                            rows.append((t1 - t0, t2 - t0, cpu, proc, lag))
                    cols = list(zip(*rows, strict=True))
                    out[label] = {
                        "MB": pub.statistics().snapshot_bytes / 1e6,
                        "publish_ms": statistics.median(cols[0]) * 1e3,
                        "stream_ms": statistics.median(cols[1]) * 1e3,
                        "loop_cpu_ms": statistics.median(cols[2]) * 1e3,
                        "process_cpu_ms": statistics.median(cols[3]) * 1e3,
                        "lag_median_ms": statistics.median(cols[4]) * 1e3,
                        "lag_max_ms": max(cols[4]) * 1e3,
                    }
                await pub.close()
                return out

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results = runner.run(main())
    for label, r in results.items():
        print(f"{label}: " + ", ".join(f"{k}={v:.1f}" for k, v in r.items()))
    for label in states:
        assert results[label]["publish_ms"] < results[label]["stream_ms"]
