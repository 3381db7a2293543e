"""The serving half of the transport: what our ROUTER does with each message.

``Transport`` (see the map in ``transport.py``) inherits this. The ROUTER loop never
awaits an actor: it validates a message, turns it into an envelope in the target
actor's mailbox, and moves on. Every refusal is a :class:`Reject`: one log line, a
typed ``error`` reply when the sender can be told (an ``ask``/``stream`` with a
readable call id), and the send credit paid back for a refused ``tell``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
import zmq

from spotlight.runtime.codec import CodecError, decode_header
from spotlight.runtime.errors import (
    WIRE_ERRORS,
    BadMessage,
    MessageTooLarge,
    RemoteError,
    SpotlightError,
    StaleGeneration,
)
from spotlight.runtime.flow import Credits

if TYPE_CHECKING:
    from spotlight.runtime.config import RuntimeConfig
    from spotlight.runtime.envelope import Envelope, Kind
    from spotlight.runtime.host import Host
    from spotlight.runtime.zsock import LoopSocket

__all__ = ["Inbound", "Reject", "RemoteSink", "ServingSide", "error_from_header", "error_header"]

log = logging.getLogger("spotlight.runtime")
PEER_SHUT_DOWN = "peer shut down"
"""The reason (in ``PeerLost`` and ``peer_lost`` events) when a peer said ``bye``."""


@dataclass(eq=False)
class Inbound:
    """A peer's DEALER as seen by our ROUTER (after its hello)."""

    identity: bytes
    address: str
    window: int
    last_seen: float
    owed: dict[str, int] = field(default_factory=dict)
    calls: dict[int, Envelope] = field(default_factory=dict)
    stream_credits: dict[int, Credits] = field(default_factory=dict)


