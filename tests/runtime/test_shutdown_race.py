"""Shutdown races: nothing may send on a closed socket, no future is left unretrieved.

Several runtimes shutting down at the same moment (Ctrl-C of ``spotlight run``) used to
log ``transport task ping failed: ZMQError('Socket operation on non-socket')``: a
heartbeat ping (or a connection loop) ran on a DEALER already closed by ``peer_lost``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from spotlight.runtime import Actor, Runtime, RuntimeConfig, endpoint
from tests.runtime.helpers import FAST, arun


class Echo(Actor):
    @endpoint
    async def echo(self, x: Any) -> Any:
        return x

    @endpoint
    async def sink(self, x: Any) -> None:
        await asyncio.sleep(0)


def _problems(records: list[logging.LogRecord], loop_errors: list[str]) -> list[str]:
    bad = [
        r.getMessage()
        for r in records
        if r.levelno >= logging.WARNING
        and ("failed" in r.getMessage() or "non-socket" in r.getMessage())
    ]
    return bad + loop_errors


def _watch_loop() -> list[str]:
    errors: list[str] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda loop, ctx: errors.append(str(ctx.get("message")))
    )
    return errors


def test_ping_after_peer_lost_does_not_touch_the_closed_socket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> list[str]:
        errors = _watch_loop()
        async with Runtime(FAST) as a, Runtime(FAST) as b:
            await b.spawn(Echo, name="echo")
            assert await a.ref(b.address, "echo").echo.ask(1) == 1
            conn = a.transport.conns[b.address]
            # The heartbeat queues a ping, then (same loop step) the peer is dropped.
            a.transport._post(conn, [b"x"], name="ping")
            a.transport.peer_lost(b.address, "test")
            assert conn.sock.closed
            for _ in range(5):
                await asyncio.sleep(0)
        gc.collect()
        return errors

    with caplog.at_level(logging.INFO, logger="spotlight.runtime"):
        errors = arun(main())
    assert _problems(caplog.records, errors) == []


def test_need_hello_ends_the_connection_loop_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    """The peer forgot us (it restarted): our DEALER is dropped from inside its own loop."""

    async def main() -> list[str]:
        errors = _watch_loop()
        async with Runtime(FAST) as a, Runtime(FAST) as b:
            await b.spawn(Echo, name="echo")
            assert await a.ref(b.address, "echo").echo.ask(1) == 1
            conn = a.transport.conns[b.address]
            for identity in list(b.transport.inbound):
                b.transport._forget_inbound(identity, "test: forget the caller")
            events = a.peer_events()
            async with asyncio.timeout(10):  # the next ping is answered with need_hello
                async for event in events:
                    if event.kind == "peer_lost":
                        break
            assert conn.sock.closed and b.address not in a.transport.conns
            assert await a.ref(b.address, "echo").echo.ask(2) == 2  # reconnects
        gc.collect()
        return errors

    with caplog.at_level(logging.INFO, logger="spotlight.runtime"):
        errors = arun(main())
    assert _problems(caplog.records, errors) == []


def test_many_runtimes_shutting_down_at_once_log_no_socket_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = RuntimeConfig(
        heartbeat_s=0.02, missed_heartbeats=50, ask_timeout_s=20.0, stop_timeout_s=3.0
    )

    async def main() -> tuple[list[str], set[str]]:
        errors = _watch_loop()
        rts = [await Runtime(cfg).start() for _ in range(4)]
        for rt in rts:
            await rt.spawn(Echo, name="echo")
        ready = asyncio.Event()
        rounds = 0

        async def pump(rt: Runtime, address: str) -> str:
            nonlocal rounds
            ref = rt.ref(address, "echo")
            try:
                while True:
                    await ref.echo.ask(b"x" * 64, timeout=10)
                    await ref.sink.tell(b"y")
                    rounds += 1
                    if rounds >= 200:
                        ready.set()
            except Exception as exc:  # the caller learns at once that the runtime closed
                return type(exc).__name__

        pumps = [asyncio.ensure_future(pump(a, b.address)) for a in rts for b in rts if a is not b]
        async with asyncio.timeout(30):
            await ready.wait()
            await asyncio.gather(*(rt.shutdown("test: all at once") for rt in rts))
            outcomes = set(await asyncio.gather(*pumps))
        gc.collect()
        await asyncio.sleep(0)
        return errors, outcomes

    with caplog.at_level(logging.INFO, logger="spotlight.runtime"):
        errors, outcomes = arun(main())
    assert outcomes <= {"ActorStopped", "PeerLost"}, outcomes
    assert _problems(caplog.records, errors) == []


def test_goodbye_from_a_forgotten_peer_is_not_a_bad_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A peer that leaves after this side forgot it (a spot node killed right after a
    heartbeat gap) says bye: nothing to forget, so no 'rejected message' warning."""

    async def main() -> None:
        async with Runtime(FAST) as b:
            await b.spawn(Echo, name="echo")
            async with Runtime(FAST) as a:
                assert await a.ref(b.address, "echo").echo.ask(1) == 1
                for identity in list(b.transport.inbound):
                    b.transport._forget_inbound(identity, "test: forget the caller")
            # leaving, `a` said bye to `b`, which no longer knows it; let `b` read it
            await asyncio.sleep(0.2)

    with caplog.at_level(logging.INFO, logger="spotlight.runtime"):
        arun(main())
    rejected = [r.getMessage() for r in caplog.records if "rejected message" in r.getMessage()]
    assert rejected == []
