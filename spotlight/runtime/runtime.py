"""Runtime: one per process; owns the actors, the transport and the runtime's tasks.

Calls to an actor of this runtime skip the sockets (arguments are passed by
reference, not copied); calls to another address go through ``transport.py``.
Both paths use the same credits, deadlines and error contract (see ``actor.py``).

Shutdown order (``shutdown``): refuse new spawns/calls; stop actors (children before
parents, last spawned first), cancelling their handlers with the reason; close the
transport (fails pending calls, closes sockets with linger 0, destroys the context);
cancel the runtime's remaining tasks; end peer-event iterators.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from spotlight.runtime.actor import Actor, ActorRef, StreamCall, endpoint, register_process_runtime
from spotlight.runtime.cell import ActorCell
from spotlight.runtime.config import RuntimeConfig
from spotlight.runtime.envelope import Envelope, Kind
from spotlight.runtime.errors import (
    ActorNotFound,
    ActorStopped,
    SpotlightError,
    StaleGeneration,
    Timeout,
)
from spotlight.runtime.flow import Credits
from spotlight.runtime.peers import PeerEvent, PeerEvents
from spotlight.runtime.supervision import RestartPolicy
from spotlight.runtime.transport import NOT_NOW, Transport

__all__ = ["Runtime"]

log = logging.getLogger("spotlight.runtime")
T = TypeVar("T")
A = TypeVar("A", bound=Actor)


class Runtime:
    """Hosts actors and connects them to other runtimes. Use ``async with Runtime(...)``."""

    def __init__(self, config: RuntimeConfig | None = None) -> None:
        self.config = config or RuntimeConfig()
        self.cells: dict[str, ActorCell] = {}
        self.closed = False
        self._started = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._local_credits: dict[str, Credits] = {}
        self._watchers: list[asyncio.Queue[PeerEvent | None]] = []
        self._names = itertools.count(1)
        self._transport: Transport | None = None

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> Runtime:
        """Bind the ROUTER and start the transport loops (``async with`` does this)."""
        if self._started:
            return self
        self._started = True
        self._transport = Transport(self)
        self._transport.start()
        register_process_runtime(self, running=True)
        log.info("runtime listening on %s", self._transport.address)
        return self

    async def __aenter__(self) -> Runtime:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise SpotlightError("the runtime is not started: use 'async with Runtime(...)'")
        return self._transport

    @property
    def address(self) -> str:
        """``tcp://host:port`` other runtimes dial to reach this one."""
        return self.transport.address

    async def shutdown(self, reason: str = "runtime shutdown") -> None:
        """Stop every actor, fail pending calls, close sockets, cancel tasks. Idempotent."""
        if self.closed or not self._started:
            self.closed = True
            return
        self.closed = True
        for cell in reversed([c for c in self.cells.values() if c.parent is None]):
            await cell.stop(reason)
        self.cells.clear()
        await self.transport.close()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel(msg=reason)
        if tasks:
            await asyncio.wait(tasks, timeout=self.config.stop_timeout_s)
        for pool in self._local_credits.values():
            pool.fail(ActorStopped(reason))
        for queue in self._watchers:
            queue.put_nowait(None)
        register_process_runtime(self, running=False)
        log.info("runtime %s shut down", self.transport.address)

    def create_task(self, coro: Awaitable[T], *, name: str) -> asyncio.Task[T]:
        """A task owned by the runtime: cancelled (with a reason) at shutdown."""
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("runtime task %s failed: %r", task.get_name(), task.exception())

    # -- actors ---------------------------------------------------------------------

    async def spawn(
        self, cls: type[A], /, *args: Any, name: str | None = None, **kwargs: Any
    ) -> ActorRef:
        """Create a top-level actor (no supervisor); returns a ref fenced to generation 1.

        ``cls`` is positional-only so an actor may take a keyword argument of any name but
        ``name`` (which names the actor).
        """
        return await self.spawn_under(None, None, cls, *args, name=name, **kwargs)

    async def spawn_under(
        self,
        parent: ActorCell | None,
        policy: RestartPolicy | None,
        cls: type[A],
        /,
        *args: Any,
        name: str | None = None,
        **kwargs: Any,
    ) -> ActorRef:
        """Create an actor supervised by ``parent`` (used by ``Actor.spawn_child``)."""
        if self.closed or not self._started:
            raise ActorStopped("the runtime is not running")
        if not (isinstance(cls, type) and issubclass(cls, Actor)):
            raise TypeError(f"spawn needs an Actor subclass, got {cls!r}")
        name = name or f"{cls.__name__.lower()}-{next(self._names)}"
        if name.startswith("__"):
            raise ValueError(f"actor name {name!r}: names starting with '__' are the runtime's")
        existing = self.cells.get(name)
        if existing is not None and existing.state != "stopped":
            raise ValueError(f"an actor named {name!r} already runs here; pick another name")
        cell = ActorCell(self, cls, args, kwargs, name, parent, policy)
        self.cells[name] = cell
        try:
            await cell.start()
        except BaseException:
            self.cells.pop(name, None)
            raise
        if parent is not None:
            parent.children.append(cell)
        return cell.ref()

    async def stop_actor(self, name: str, reason: str = "stopped by request") -> None:
        """Stop an actor (and its children); pending calls fail with ``ActorStopped``."""
        cell = self.cells.get(name)
        if cell is None:
            raise ActorNotFound(f"no actor {name!r} at {self.address}")
        await cell.stop(reason)
        self.forget(cell)

    def forget(self, cell: ActorCell) -> None:
        """Remove a stopped cell (and its children) from the registry."""
        for child in cell.children:
            self.forget(child)
        if self.cells.get(cell.name) is cell:
            del self.cells[cell.name]
        if cell.parent is not None and cell in cell.parent.children:
            cell.parent.children.remove(cell)

    def ref(self, address: str, name: str, *, cls: type[Actor] | None = None) -> ActorRef:
        """A ref to ``name`` at ``address`` without a round trip (unfenced).

        Pass ``cls`` to have attribute typos raise ``NotAnEndpoint`` locally.
        """
        if address == self.address and cls is None and name in self.cells:
            cls = self.cells[name].cls
        return ActorRef(address, name, None, cls=cls, runtime=self)

    async def lookup(self, address: str, name: str, *, timeout: float | None = None) -> ActorRef:  # noqa: ASYNC109
        """A ref fenced to the current generation; ``ActorNotFound`` if none by that name."""
        gen = await self.ref(address, "__runtime__").generation_of.ask(name, timeout=timeout)
        if gen is None:
            raise ActorNotFound(f"no actor {name!r} at {address}")
        return ActorRef(address, name, gen, runtime=self)

    def mailbox_depth(self, name: str) -> int:
        cell = self.cells.get(name)
        return len(cell.mailbox) if cell is not None else 0

    def deliver(
        self,
        name: str,
        kind: Kind,
        endpoint: str,
        generation: int | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        sink: Any,
        on_done: Callable[[], None] | None,
    ) -> Envelope:
        """Queue a message for a local actor (raises the typed error the sender gets)."""
        if name == "__runtime__":
            return self._system.deliver(kind, endpoint, generation, args, kwargs, sink, on_done)
        cell = self.cells.get(name)
        if cell is None:
            raise ActorNotFound(f"no actor {name!r} at {self.address}")
        try:
            return cell.deliver(kind, endpoint, generation, args, kwargs, sink, on_done)
        except StaleGeneration:
            if kind == "tell":
                cell.stale_dropped += 1
            raise

    @property
    def _system(self) -> ActorCell:
        cell = self.cells.get("__runtime__")
        if cell is None:
            cell = ActorCell(self, _SystemActor, (), {}, "__runtime__", None, None)
            cell.generation = 1
            cell.state = "running"
            instance = _SystemActor.__new__(_SystemActor)
            instance._cell = cell
            cell.instance = instance
            cell._loop_task = self.create_task(cell._loop(), name="actor __runtime__")
            self.cells["__runtime__"] = cell
        return cell

    def cancel_envelope(self, env: Envelope, reason: str) -> None:
        """The caller of ``env`` gave up (or was lost): drop or cancel its handling."""
        env.cancel(reason)

    # -- calls ----------------------------------------------------------------------

    def _is_local(self, ref: ActorRef) -> bool:
        return ref.address == self.address

    def _credits(self, name: str) -> Credits:
        pool = self._local_credits.get(name)
        if pool is None:
            pool = self._local_credits[name] = Credits(self.config.credit_window)
        return pool

    async def send_tell(
        self,
        ref: ActorRef,
        endpoint: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,  # noqa: ASYNC109 (the public API's deadline)
    ) -> None:
        if not self._is_local(ref) and self.transport.tell_nowait(ref, endpoint, args, kwargs):
            return  # queued at once: no deadline needed
        deadline = timeout if timeout is not None else self.config.tell_timeout_s
        try:
            async with asyncio.timeout(deadline):
                if not self._is_local(ref):
                    await self.transport.tell(ref, endpoint, args, kwargs)
                    return
                credits = self._credits(ref.name)
                await credits.acquire()
        except TimeoutError:
            raise Timeout(f"tell {ref}.{endpoint}: no send credit within {deadline}s") from None
        try:
            self.deliver(
                ref.name, "tell", endpoint, ref.generation, args, kwargs, None, credits.release
            )
        except StaleGeneration as exc:
            credits.release()
            log.warning("tell dropped: %s", exc)
        except BaseException:
            credits.release()
            raise

    async def send_ask(
        self,
        ref: ActorRef,
        endpoint: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,  # noqa: ASYNC109 (the public API's deadline)
    ) -> Any:
        deadline = timeout if timeout is not None else self.config.ask_timeout_s
        if not self._is_local(ref):
            result = await self.transport.ask_fast(ref, endpoint, args, kwargs, deadline)
            if result is not NOT_NOW:
                return result
        try:
            async with asyncio.timeout(deadline):
                if not self._is_local(ref):
                    return await self.transport.ask(ref, endpoint, args, kwargs)
                return await self._local_ask(ref, endpoint, args, kwargs)
        except TimeoutError as exc:
            if isinstance(exc, SpotlightError):
                raise
            raise Timeout(f"ask {ref}.{endpoint} got no reply within {deadline}s") from None

    async def _local_ask(
        self, ref: ActorRef, endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        credits = self._credits(ref.name)
        await credits.acquire()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            env = self.deliver(
                ref.name, "ask", endpoint, ref.generation, args, kwargs, _LocalSink(fut), None
            )
        except BaseException:
            credits.release()
            raise
        try:
            return await fut
        finally:
            credits.release()
            if not fut.done() or fut.cancelled():  # awaiting it cancels it on our cancel
                self.cancel_envelope(env, "the caller gave up (cancelled or timed out)")

    def open_stream(
        self,
        ref: ActorRef,
        endpoint: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> StreamCall:
        per_item = timeout if timeout is not None else self.config.ask_timeout_s
        if not self._is_local(ref):
            return self.transport.open_stream(ref, endpoint, args, kwargs, per_item)
        return _LocalStream(self, ref, endpoint, args, kwargs, per_item)

    # -- peers and statistics -------------------------------------------------------

    def emit_peer_event(
        self, kind: Literal["peer_joined", "peer_lost"], address: str, reason: str
    ) -> None:
        event = PeerEvent(kind, address, reason)
        for queue in self._watchers:
            queue.put_nowait(event)

    def peer_events(self) -> PeerEvents:
        """Peers joining and leaving from this call on; ends when the runtime shuts down.

        Registration happens here, not at the first ``anext``, so no event between the
        call and the first read is missed.
        """
        return PeerEvents(self._watchers)

    def statistics(self) -> dict[str, Any]:
        """Everything a live view shows: peers, actors, queues, credits, calls, counters."""
        actors = [c.statistics() for n, c in self.cells.items() if n != "__runtime__"]
        transport = self.transport.statistics()
        return {
            "address": self.address,
            "closed": self.closed,
            "actors": actors,
            "queued_messages": sum(a["mailbox"] for a in actors),
            "restarts": sum(a["restarts"] for a in actors),
            "local_credits": {
                name: {"available": c.available, "window": c.window, "waiting": c.waiting}
                for name, c in self._local_credits.items()
            },
            "tasks": len(self._tasks),
            **transport,
        }


class _SystemActor(Actor):
    """Endpoints every runtime answers (name ``__runtime__``)."""

    @endpoint
    async def generation_of(self, name: str) -> int | None:
        runtime = self.runtime
        assert isinstance(runtime, Runtime)  # the system actor only ever runs on a Runtime
        cell = runtime.cells.get(name)
        if cell is None or name == "__runtime__" or cell.state == "stopped":
            return None
        return cell.generation


class _LocalSink:
    def __init__(self, fut: asyncio.Future[Any]) -> None:
        self.fut = fut

    async def reply(self, value: Any) -> None:
        if not self.fut.done():
            self.fut.set_result(value)

    async def item(self, value: Any) -> None:
        raise AssertionError("item() on an ask")

    async def end(self) -> None:
        raise AssertionError("end() on an ask")

    def fail(self, exc: BaseException) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)


class _LocalStreamSink:
    def __init__(self, window: int) -> None:
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.credits = Credits(window)
        self.closed = False

    async def reply(self, value: Any) -> None:
        raise AssertionError("reply() on a stream")

    async def item(self, value: Any) -> None:
        await self.credits.acquire()
        self.queue.put_nowait(("item", value))

    async def end(self) -> None:
        self.closed = True
        self.queue.put_nowait(("end", None))

    def fail(self, exc: BaseException) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(("error", exc))


class _LocalStream(StreamCall):
    def __init__(
        self,
        runtime: Runtime,
        ref: ActorRef,
        endpoint: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float,
    ) -> None:
        super().__init__(ref, endpoint, args, kwargs, timeout)
        self.rt = runtime
        self.sink = _LocalStreamSink(runtime.config.stream_window)
        self.env: Envelope | None = None
        self.credits = runtime._credits(ref.name)
        self.holding = False

    async def _start(self) -> None:
        await self.credits.acquire_within(self.timeout, f"{self.ref}.{self.endpoint}")
        self.holding = True
        try:
            self.env = self.rt.deliver(
                self.ref.name, "stream", self.endpoint, self.ref.generation,
                self.args, self.kwargs, self.sink, None,
            )  # fmt: skip
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self.holding:
            self.holding = False
            self.credits.release()

    async def _next(self) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                kind, value = await self.sink.queue.get()
        except TimeoutError:
            raise Timeout(
                f"stream {self.ref}.{self.endpoint}: no item within {self.timeout}s"
            ) from None
        if kind == "item":
            self.sink.credits.release()
            return value
        self._release()
        if kind == "end":
            raise StopAsyncIteration
        raise value

    def _cancel(self, reason: str) -> None:
        self._release()
        if self.env is not None:
            self.rt.cancel_envelope(self.env, reason)
