"""ZeroMQ transport: one ROUTER per runtime, one DEALER per peer we call.

Map::

      caller task ──encode──► Credits(peer, actor).acquire ──► DEALER ─────► peer ROUTER
          ▲                                                      │
          └── pending[call id] ◄── _on_conn_message (callback) ◄─┘  reply/error/item/end/credit/pong

      peer DEALER ──► ROUTER ──► _on_router_message ──► Runtime.deliver ──► actor mailbox
                        ▲                                              │
                        └───────── RemoteSink (reply/item/end/error) ◄─┘  + credit for tells

Readers and loops, and what they wait on:

* Sockets are :class:`~spotlight.runtime.zsock.LoopSocket` objects: the event loop calls a
  reader callback when ZeroMQ's fd fires, which drains the socket (``NOBLOCK``, bounded
  batch) and handles each message synchronously. No task sits between the socket and
  the mailbox or the caller's future, which saves a loop step on each side of a call.
* ``_on_router_message`` (in ``serving.py``, which ``Transport`` inherits) decodes,
  validates and hands each message to an actor's mailbox without awaiting the actor,
  so a slow actor never stalls the socket. Malformed input is answered with a typed
  ``error`` when the sender can be told, logged as one line, and dropped.
* ``_on_conn_message`` (per outgoing DEALER) handles replies, stream items, credits and
  pongs, and resolves ``pending`` futures/queues.
* ``_heartbeat_loop`` (one task) wakes every ``heartbeat_s``: pings each DEALER's peer and
  declares lost any peer (outgoing or incoming) silent for
  ``heartbeat_s * missed_heartbeats``, not counting the time this loop itself was stalled
  (``loop_stalls``, ``loop_lag_max_ms`` in the statistics). A lost peer fails its pending
  calls with ``PeerLost``, fails credit waiters, cancels the calls it made to us, and emits
  a ``peer_lost`` event.

Back-pressure: a sender holds one credit per message per (peer, actor)
(``RuntimeConfig.credit_window``), whatever the endpoint: an actor flooded with tells
also makes an ``ask`` to it wait for credit. Tells return credit through ``credit`` messages
the receiver sends once the actor has *processed* them (batched by a quarter
window). Asks and streams return it when the call ends. Stream items are
paced by a second window (``stream_window``): the consumer sends ``more`` as it
reads. ZeroMQ's HWMs bound the socket queues underneath; a send that cannot be
queued within ``send_timeout_s`` raises ``Timeout``.

Hello: every DEALER first sends ``hello`` (our address, credit window, cluster token).
The ROUTER answers ``hello_ok`` or ``hello_no`` and refuses anything else from an
identity that has not said hello (``need_hello``), which is also how a caller learns
that a peer restarted. Beneath it, sockets that reach beyond loopback use CURVE
(``security.py``): the handshake authenticates the cluster key before any frame reaches
the ROUTER's reader, and encrypts everything after it, the token included.

Shutdown order (``close``): mark closed (no new connection or background send), stop
the heartbeat loop, finish or cancel in-flight background sends, say ``bye`` to every
peer (on each DEALER and through the ROUTER to each caller), fail every pending call
with ``ActorStopped``, close every socket (readers removed first) with a short linger
so the byes leave, and terminate the context (which joins ZeroMQ's I/O threads).
Nothing touches a socket after it closed.

Goodbye: a peer that receives ``bye`` treats the sender as lost at once (reason "peer
shut down"): its pending calls fail with ``PeerLost``, the calls the sender made to it
are cancelled, watchers get ``peer_lost``; no heartbeat window to wait out. A bye that
cannot be queued (full queue, peer already gone) is skipped: heartbeats still apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

from spotlight.runtime.actor import StreamCall, decoding_runtime
from spotlight.runtime.codec import (
    CodecError,
    WireVersionError,
    decode_body,
    decode_header,
    encode,
)
from spotlight.runtime.errors import (
    ActorStopped,
    BadMessage,
    HandshakeRejected,
    MessageTooLarge,
    PeerLost,
    SpotlightError,
    Timeout,
)
from spotlight.runtime.flow import Credits
from spotlight.runtime.security import Security
from spotlight.runtime.serving import PEER_SHUT_DOWN, Inbound, ServingSide, error_from_header
from spotlight.runtime.zsock import LoopSocket

if TYPE_CHECKING:
    from spotlight.runtime.actor import ActorRef
    from spotlight.runtime.host import Host

__all__ = ["NOT_NOW", "Transport"]

log = logging.getLogger("spotlight.runtime")
Frames = list[Any]
BYE_LINGER_MS = 100
"""How long closing sockets may spend flushing the byes (and anything queued) to peers
that are still connected; a dead peer's queue is dropped after this."""
NOT_NOW: Any = object()
"""Returned by a fast path that could not run at once (see ``Transport.ask_fast``)."""


