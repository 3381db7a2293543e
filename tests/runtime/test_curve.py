"""CURVE between runtimes on loopback (``curve=True`` forces it there): members talk;
strangers (no key, the token alone, a wrong key) get no frame to an actor and are logged
once; a raw TCP proxy between two runtimes sees neither the token nor tensor bytes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from spotlight.runtime import Runtime, RuntimeConfig
from spotlight.runtime.codec import encode
from spotlight.runtime.errors import PeerLost, Timeout
from spotlight.runtime.keys import KEY_ENV, KEY_FILE_ENV, KeyFileError, generate_key, write_key_file
from spotlight.runtime.security import Security
from tests.runtime.helpers import FAST, Adder, arun

TOKEN = "tok-7f3a9c1e5b2d4f60a8e1"  # distinctive: searched for in captured bytes
KEY = generate_key()


def curve_config(key_secret: bytes = KEY.secret, **kw: object) -> RuntimeConfig:
    base = {
        "heartbeat_s": FAST.heartbeat_s,
        "missed_heartbeats": FAST.missed_heartbeats,
        "ask_timeout_s": FAST.ask_timeout_s,
        "stop_timeout_s": FAST.stop_timeout_s,
        "cluster_token": TOKEN,
        "curve": True,
        "curve_secret_key": key_secret.decode(),
    }
    base.update(kw)
    return RuntimeConfig(**base)  # type: ignore[arg-type]


def security_of(rt: Runtime) -> Security:
    return rt.transport.security


async def refusals(rt: Runtime, at_least: int, stat: str = "handshakes_refused") -> None:
    """Wait (on the guard's event, no polling) until ``stat`` reaches ``at_least``."""
    sec = security_of(rt)
    async with asyncio.timeout(15.0):
        while True:
            sec.refused.clear()  # no await between the check and the clear: nothing missed
            if sec.stats[stat] >= at_least:
                return
            await sec.refused.wait()


def test_members_talk_and_tensors_arrive_intact() -> None:
    async def main() -> None:
        async with Runtime(curve_config()) as server, Runtime(curve_config()) as client:
            await server.spawn(Adder, 5, name="adder")
            ref = client.ref(server.address, "adder")
            assert await ref.add.ask(1) == 6
            big = np.arange(1 << 18, dtype=np.float32)  # 1 MiB: the zero-copy path
            assert np.array_equal(await ref.echo.ask(big), big)
            stats = server.statistics()["security"]
            assert stats["curve_router"] and stats["zap_accepted"] == 1
            assert stats["key"]["source"] == "RuntimeConfig.curve_secret_key"
            assert security_of(client).stats["curve_dealers"] == 1

    arun(main())


def test_peer_without_the_key_gets_no_frame_to_an_actor() -> None:
    async def main() -> None:
        async with (
            Runtime(curve_config()) as server,
            Runtime(curve_config()) as member,
            Runtime(RuntimeConfig(cluster_token=TOKEN, heartbeat_s=0.25, curve=False)) as plain,
        ):
            await server.spawn(Adder, name="adder")
            # A plain runtime that even knows the token: it never gets past the handshake.
            with pytest.raises((Timeout, PeerLost)):
                await plain.ref(server.address, "adder").record.tell(1)
                await plain.ref(server.address, "adder").add.ask(1, timeout=1.0)
            # A raw socket speaking our protocol in clear, token and all.
            ctx = zmq.Context()
            raw = ctx.socket(zmq.DEALER)
            raw.setsockopt(zmq.LINGER, 0)
            raw.connect(server.address)
            hello = {"k": "hello", "addr": "tcp://127.0.0.1:1", "w": 8, "token": TOKEN}
            raw.send_multipart(encode(hello))
            tell = {"k": "tell", "a": "adder", "g": 0, "e": "record"}
            raw.send_multipart(encode(tell, [[2], {}]))
            await refusals(server, 2)
            raw.close(0)
            ctx.term()
            assert server.transport.stats["messages_in"] == 0  # nothing passed the handshake
            assert await member.ref(server.address, "adder").history.ask() == []

    arun(main())


def test_wrong_key_is_refused_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    server_refusals = 0

    async def main() -> None:
        nonlocal server_refusals
        other = generate_key()  # another cluster's key
        with caplog.at_level(logging.WARNING, logger="spotlight.runtime"):
            async with (
                Runtime(curve_config()) as server,
                Runtime(curve_config(other.secret)) as stranger,
            ):
                await server.spawn(Adder, name="adder")
                ref = stranger.ref(server.address, "adder")
                with pytest.raises(PeerLost, match="another cluster key than ours"):
                    for i in range(20):  # many frames; ZeroMQ also retries the handshake
                        await ref.record.tell(i, timeout=5.0)
                    await ref.add.ask(1, timeout=10.0)
                await refusals(server, 3)
                # A client that knows the server's (public) key but holds a foreign key:
                # ZAP refuses it, twice, and logs it once.
                ctx = zmq.Context()
                socks = []
                public, secret = zmq.curve_keypair()
                for _ in range(2):
                    s = ctx.socket(zmq.DEALER)
                    s.setsockopt(zmq.LINGER, 0)
                    s.curve_serverkey, s.curve_publickey, s.curve_secretkey = (
                        KEY.public,
                        public,
                        secret,
                    )
                    s.connect(server.address)
                    s.send_multipart(encode({"k": "ping"}))
                    socks.append(s)
                await refusals(server, 2, "zap_refused")
                server_refusals = security_of(server).stats["handshakes_refused"]
                assert await server.ref(server.address, "adder").add.ask(1) == 1  # still serving
                for s in socks:
                    s.close(0)
                ctx.term()
                assert server.transport.stats["messages_in"] == 0
        refused = [
            r.getMessage()
            for r in caplog.records
            if r.name == "spotlight.runtime" and "refused" in r.getMessage()
        ]
        # Once per reason (a loaded box may also see a handshake cut short: another reason),
        # never once per attempt or frame: no line repeats, and far fewer lines than refusals.
        assert len(refused) == len(set(refused)), refused
        handshakes = [m for m in refused if "refused a connection" in m]
        assert any("not this cluster's key" in m for m in handshakes), refused
        assert len(handshakes) < server_refusals, (handshakes, server_refusals)
        assert len([m for m in refused if "refused a CURVE peer" in m]) == 1, refused

    arun(main())


@contextlib.asynccontextmanager
async def tap(upstream: str) -> AsyncIterator[tuple[str, bytearray]]:
    """A raw TCP proxy on loopback recording every byte both ways (the eavesdropper)."""
    host, port = upstream.removeprefix("tcp://").rsplit(":", 1)
    captured = bytearray()
    pumps: set[asyncio.Task[None]] = set()

    async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(1 << 16):
                captured.extend(data)
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    async def on_client(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(host, int(port))
        for coro in (pump(cr, uw), pump(ur, cw)):
            task = asyncio.create_task(coro)
            pumps.add(task)
            task.add_done_callback(pumps.discard)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    try:
        yield f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}", captured
    finally:
        server.close()
        for task in list(pumps):
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        await server.wait_closed()


@pytest.mark.parametrize("curve", [True, False])
def test_the_wire_shows_neither_token_nor_tensor_bytes(curve: bool) -> None:
    """With ``curve=False`` the same capture *does* show both: the probe is not blind."""

    async def main() -> None:
        # Generous liveness: the proxy adds a hop and a loaded box stalls processes for
        # seconds; this test is about bytes on the wire, not about loss detection.
        config = curve_config(curve=curve, heartbeat_s=1.0, missed_heartbeats=10)
        payload = np.frombuffer(os.urandom(1 << 20), dtype=np.uint8)
        async with Runtime(config) as server, Runtime(config) as client:
            await server.spawn(Adder, name="adder")
            async with tap(server.address) as (via, wire):
                ref = client.ref(via, "adder")
                assert np.array_equal(await ref.echo.ask(payload), payload)
                assert await ref.echo.ask("small") == "small"
            assert len(wire) > 2 * payload.nbytes  # the tensor went there and back
            seen = TOKEN.encode() in wire, payload[4096:4160].tobytes() in wire
            assert seen == ((False, False) if curve else (True, True))

    arun(main())


def test_key_file_with_loose_permissions_stops_the_runtime_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_key_file(tmp_path / "cluster.key", generate_key())
    path.chmod(0o644)
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv(KEY_FILE_ENV, str(path))

    async def main() -> None:
        with pytest.raises(KeyFileError, match=rf"{path}.*chmod 600"):
            async with Runtime(RuntimeConfig(curve=True, cluster_token=TOKEN)):
                pass
        path.chmod(0o600)
        async with Runtime(RuntimeConfig(curve=True)) as rt:  # the file alone is enough
            assert security_of(rt).statistics()["key"]["source"] == f"cluster key file {path}"

    arun(main())