class Reject(Exception):
    """A message we refuse: ``error`` is what the sender gets when it can be told."""

    def __init__(self, error: SpotlightError, cid: int | None, actor: str | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.cid = cid
        self.actor = actor


class ServingSide:
    """Mixin of ``Transport``: the ROUTER loop and everything it answers."""

    if TYPE_CHECKING:
        runtime: Host
        config: RuntimeConfig
        router: LoopSocket
        inbound: dict[bytes, Inbound]
        stats: dict[str, int]
        closed: bool

        def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None: ...
        def _encode(self, header: dict[str, Any], body: Any = None) -> list[Any]: ...
        def _decode(self, frames: Sequence[Any]) -> Any: ...
        def _peer_seen(self, address: str) -> None: ...
        def _forget_inbound(self, identity: bytes, reason: str) -> None: ...
        def peer_lost(
            self, address: str, reason: str, error: BaseException | None = None
        ) -> None: ...

    def _on_router_message(self, frames: list[zmq.Frame]) -> None:
        """Reader callback of the ROUTER: one message from a peer's DEALER."""
        stats = self.stats
        stats["messages_in"] += 1
        stats["bytes_in"] += sum(len(f) for f in frames)
        identity = frames[0].bytes
        try:
            self._on_request(identity, frames[1:])
        except Reject as rej:
            self._reject(identity, rej)
        except Exception as exc:  # the one place that keeps the runtime serving
            stats["bad_messages"] += 1
            log.warning("bad message from %r dropped: %r", identity, exc)

    def _reject(self, identity: bytes, rej: Reject) -> None:
        inbound = self.inbound.get(identity)
        if isinstance(rej.error, StaleGeneration) and rej.cid is None:
            self.stats["stale_tells_dropped"] += 1
        elif isinstance(rej.error, BadMessage):
            self.stats["bad_messages"] += 1
        else:
            self.stats["rejected_calls"] += 1
        who = inbound.address if inbound is not None else repr(identity)
        log.warning("rejected message from %s: %s", who, rej.error)
        if inbound is not None and rej.actor is not None and rej.cid is None:
            self._owe_credit(inbound, rej.actor, flush=True)  # a refused tell still pays back
        if rej.cid is not None:
            self._reply_nowait(identity, error_header(rej.cid, rej.error))

    def _reply_nowait(self, identity: bytes, header: dict[str, Any], body: Any = None) -> None:
        """Queue a reply now when the ROUTER has room, else in a background task."""
        if not self.closed:
            try:
                frames = self._encode(header, body)
                if self.router.send_nowait([identity, *frames]):
                    self.stats["messages_out"] += 1
                    self.stats["bytes_out"] += sum(memoryview(f).nbytes for f in frames)
                    return
            except (zmq.ZMQError, SpotlightError):
                pass  # reply() below retries, then logs or raises as it does for everyone
        self.spawn(self.reply(identity, header, body), name=f"reply {header.get('k')}")

    async def reply(self, identity: bytes, header: dict[str, Any], body: Any = None) -> None:
        """Send to one caller through the ROUTER; an unreachable caller is logged, not raised."""
        if self.closed:  # the ROUTER is closing or closed: never touch it
            self.stats["replies_undeliverable"] += 1
            return
        try:
            frames = self._encode(header, body)
        except BadMessage as exc:
            if header.get("k") not in ("reply", "item"):
                raise
            frames = self._encode(error_header(header["c"], exc))
        try:
            routed = [identity, *frames]
            if not self.router.send_nowait(routed):  # queue full: wait, under a deadline
                async with asyncio.timeout(self.config.send_timeout_s):
                    await self.router.send(routed)
            self.stats["messages_out"] += 1
            self.stats["bytes_out"] += sum(memoryview(f).nbytes for f in frames)
        except (zmq.ZMQError, TimeoutError, SpotlightError) as exc:
            self.stats["replies_undeliverable"] += 1
            log.info("reply %s to %r undeliverable: %r", header.get("k"), identity, exc)

    def _on_request(self, identity: bytes, frames: list[zmq.Frame]) -> None:
        if not frames:
            raise Reject(BadMessage("empty message (no header frame)"), None, None)
        try:
            header = decode_header(frames[0].buffer)
        except CodecError as exc:
            # Still answer a call whose id we can read (for example another wire version).
            raise Reject(BadMessage(str(exc)), _salvage_call_id(frames[0].bytes), None) from None
        kind = header.get("k")
        cid = header.get("c") if kind in ("ask", "stream") else None
        if cid is not None and not isinstance(cid, int):
            raise Reject(BadMessage(f"call id must be an int, got {cid!r}"), None, None)
        size = sum(len(f) for f in frames)
        if size > self.config.max_message_bytes:
            raise Reject(
                MessageTooLarge(
                    f"message of {size} bytes exceeds the receiver's max_message_bytes="
                    f"{self.config.max_message_bytes}"
                ),
                cid,
                None,
            )
        loop_time = asyncio.get_running_loop().time()
        if kind == "hello":
            self._on_hello(identity, header, loop_time)
            return
        inbound = self.inbound.get(identity)
        if inbound is None and kind == "bye":
            # A peer leaving that this side never registered (it was forgotten after a
            # heartbeat gap, or only ever sent a hello that lost a race): nothing to forget.
            return
        if inbound is None:
            self._reply_nowait(identity, {"k": "need_hello"})
            raise Reject(BadMessage(f"{kind!r} before hello"), None, None)
        inbound.last_seen = loop_time
        if kind == "bye":  # the caller's whole runtime shut down: do not wait for heartbeats
            address = inbound.address
            self._forget_inbound(identity, PEER_SHUT_DOWN)
            self.peer_lost(address, PEER_SHUT_DOWN)
        elif kind == "ping":
            self._reply_nowait(identity, {"k": "pong"})
        elif kind == "tell" or kind == "ask" or kind == "stream":
            self._on_call(inbound, kind, header, cid, frames[1:])
        elif kind == "cancel":
            env = inbound.calls.get(header.get("c"))  # type: ignore[arg-type]
            if env is not None:
                self.runtime.cancel_envelope(env, "cancelled by the caller")
        elif kind == "more":
            pool = inbound.stream_credits.get(header.get("c"))  # type: ignore[arg-type]
            n = header.get("n")
            if pool is not None and isinstance(n, int) and 0 < n <= inbound.window * 4:
                pool.release(n)
        else:
            raise Reject(BadMessage(f"unknown message kind {kind!r}"), cid, None)

    def _on_hello(self, identity: bytes, header: dict[str, Any], now: float) -> None:
        address, window, token = header.get("addr"), header.get("w"), header.get("token")
        if not isinstance(address, str) or not isinstance(window, int) or window < 1:
            raise Reject(BadMessage(f"malformed hello {header!r}"), None, None)
        expected = self.config.cluster_token
        if expected is not None and not (
            isinstance(token, str) and hmac.compare_digest(token.encode(), expected.encode())
        ):
            log.warning("rejected hello from %s: wrong or missing cluster token", address)
            self.stats["rejected_calls"] += 1
            self._reply_nowait(identity, {"k": "hello_no", "m": "wrong or missing cluster token"})
            return
        old = self.inbound.get(identity)
        if old is not None:
            self._forget_inbound(identity, "said hello again")
        self.inbound[identity] = Inbound(identity, address, window, now)
        self._reply_nowait(identity, {"k": "hello_ok"})
        self._peer_seen(address)

    def _on_call(
        self,
        inbound: Inbound,
        kind: Kind,
        header: dict[str, Any],
        cid: int | None,
        body_frames: list[zmq.Frame],
    ) -> None:
        actor, endpoint, gen = header.get("a"), header.get("e"), header.get("g")
        if not isinstance(actor, str) or not isinstance(endpoint, str):
            raise Reject(BadMessage(f"call needs string 'a' and 'e': {header!r}"), cid, None)
        if not (gen is None or isinstance(gen, int)) or (kind != "tell" and cid is None):
            raise Reject(BadMessage(f"malformed call header {header!r}"), cid, actor)
        try:
            body = self._decode([f.buffer for f in body_frames])
        except CodecError as exc:
            raise Reject(BadMessage(f"undecodable arguments: {exc}"), cid, actor) from None
        if (
            not isinstance(body, list)
            or len(body) != 2
            or not isinstance(body[0], list)
            or not isinstance(body[1], dict)
            or not all(isinstance(k, str) for k in body[1])
        ):
            raise Reject(BadMessage("call body must be [args list, kwargs dict]"), cid, actor)
        sink: RemoteSink | None = None
        if cid is not None:
            window = header.get("w")
            credits = None
            if kind == "stream":
                if not isinstance(window, int) or window < 1:
                    raise Reject(BadMessage("stream call needs a window 'w'"), cid, actor)
                credits = inbound.stream_credits[cid] = Credits(window)
            sink = RemoteSink(self, inbound.identity, cid, credits)

        def done() -> None:
            if cid is None:
                self._owe_credit(inbound, actor)
            else:
                inbound.calls.pop(cid, None)
                inbound.stream_credits.pop(cid, None)

        try:
            env = self.runtime.deliver(
                actor, kind, endpoint, gen, tuple(body[0]), body[1], sink, done
            )
        except SpotlightError as exc:
            inbound.stream_credits.pop(cid, None)  # type: ignore[arg-type]
            raise Reject(exc, cid, actor) from None
        if cid is not None:
            inbound.calls[cid] = env

    def _owe_credit(self, inbound: Inbound, actor: str, *, flush: bool = False) -> None:
        # Batching is safe: a blocked sender has ``window`` unreturned messages here, so
        # processing them always crosses the threshold.
        owed = inbound.owed.get(actor, 0) + 1
        if flush or owed >= max(1, inbound.window // 4):
            inbound.owed[actor] = 0
            if inbound.identity in self.inbound:
                self._reply_nowait(inbound.identity, {"k": "credit", "a": actor, "n": owed})
        else:
            inbound.owed[actor] = owed


def _salvage_call_id(frame0: bytes) -> int | None:
    """The call id of an undecodable header, if it is a msgpack map with an int ``c``."""
    try:
        raw = msgpack.unpackb(frame0, raw=False, max_bin_len=0, max_ext_len=0)
    except Exception:  # anything undecodable: there is nobody to answer
        return None
    cid = raw.get("c") if isinstance(raw, dict) else None
    return cid if isinstance(cid, int) and not isinstance(cid, bool) else None


def error_header(cid: int, exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, RemoteError):
        return {"k": "error", "c": cid, "t": exc.type_name, "m": exc.message,
                "tb": exc.traceback_text, "r": True}  # fmt: skip
    return {"k": "error", "c": cid, "t": type(exc).__name__, "m": str(exc), "tb": "", "r": False}


def error_from_header(header: dict[str, Any]) -> SpotlightError:
    name, message = str(header.get("t")), str(header.get("m"))
    if not header.get("r") and name in WIRE_ERRORS:
        return WIRE_ERRORS[name](message)
    return RemoteError(name, message, str(header.get("tb") or ""))


class RemoteSink:
    """Outcome of a handler, sent back through the ROUTER to the caller's DEALER."""

    def __init__(
        self, transport: ServingSide, identity: bytes, cid: int, credits: Credits | None
    ) -> None:
        self.transport = transport
        self.identity = identity
        self.cid = cid
        self.credits = credits
        self.closed = False  # the final reply/end/error went out: later ones are dropped

    async def reply(self, value: Any) -> None:
        self.closed = True
        await self.transport.reply(self.identity, {"k": "reply", "c": self.cid}, value)

    async def item(self, value: Any) -> None:
        assert self.credits is not None, "item() on a non-stream call"
        await self.credits.acquire()
        await self.transport.reply(self.identity, {"k": "item", "c": self.cid}, value)

    async def end(self) -> None:
        self.closed = True
        await self.transport.reply(self.identity, {"k": "end", "c": self.cid})

    def fail(self, exc: BaseException) -> None:
        if not self.closed and not self.transport.closed:
            self.closed = True
            self.transport._reply_nowait(self.identity, error_header(self.cid, exc))
