"""Transport behaviour between two runtimes in one process, and raw-socket abuse."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotlight.runtime import Actor, Runtime, RuntimeConfig, endpoint
from spotlight.runtime.codec import WIRE_VERSION, decode_header, encode
from spotlight.runtime.errors import HandshakeRejected, MessageTooLarge, PeerLost, Timeout
from tests.runtime.helpers import FAST, Adder, arun

gate = asyncio.Event()


class Slow(Actor):
    @endpoint
    async def work(self, i: int) -> None:
        await gate.wait()

    @endpoint
    async def done(self) -> str:
        return "ok"


def test_credit_back_pressure_bounds_the_receivers_queue() -> None:
    async def main() -> None:
        gate.clear()
        window = 8
        async with (
            Runtime(FAST) as server,
            Runtime(RuntimeConfig(credit_window=window, ask_timeout_s=20.0)) as client,
        ):
            await server.spawn(Slow, name="slow")
            ref = client.ref(server.address, "slow", cls=Slow)
            sent = 0
            with pytest.raises(Timeout, match="no send credit"):
                for i in range(10 * window):
                    await ref.work.tell(i, timeout=0.5)
                    sent += 1
            assert sent == window  # the teller blocked instead of queueing more
            (actor,) = server.statistics()["actors"]
            assert actor["mailbox"] + actor["running"] <= window
            credits = client.statistics()["credits"][f"{server.address}/slow"]
            assert credits["available"] == 0
            gate.set()
            assert await ref.done.ask(timeout=10.0) == "ok"  # all credits flowed back
            for i in range(window):
                await ref.work.tell(i, timeout=5.0)

    arun(main())


def test_receiver_refuses_oversized_message_and_tells_the_sender() -> None:
    async def main() -> None:
        async with (
            Runtime(RuntimeConfig(max_message_bytes=100_000)) as server,
            Runtime(FAST) as client,
        ):
            await server.spawn(Adder, name="adder")
            ref = client.ref(server.address, "adder", cls=Adder)
            with pytest.raises(MessageTooLarge, match="receiver's max_message_bytes=100000"):
                await ref.echo.ask(b"x" * 200_000)
            assert await ref.add.ask(1) == 1

    arun(main())


def test_cluster_token_handshake(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        secured = RuntimeConfig(cluster_token="s3cret", heartbeat_s=0.25)
        async with (
            Runtime(secured) as server,
            Runtime(RuntimeConfig(cluster_token="wrong")) as intruder,
            Runtime(RuntimeConfig(cluster_token="s3cret")) as friend,
        ):
            await server.spawn(Adder, 5, name="adder")
            with (
                caplog.at_level(logging.WARNING, logger="spotlight.runtime"),
                pytest.raises(HandshakeRejected, match="cluster token"),
            ):
                await intruder.ref(server.address, "adder").add.ask(1, timeout=10.0)
            assert any("rejected hello" in r.message for r in caplog.records)
            assert await friend.ref(server.address, "adder").add.ask(1) == 6

    arun(main())


async def _raw_dealer(address: str) -> tuple[zmq.asyncio.Context, zmq.asyncio.Socket]:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return ctx, sock


async def _recv_header(sock: zmq.asyncio.Socket) -> dict[str, Any]:
    frames = await asyncio.wait_for(sock.recv_multipart(), 10.0)
    return decode_header(frames[0])


def test_other_wire_version_and_unknown_targets_get_typed_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt:
            await rt.spawn(Adder, name="adder")
            ctx, sock = await _raw_dealer(rt.address)
            try:
                hello = {"k": "hello", "addr": "tcp://127.0.0.1:9", "w": 4, "token": None}
                await sock.send_multipart(encode(hello))
                assert (await _recv_header(sock))["k"] == "hello_ok"
                alien = msgpack.packb({"wire": WIRE_VERSION + 1, "k": "ask", "c": 7, "a": "adder"})
                caplog.clear()
                with caplog.at_level(logging.WARNING, logger="spotlight.runtime"):
                    await sock.send_multipart([alien, msgpack.packb([[1], {}])])
                    err = await _recv_header(sock)
                assert err["k"] == "error" and err["c"] == 7 and err["t"] == "BadMessage"
                assert f"wire version {WIRE_VERSION + 1}" in err["m"]
                assert len([r for r in caplog.records if "wire version" in r.message]) == 1
                call = {"k": "ask", "c": 8, "a": "ghost", "e": "add", "g": None}
                await sock.send_multipart(encode(call, [[1], {}]))
                err = await _recv_header(sock)
                assert (err["c"], err["t"]) == (8, "ActorNotFound")
                call = {"k": "ask", "c": 9, "a": "adder", "e": "add", "g": None}
                await sock.send_multipart(encode(call, [[1, 2, 3], {}]))
                err = await _recv_header(sock)
                assert (err["c"], err["t"]) == (9, "BadMessage") and "wrong arguments" in err["m"]
            finally:
                sock.close(linger=0)
                ctx.term()
            assert await rt.ref(rt.address, "adder").add.ask(1) == 1

    arun(main())


_KINDS = st.sampled_from(["hello", "ask", "tell", "stream", "cancel", "more", "ping", "zzz", 3])
_VALUES = st.one_of(
    st.none(), st.integers(-3, 2**63 - 1), st.text(max_size=8), st.binary(max_size=8)
)
_HEADERS = st.builds(
    lambda k, extra: msgpack.packb({"wire": WIRE_VERSION, "k": k, **extra}),
    _KINDS,
    st.dictionaries(st.sampled_from(["a", "e", "c", "g", "w", "n", "addr", "token"]), _VALUES),
)
_FRAME = st.one_of(st.binary(max_size=64), _HEADERS, st.just(msgpack.packb([[1], {}])))
_MESSAGE = st.lists(_FRAME, min_size=1, max_size=5)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(say_hello=st.booleans(), messages=st.lists(_MESSAGE, min_size=1, max_size=15))
def test_fuzz_random_frames_then_a_normal_ask_succeeds(
    say_hello: bool, messages: list[list[bytes]]
) -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt, Runtime(FAST) as client:
            await rt.spawn(Adder, 1, name="adder")
            ctx, sock = await _raw_dealer(rt.address)
            try:
                if say_hello:
                    hello = {"k": "hello", "addr": "tcp://127.0.0.1:9", "w": 4, "token": None}
                    await sock.send_multipart(encode(hello))
                for frames in messages:
                    await sock.send_multipart(frames)
                # the same connection still works afterwards (messages are in order)
                hello = {"k": "hello", "addr": "tcp://127.0.0.1:9", "w": 4, "token": None}
                await sock.send_multipart(encode(hello))
                await sock.send_multipart(encode({"k": "ping"}))
                kinds = set()
                while "pong" not in kinds:
                    kinds.add((await _recv_header(sock))["k"])
            finally:
                sock.close(linger=0)
                ctx.term()
            assert await client.ref(rt.address, "adder").add.ask(2, timeout=10.0) == 3

    arun(main())


def test_ask_to_an_address_nobody_answers_fails_with_peer_lost() -> None:
    async def main() -> float:
        import socket
        import time

        with socket.socket() as s:  # a free port with no listener behind it
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        async with Runtime(FAST) as rt:
            t0 = time.monotonic()
            with pytest.raises(PeerLost, match="no heartbeat"):
                await rt.ref(f"tcp://127.0.0.1:{port}", "x").anything.ask(timeout=30.0)
            return time.monotonic() - t0

    assert arun(main()) < FAST.liveness_s + FAST.heartbeat_s + 2.0


def test_a_stall_of_our_own_loop_is_not_blamed_on_the_peers() -> None:
    """A loop stalled for 3x the liveness window (both runtimes share it here, so nothing is
    read or answered meanwhile) must not declare the peer lost: the heartbeat credits the
    time it overslept (``loop_stalls``) and the connection is used again as before. Without
    the credit the first tick after the stall finds the peer silent and drops it."""

    async def main() -> None:
        import time

        async with Runtime(FAST) as rt, Runtime(FAST) as peer_rt:
            await peer_rt.spawn(Adder, name="adder")
            adder = rt.ref(peer_rt.address, "adder")
            assert await adder.add.ask(1) == 1
            time.sleep(FAST.liveness_s * 3)  # noqa: ASYNC251 - the stall under test
            await asyncio.sleep(FAST.heartbeat_s * 3)  # heartbeat ticks after the stall
            assert await adder.add.ask(2) == 2  # same connection, the peer was never lost
            stats = rt.transport.stats
            assert stats["peers_lost"] == 0 and peer_rt.transport.stats["peers_lost"] == 0
            assert stats["loop_stalls"] >= 1
            assert stats["loop_lag_max_ms"] >= FAST.liveness_s * 2 * 1000

    arun(main())