def _expire(fut: asyncio.Future[Any], ref: ActorRef, endpoint: str, deadline: float) -> None:
    if not fut.done():
        fut.set_exception(Timeout(f"ask {ref}.{endpoint} got no reply within {deadline}s"))


@dataclass(eq=False)
class _Pending:
    address: str
    actor: str
    credits: Credits
    future: asyncio.Future[Any] | None = None
    queue: asyncio.Queue[tuple[str, Any]] | None = None


@dataclass(eq=False)
class _Conn:
    """Our DEALER to one peer's ROUTER."""

    address: str
    sock: LoopSocket
    last_recv: float
    ready: bool = False


class Transport(ServingSide):
    """Sockets, connections, heartbeats and the wire protocol of one runtime."""

    def __init__(self, runtime: Host) -> None:
        self.runtime = runtime
        self.config = cfg = runtime.config
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.security = Security(self.ctx, cfg)
        router = self.ctx.socket(zmq.ROUTER)
        self._configure(router)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            self.security.secure_router(router)  # before bind: the handshake applies to all
            if cfg.port:
                router.bind(f"tcp://{cfg.bind_host}:{cfg.port}")
                port = cfg.port
            else:
                port = router.bind_to_random_port(f"tcp://{cfg.bind_host}")
        except BaseException:  # a refused key or a taken port: leave no socket behind
            self.security.close()
            self.ctx.destroy(linger=0)
            raise
        self.router = LoopSocket(router, self._on_router_message)
        self.address = f"tcp://{cfg.advertise_host or cfg.bind_host}:{port}"
        self.conns: dict[str, _Conn] = {}
        self.inbound: dict[bytes, Inbound] = {}
        self.pending: dict[int, _Pending] = {}
        self.credits: dict[tuple[str, str], Credits] = {}
        self.known_peers: set[str] = set()
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self.closed = False
        self.stats = {
            "messages_in": 0,
            "messages_out": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "bad_messages": 0,
            "rejected_calls": 0,
            "stale_tells_dropped": 0,
            "replies_undeliverable": 0,
            "peers_lost": 0,
            "loop_stalls": 0,
            "loop_lag_max_ms": 0,
        }

    def _configure(self, sock: zmq.Socket[Any]) -> None:
        cfg = self.config
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, cfg.send_hwm)
        sock.setsockopt(zmq.RCVHWM, cfg.recv_hwm)
        # A memory guard only: exact limits are checked per message (and answered).
        sock.setsockopt(zmq.MAXMSGSIZE, 2 * cfg.max_message_bytes + (1 << 20))

    def start(self) -> None:
        self._loops = [
            self.runtime.create_task(self._heartbeat_loop(), name="spotlight heartbeat"),
        ]

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run a fire-and-forget send; failures are logged, never silently lost.

        After ``close`` began nothing new may touch the sockets: the coroutine is dropped.
        """
        if self.closed:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("transport task %s failed: %r", task.get_name(), task.exception())

    # -- encoding helpers ---------------------------------------------------------------

    def _encode(self, header: dict[str, Any], body: Any = None) -> Frames:
        try:
            frames = encode(header, body, zero_copy_threshold=self.config.zero_copy_threshold)
        except CodecError as exc:
            raise BadMessage(f"cannot encode message: {exc}") from None
        size = sum(memoryview(f).nbytes for f in frames)
        if size > self.config.max_message_bytes:
            raise MessageTooLarge(
                f"message of {size} bytes exceeds max_message_bytes={self.config.max_message_bytes}"
            )
        return frames

    def _decode(self, frames: Sequence[Any]) -> Any:
        token = decoding_runtime.set(self.runtime)
        try:
            return decode_body(frames, max_bytes=self.config.max_message_bytes)
        finally:
            decoding_runtime.reset(token)

    # -- the calling side ---------------------------------------------------------------

    def _conn(self, address: str) -> _Conn:
        if self.closed:
            raise ActorStopped("the runtime is shut down")
        conn = self.conns.get(address)
        if conn is not None:
            return conn
        sock = self.ctx.socket(zmq.DEALER)
        self._configure(sock)
        sock.setsockopt(zmq.ROUTING_ID, b"S" + os.urandom(15))
        try:
            self.security.secure_dealer(sock, address)
        except ValueError:
            sock.close(linger=0)
            raise
        sock.connect(address)
        hello = {
            "k": "hello",
            "addr": self.address,
            "w": self.config.credit_window,
            "token": self.config.cluster_token,
        }
        sock.send_multipart(encode(hello), zmq.NOBLOCK)  # first in the pipe, before any call
        conn = _Conn(address, None, asyncio.get_running_loop().time())  # type: ignore[arg-type]
        conn.sock = LoopSocket(sock, lambda frames: self._on_conn_message(conn, frames))
        self.conns[address] = conn
        return conn

    def _credits(self, address: str, actor: str) -> Credits:
        pool = self.credits.get((address, actor))
        if pool is None:
            pool = self.credits[(address, actor)] = Credits(self.config.credit_window)
        return pool

    async def _send(self, conn: _Conn, frames: Frames) -> None:
        if conn.sock.closed:  # peer_lost or close() got there first: never touch the socket
            if self.closed:
                raise ActorStopped("the runtime is shut down")
            raise PeerLost(f"peer {conn.address} lost: its connection is closed")
        if not conn.sock.send_nowait(frames):  # queue full: wait for room, under a deadline
            try:
                async with asyncio.timeout(self.config.send_timeout_s):
                    await conn.sock.send(frames)
            except TimeoutError:
                raise Timeout(
                    f"could not queue a message to {conn.address} within "
                    f"send_timeout_s={self.config.send_timeout_s}"
                ) from None
        self._count_out(frames)

    def _post(self, conn: _Conn, frames: Frames, name: str) -> None:
        """Send a control message (ping, cancel, more) in the background.

        A connection closed before the task runs (the peer was lost, or we are shutting
        down) makes it a no-op: the message has nobody left to inform.
        """
        self.spawn(self._post_now(conn, frames), name=name)

    async def _post_now(self, conn: _Conn, frames: Frames) -> None:
        if conn.sock.closed:
            return
        try:
            await self._send(conn, frames)
        except (PeerLost, ActorStopped):
            return

    # The fast paths below take a free credit and queue the message at once, with no
    # timeout context and no extra coroutine; anything else (no connection yet, no free
    # credit, a full socket queue) returns ``NOT_NOW`` and the caller takes the general
    # path, which waits under a deadline. Same errors, same credits, same cancel rules.

    def tell_nowait(
        self, ref: ActorRef, endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bool:
        """Queue a tell at once if possible; ``False`` means: use :meth:`tell`."""
        header = {"k": "tell", "a": ref.name, "g": ref.generation, "e": endpoint}
        return self._send_nowait(ref, header, args, kwargs)

    def _send_nowait(
        self, ref: ActorRef, header: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bool:
        """The fast path of tell and ask: a free credit and a socket that takes the frames now.

        ``False`` (nothing sent, credit returned) means the caller takes the waiting path.
        """
        conn = self.conns.get(ref.address)
        credits = self.credits.get((ref.address, ref.name))
        if conn is None or credits is None or self.closed or not credits.try_acquire():
            return False
        try:
            frames = self._encode(header, [list(args), kwargs])
            sent = not conn.sock.closed and conn.sock.send_nowait(frames)
        except BaseException:
            credits.release()
            raise
        if not sent:
            credits.release()
            return False
        self._count_out(frames)
        return True

    async def ask_fast(
        self,
        ref: ActorRef,
        endpoint: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deadline: float,
    ) -> Any:
        """An ask whose deadline is a loop timer; ``NOT_NOW`` means: use :meth:`ask`."""
        cid = next(self._ids)
        header = {"k": "ask", "a": ref.name, "g": ref.generation, "e": endpoint, "c": cid}
        if not self._send_nowait(ref, header, args, kwargs):
            return NOT_NOW
        credits = self.credits[(ref.address, ref.name)]  # the fast send just took one of these
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self.pending[cid] = _Pending(ref.address, ref.name, credits, future=fut)
        timer = loop.call_later(deadline, _expire, fut, ref, endpoint, deadline)
        try:
            return await fut
        finally:
            timer.cancel()
            if self.pending.pop(cid, None) is not None:  # not answered: timeout or cancel
                credits.release()
                self._send_cancel(ref.address, cid)
            if fut.done() and not fut.cancelled():
                fut.exception()  # failed while we were not awaiting it: mark it seen

    def _count_out(self, frames: Frames) -> None:
        self.stats["messages_out"] += 1
        self.stats["bytes_out"] += sum(memoryview(f).nbytes for f in frames)

    def _call_header(self, kind: str, ref: ActorRef, endpoint: str) -> dict[str, Any]:
        return {"k": kind, "a": ref.name, "g": ref.generation, "e": endpoint}

    async def tell(
        self, ref: ActorRef, endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Caller adds the deadline; returns once the message is queued in ZeroMQ."""
        frames = self._encode(self._call_header("tell", ref, endpoint), [list(args), kwargs])
        conn = self._conn(ref.address)
        credits = self._credits(ref.address, ref.name)
        await credits.acquire()
        try:
            await self._send(conn, frames)
        except BaseException:
            credits.release()
            raise

    async def ask(
        self, ref: ActorRef, endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Caller adds the deadline; on cancel the remote is told to drop the call."""
        cid = next(self._ids)
        header = self._call_header("ask", ref, endpoint)
        header["c"] = cid
        frames = self._encode(header, [list(args), kwargs])
        conn = self._conn(ref.address)
        credits = self._credits(ref.address, ref.name)
        await credits.acquire()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[cid] = _Pending(ref.address, ref.name, credits, future=fut)
        sent = False
        try:
            await self._send(conn, frames)
            sent = True
            return await fut
        finally:
            if self.pending.pop(cid, None) is not None:  # not answered: timeout or cancel
                credits.release()
                if sent:
                    self._send_cancel(ref.address, cid)
            if fut.done() and not fut.cancelled():
                fut.exception()  # failed while we were not awaiting it: mark it seen

    def _send_cancel(self, address: str, cid: int) -> None:
        conn = self.conns.get(address)
        if conn is not None and not self.closed:
            self._post(conn, encode({"k": "cancel", "c": cid}), name=f"cancel {cid}")

    def open_stream(
        self,
        ref: ActorRef,
        endpoint: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float,
    ) -> StreamCall:
        return _RemoteStream(self, ref, endpoint, args, kwargs, timeout)

    def _on_conn_message(self, conn: _Conn, frames: list[zmq.Frame]) -> None:
        """Reader callback of one DEALER: a reply, stream item, credit or pong."""
        conn.last_recv = conn.sock.loop.time()
        stats = self.stats
        stats["messages_in"] += 1
        stats["bytes_in"] += sum(len(f) for f in frames)
        try:
            self._on_reply(conn, frames)
        except WireVersionError as exc:
            stats["bad_messages"] += 1
            log.error("peer %s: %s", conn.address, exc)
            self.peer_lost(conn.address, str(exc))
        except (CodecError, SpotlightError, ValueError, TypeError, KeyError) as exc:
            stats["bad_messages"] += 1
            log.warning("bad reply from %s dropped: %s", conn.address, exc)

    def _on_reply(self, conn: _Conn, frames: list[zmq.Frame]) -> None:
        header = decode_header(frames[0].buffer)
        kind = header.get("k")
        cid = header.get("c")
        if kind == "pong":
            return
        if kind == "bye":
            self.peer_lost(conn.address, PEER_SHUT_DOWN)
            return
        if kind == "hello_ok":
            conn.ready = True
            self._peer_seen(conn.address)
            return
        if kind == "hello_no":
            self.peer_lost(
                conn.address, str(header.get("m")), HandshakeRejected(str(header.get("m")))
            )
            return
        if kind == "need_hello":
            self.peer_lost(conn.address, "the peer restarted (it no longer knows us)")
            return
        if kind == "credit":
            self._credits(conn.address, str(header["a"])).release(int(header["n"]))
            return
        if not isinstance(cid, int):
            raise BadMessage(f"reply kind {kind!r} without a call id")
        pending = self.pending.get(cid)
        if pending is None:
            return  # late answer to a call we gave up on
        if kind == "reply" and pending.future is not None:
            del self.pending[cid]
            pending.credits.release()
            if not pending.future.done():
                try:
                    pending.future.set_result(self._decode([f.buffer for f in frames[1:]]))
                except CodecError as exc:
                    pending.future.set_exception(BadMessage(f"undecodable reply: {exc}"))
        elif kind == "error":
            del self.pending[cid]
            pending.credits.release()
            self._resolve_error(pending, error_from_header(header))
        elif kind == "item" and pending.queue is not None:
            pending.queue.put_nowait(("item", self._decode([f.buffer for f in frames[1:]])))
        elif kind == "end" and pending.queue is not None:
            del self.pending[cid]
            pending.credits.release()
            pending.queue.put_nowait(("end", None))
        else:
            raise BadMessage(f"unexpected reply kind {kind!r} for call {cid}")

    @staticmethod
    def _resolve_error(pending: _Pending, exc: BaseException) -> None:
        if pending.future is not None and not pending.future.done():
            pending.future.set_exception(exc)
        elif pending.queue is not None:
            pending.queue.put_nowait(("error", exc))

    # -- peers ----------------------------------------------------------------------------

    def _peer_seen(self, address: str) -> None:
        if address not in self.known_peers:
            self.known_peers.add(address)
            self.runtime.emit_peer_event("peer_joined", address, "")

    def peer_lost(self, address: str, reason: str, error: BaseException | None = None) -> None:
        """Forget everything about ``address`` and fail what waits on it."""
        error = error or PeerLost(f"peer {address} lost: {reason}")
        conn = self.conns.pop(address, None)
        if conn is not None:
            conn.sock.close(error)  # its waiting senders get ``error``
        for cid, pending in list(self.pending.items()):
            if pending.address == address:
                del self.pending[cid]
                self._resolve_error(pending, error)
        for key in [k for k in self.credits if k[0] == address]:
            self.credits.pop(key).fail(error)
        for identity, inbound in list(self.inbound.items()):
            if inbound.address == address:
                self._forget_inbound(identity, reason)
        if address in self.known_peers:
            self.known_peers.discard(address)
            self.stats["peers_lost"] += 1
            level = logging.INFO if reason == PEER_SHUT_DOWN else logging.WARNING
            log.log(level, "peer %s lost: %s", address, reason)  # a graceful leave is no alarm
            self.runtime.emit_peer_event("peer_lost", address, reason)

    def _forget_inbound(self, identity: bytes, reason: str) -> None:
        inbound = self.inbound.pop(identity, None)
        if inbound is None:
            return
        for env in list(inbound.calls.values()):
            self.runtime.cancel_envelope(env, f"caller {inbound.address} lost: {reason}")
        for pool in inbound.stream_credits.values():
            pool.fail(PeerLost(f"stream consumer {inbound.address} lost"))

    async def _heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        ping = encode({"k": "ping"})
        last_tick = loop.time()
        while True:
            await asyncio.sleep(cfg.heartbeat_s)
            now = loop.time()
            self._credit_own_stall(now - last_tick - cfg.heartbeat_s, now)
            last_tick = now
            for conn in list(self.conns.values()):
                silent = now - conn.last_recv
                if silent > cfg.liveness_s:
                    hint = "" if conn.ready else self.security.silence_hint(conn.address)
                    self.peer_lost(conn.address, f"no heartbeat for {silent:.2f}s{hint}")
                else:
                    self._post(conn, list(ping), name="ping")
            for identity, inbound in list(self.inbound.items()):
                silent = now - inbound.last_seen
                if silent > cfg.liveness_s:
                    # Only its calls to us die; our own connection to it (if any) is
                    # judged by its own heartbeats, so one-sided silence cannot cascade.
                    self._forget_inbound(identity, f"caller silent for {silent:.2f}s")
                    if inbound.address not in self.conns and not any(
                        i.address == inbound.address for i in self.inbound.values()
                    ):
                        self.peer_lost(inbound.address, f"caller silent for {silent:.2f}s")

    def _credit_own_stall(self, lag: float, now: float) -> None:
        """Do not count the time this event loop could not run as our peers' silence.

        While the loop is stalled (a long call holding the GIL, the process descheduled, a
        swap storm) nothing is read from the sockets, though the peers' messages may sit in
        ZeroMQ's buffers by now; judged on ``last_recv`` alone, every peer would be declared
        lost on the first tick after the stall, and each of them, dropped, registers again:
        phantom preemptions. So the time this heartbeat overslept is credited to every peer.
        Liveness then counts heartbeat *ticks* of silence rather than wall seconds: a dead
        peer is still found after ``missed_heartbeats`` ticks, ``lag`` seconds later.
        """
        if lag <= 0.0:
            return
        for conn in self.conns.values():  # never beyond now: a peer heard since is current
            conn.last_recv = min(now, conn.last_recv + lag)
        for inbound in self.inbound.values():
            inbound.last_seen = min(now, inbound.last_seen + lag)
        stats = self.stats
        stats["loop_lag_max_ms"] = max(stats["loop_lag_max_ms"], round(lag * 1000))
        if lag >= self.config.heartbeat_s:
            stats["loop_stalls"] += 1
            log.warning(
                "event loop stalled %.2f s (heartbeat overslept); peers are not blamed for it",
                lag,
            )

    # -- shutdown -------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop loops, say bye, fail pending calls, close sockets, terminate the context.

        Order matters: every task that may send is finished *before* any socket closes,
        otherwise a heartbeat ping or a late reply runs on a closed socket
        (``ZMQError: Socket operation on non-socket``). ``closed`` is set first, so no
        new background send starts (``spawn`` drops it) and no new connection opens.
        """
        if self.closed:
            return
        self.closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.stop_timeout_s
        await self._cancel_all(self._loops, deadline)  # 1. no more pings
        while self._tasks and loop.time() < deadline:  # 2. in-flight background sends
            await self._cancel_all(list(self._tasks), deadline)
        self._say_bye()  # 3. before failing our calls: peers learn we are gone at once
        error = ActorStopped("the runtime shut down before the answer came")
        for pending in self.pending.values():
            self._resolve_error(pending, error)
        self.pending.clear()
        for pool in self.credits.values():
            pool.fail(error)
        for conn in self.conns.values():
            conn.sock.close(error, linger=BYE_LINGER_MS)
        self.conns.clear()
        self.router.close(error, linger=BYE_LINGER_MS)
        self.security.close()
        self.ctx.destroy(linger=None)  # waits <= BYE_LINGER_MS for queued messages to leave

    def _say_bye(self) -> None:
        bye = encode({"k": "bye"})
        for conn in self.conns.values():
            with contextlib.suppress(zmq.ZMQError):  # full or closed: heartbeats apply
                conn.sock.send_nowait(bye)
        for identity in self.inbound:
            with contextlib.suppress(zmq.ZMQError):  # that caller is gone already
                self.router.send_nowait([identity, *bye])

    @staticmethod
    async def _cancel_all(tasks: list[asyncio.Task[Any]], deadline: float) -> None:
        current = asyncio.current_task()
        tasks = [t for t in tasks if t is not current and not t.done()]
        for task in tasks:
            task.cancel(msg="runtime shutdown")
        if tasks:
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            await asyncio.wait(tasks, timeout=timeout)

    def statistics(self) -> dict[str, Any]:
        now = asyncio.get_running_loop().time() if not self.closed else 0.0
        return {
            **self.stats,
            "peers": sorted(self.known_peers),
            "outgoing": {
                a: {"ready": c.ready, "silent_s": round(now - c.last_recv, 3)}
                for a, c in self.conns.items()
            },
            "incoming": {
                i.address: {
                    "calls_in_flight": len(i.calls),
                    "silent_s": round(now - i.last_seen, 3),
                }
                for i in self.inbound.values()
            },
            "pending_calls": len(self.pending),
            "security": self.security.statistics(),
            "credits": {
                f"{a}/{actor}": {"available": c.available, "window": c.window, "waiting": c.waiting}
                for (a, actor), c in self.credits.items()
            },
        }


class _RemoteStream(StreamCall):
    def __init__(
        self,
        transport: Transport,
        ref: ActorRef,
        endpoint: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float,
    ) -> None:
        super().__init__(ref, endpoint, args, kwargs, timeout)
        self.t = transport
        self.cid = next(transport._ids)
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.unacked = 0

    async def _start(self) -> None:
        t, ref = self.t, self.ref
        header = t._call_header("stream", ref, self.endpoint)
        header.update(c=self.cid, w=t.config.stream_window)
        frames = t._encode(header, [list(self.args), self.kwargs])
        conn = t._conn(ref.address)
        credits = t._credits(ref.address, ref.name)
        await credits.acquire_within(self.timeout, f"{ref}.{self.endpoint}")
        t.pending[self.cid] = _Pending(ref.address, ref.name, credits, queue=self.queue)
        await t._send(conn, frames)

    async def _next(self) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                kind, value = await self.queue.get()
        except TimeoutError:
            raise Timeout(
                f"stream {self.ref}.{self.endpoint}: no item within {self.timeout}s"
            ) from None
        if kind == "end":
            raise StopAsyncIteration
        if kind == "error":
            raise value
        self.unacked += 1
        if self.unacked >= max(1, self.t.config.stream_window // 2):
            conn = self.t.conns.get(self.ref.address)
            if conn is not None:
                frames = encode({"k": "more", "c": self.cid, "n": self.unacked})
                self.t._post(conn, frames, name="stream more")
            self.unacked = 0
        return value

    def _cancel(self, reason: str) -> None:
        pending = self.t.pending.pop(self.cid, None)
        if pending is not None:
            pending.credits.release()
            self.t._send_cancel(self.ref.address, self.cid)
