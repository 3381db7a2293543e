"""Goodbye: a runtime that shuts down says ``bye``, so peers act at once, not after the
heartbeat window (here 30 s, far beyond the test's deadlines)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from spotlight.runtime import Actor, Runtime, RuntimeConfig, endpoint
from spotlight.runtime.errors import ActorStopped, PeerLost
from tests.runtime.helpers import arun

SLOW_HEARTBEAT = RuntimeConfig(
    heartbeat_s=10.0, missed_heartbeats=3, ask_timeout_s=60.0, stop_timeout_s=3.0
)
cancelled: list[str] = []


class Server(Actor):
    @endpoint(concurrent=True)
    async def hold(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            cancelled.append(str(exc.args[0]) if exc.args else "")
            raise

    @endpoint
    async def echo(self, x: Any) -> Any:
        return x


def test_peer_that_shuts_down_is_lost_at_once_and_its_calls_are_cancelled() -> None:
    cancelled.clear()

    async def main() -> None:
        async with Runtime(SLOW_HEARTBEAT) as server:
            await server.spawn(Server, name="server")
            events = server.peer_events()
            client = await Runtime(SLOW_HEARTBEAT).start()
            ref = client.ref(server.address, "server", cls=Server)
            assert await ref.echo.ask(1) == 1
            call = asyncio.ensure_future(ref.hold.ask())
            while not server.statistics()["actors"][0]["running"]:  # noqa: ASYNC110 (bounded by the test timeout)
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            await client.shutdown("client leaves")
            with pytest.raises(ActorStopped):  # the client's own call ends with its runtime
                await call
            async with asyncio.timeout(5):
                async for event in events:
                    if event.kind == "peer_lost":
                        assert event.address == client.address
                        assert event.reason == "peer shut down"
                        break
                while not cancelled:  # noqa: ASYNC110 (bounded by the timeout above)
                    await asyncio.sleep(0.01)
            assert time.monotonic() - t0 < 5.0
            assert cancelled == ["caller " + client.address + " lost: peer shut down"]
            assert server.statistics()["peers"] == []

    arun(main())


def test_callers_pending_asks_fail_with_peer_lost_when_the_server_says_bye() -> None:
    async def main() -> None:
        async with Runtime(SLOW_HEARTBEAT) as client:
            server = await Runtime(SLOW_HEARTBEAT).start()
            await server.spawn(Server, name="server")
            ref = client.ref(server.address, "server", cls=Server)
            assert await ref.echo.ask(1) == 1
            events = client.peer_events()
            # A call the server's actors never see: it is still in the client's hands
            # (registered as pending) when the bye arrives.
            conn = client.transport.conns[server.address]
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            from spotlight.runtime.transport import _Pending

            pool = client.transport._credits(server.address, "server")
            client.transport.pending[10**9] = _Pending(server.address, "server", pool, future=fut)
            t0 = time.monotonic()
            await server.shutdown("server leaves")
            async with asyncio.timeout(5):
                with pytest.raises(PeerLost, match="peer shut down"):
                    await fut
                async for event in events:
                    if event.kind == "peer_lost":
                        assert event.reason == "peer shut down"
                        break
            assert time.monotonic() - t0 < 5.0
            assert conn.sock.closed

    arun(main())
