"""Across processes: a child process hosts a runtime; killed by PID in teardown."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from spotlight.runtime import Runtime, RuntimeConfig
from spotlight.runtime.errors import (
    ActorNotFound,
    BadMessage,
    EndpointNotFound,
    MessageTooLarge,
    PeerLost,
    RemoteError,
    Timeout,
)
from tests.runtime.helpers import FAST, Adder, arun, child_peer


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with child_peer(tmp_path_factory.mktemp("peer")) as (_proc, address):
        yield address


def test_ask_tell_stream_across_processes(peer: str) -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = rt.ref(peer, "adder", cls=Adder)
            assert await ref.add.ask(1, timeout=10.0) == 101
            for i in range(50):
                await ref.record.tell(i)
            assert await ref.history.ask() == list(range(50))
            assert [x async for x in ref.count.stream(100, timeout=10.0)] == list(range(100))
            with pytest.raises(RemoteError) as info:
                await ref.boom.ask("remote bad")
            assert info.value.type_name == "ValueError" and "raise ValueError" in str(info.value)
            with pytest.raises(BadMessage, match="wrong arguments"):
                await ref.add.ask()
            with pytest.raises(EndpointNotFound):
                await rt.ref(peer, "adder").nope.ask()
            with pytest.raises(ActorNotFound):
                await rt.lookup(peer, "ghost", timeout=10.0)
            found = await rt.lookup(peer, "adder", timeout=10.0)
            assert found.generation == 1
            # a ref travels inside a message and comes back usable
            back = await ref.echo.ask(found)
            assert back == found and await back.add.ask(2) == 102
            events = rt.statistics()
            assert peer in events["peers"] and events["pending_calls"] == 0

    arun(main())


def _dtypes_payload() -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    big = torch.randn(300, 300, generator=g)  # 360 KB: goes zero-copy
    return {
        "f32": big,
        "bf16": torch.randn(17, 33, generator=g).to(torch.bfloat16),
        "i64": torch.randint(-(2**62), 2**62, (129,), generator=g),
        "bool": torch.rand(50, generator=g) > 0.5,
        "u8": torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8, generator=g),
        "strided": big.t()[:10],
        "nested": [
            torch.zeros(0),
            (torch.tensor(3.5), np.arange(12, dtype=np.int16).reshape(3, 4)),
        ],
    }


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8) if t.dtype != torch.bool else t.to(torch.uint8)


def test_tensors_round_trip_bit_exactly(peer: str) -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = rt.ref(peer, "adder", cls=Adder)
            sent = _dtypes_payload()
            got = await ref.echo.ask(sent, timeout=20.0)
            for key in ("f32", "bf16", "i64", "bool", "u8", "strided"):
                a, b = sent[key], got[key]
                assert isinstance(b, torch.Tensor) and b.dtype == a.dtype and b.shape == a.shape  # type: ignore[union-attr]
                assert torch.equal(_bits(a), _bits(b)), key  # type: ignore[arg-type]
            empty, (scalar, arr) = got["nested"]
            assert empty.shape == (0,) and scalar.item() == 3.5
            assert arr.dtype == np.int16 and np.array_equal(arr, np.arange(12).reshape(3, 4))

    arun(main())


def test_oversized_message_is_refused_before_sending(peer: str) -> None:
    async def main() -> None:
        async with Runtime(RuntimeConfig(max_message_bytes=1 << 20)) as rt:
            ref = rt.ref(peer, "adder", cls=Adder)
            with pytest.raises(MessageTooLarge, match="max_message_bytes"):
                await ref.echo.ask(torch.zeros(1 << 19))  # 2 MiB
            assert await ref.add.ask(1) == 101

    arun(main())


def test_breaking_out_of_a_stream_cancels_the_remote_generator(peer: str) -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = rt.ref(peer, "adder", cls=Adder)
            async with ref.count.stream(10**9) as items:
                async for x in items:
                    if x == 3:
                        break
            # the remote drops the stream: only our stats call is left in flight
            while True:
                stats = await ref.runtime_stats.ask()
                mine = stats["incoming"][rt.address]
                if mine["calls_in_flight"] == 1:
                    break
                await asyncio.sleep(0.02)
            assert rt.statistics()["pending_calls"] == 0

    arun(main())


def test_kill_9_during_ask_gives_peer_lost_within_heartbeat_window(tmp_path: Path) -> None:
    with child_peer(tmp_path) as (proc, address):

        async def main() -> float:
            async with Runtime(FAST) as rt:
                events = rt.peer_events()
                ref = rt.ref(address, "adder", cls=Adder)
                assert await ref.add.ask(0, timeout=20.0) == 100
                joined = await asyncio.wait_for(anext(events), 5.0)
                assert joined.kind == "peer_joined" and joined.address == address
                call = asyncio.ensure_future(ref.hang.ask(timeout=60.0))
                await asyncio.sleep(0.1)  # let the call reach the peer
                os.kill(proc.pid, signal.SIGKILL)
                t0 = time.monotonic()
                with pytest.raises(PeerLost):
                    await call
                elapsed = time.monotonic() - t0
                lost = await asyncio.wait_for(anext(events), 5.0)
                assert lost.kind == "peer_lost" and lost.address == address
                assert rt.statistics()["pending_calls"] == 0
                return elapsed

        elapsed = arun(main())
        # liveness is heartbeat_s * missed = 1.0 s, checked every heartbeat: <= 1.25 s,
        # plus slack for a loaded 2-core machine.
        assert elapsed < FAST.liveness_s + FAST.heartbeat_s + 2.0, elapsed


def test_timed_out_ask_leaves_no_state_on_either_side(peer: str) -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = rt.ref(peer, "adder", cls=Adder)
            with pytest.raises(Timeout):
                await ref.hang.ask(timeout=0.3)
            assert rt.statistics()["pending_calls"] == 0
            # the cancel reached the peer: only our stats call is in flight there
            while (await ref.runtime_stats.ask())["incoming"][rt.address]["calls_in_flight"] != 1:  # noqa: ASYNC110 (polls state; test timeout bounds it)
                await asyncio.sleep(0.02)
            credits = rt.statistics()["credits"][f"{peer}/adder"]
            assert credits["available"] == credits["window"]

    arun(main())
