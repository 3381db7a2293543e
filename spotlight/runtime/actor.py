"""Actor, ``@endpoint`` and ActorRef: the surface user code sees.

An actor is a class whose ``@endpoint`` async methods are its public surface. It
handles one message at a time, in mailbox order, unless an endpoint is declared
``@endpoint(concurrent=True)``. An async *generator* endpoint is a stream.

Heavy synchronous work (a torch forward pass, a big file read) must not run on the
event loop: it would stall heartbeats and every other actor of the process. Run it
with ``await asyncio.to_thread(fn, ...)`` inside the endpoint.

Error contract (each cell is tested in ``tests/runtime/test_errors.py``):

==============================  ==================================  ===============================
what happens                    the caller sees                     the actor
==============================  ==================================  ===============================
``ask``/``stream`` handler      ``RemoteError(type_name, message,   lives on, next message runs
raises                          traceback_text)``
``tell`` handler raises         nothing (``tell`` already returned)  supervisor: restarted per its
                                                                    ``RestartPolicy`` (generation
                                                                    +1); no parent: logged,
                                                                    counted, lives on
actor stopped / restarted       pending ``ask``/``stream`` fail at  queued messages are failed,
while calls are pending         once with ``ActorStopped``          running handlers cancelled
peer runtime dies               pending ``ask``/``stream`` fail     (remote) its calls from us are
                                with ``PeerLost`` within            cancelled when it notices us
                                ``heartbeat_s*missed_heartbeats``;  gone (at once on our ``bye``)
                                at once (reason "peer shut down")
                                when it shut down gracefully
ref names an old generation     ``StaleGeneration`` (``ask``);      untouched; a stale ``tell`` is
                                ``tell`` is dropped and counted     dropped and counted
caller cancels / times out      ``CancelledError`` / ``Timeout``    queued call dropped, running
an ``ask`` or ``stream``                                            handler cancelled; no state left
unknown actor / endpoint,       ``ActorNotFound``/``EndpointNot-    untouched; the runtime logs one
wrong arguments, bad frames     Found``/``BadMessage``              line and keeps serving
message over the size limit     ``MessageTooLarge``                 untouched
==============================  ==================================  ===============================
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar, overload

from spotlight.runtime.codec import register_extension
from spotlight.runtime.errors import NotAnEndpoint, SpotlightError
from spotlight.runtime.peers import PeerEvents
from spotlight.runtime.supervision import RestartPolicy

__all__ = [
    "Actor",
    "ActorHost",
    "ActorRef",
    "EndpointCaller",
    "EndpointSpec",
    "StreamCall",
    "endpoint",
]

F = TypeVar("F", bound=Callable[..., Any])
A = TypeVar("A", bound="Actor")
T = TypeVar("T")


class ActorHost(Protocol):
    """What actors and refs call on the runtime hosting them (``Runtime`` implements it).

    A protocol, so this module (the bottom of the runtime) never imports ``runtime.py``;
    ``host.Host`` extends it with what the cell and the transport call.
    """

    @property
    def address(self) -> str: ...

    closed: bool

    def create_task(self, coro: Awaitable[T], *, name: str) -> asyncio.Task[T]: ...

    async def spawn(
        self, cls: type[A], /, *args: Any, name: str | None = None, **kwargs: Any
    ) -> ActorRef: ...

    async def spawn_under(
        self,
        parent: Any,
        policy: RestartPolicy | None,
        cls: type[A],
        /,
        *args: Any,
        name: str | None = None,
        **kwargs: Any,
    ) -> ActorRef: ...

    async def lookup(
        self,
        address: str,
        name: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the public API's deadline)
    ) -> ActorRef: ...

    def peer_events(self) -> PeerEvents: ...

    def statistics(self) -> dict[str, Any]: ...

    async def send_tell(
        self,
        ref: ActorRef,
        endpoint: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,  # noqa: ASYNC109 (the public API's deadline)
    ) -> None: ...

    async def send_ask(
        self,
        ref: ActorRef,
        endpoint: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,  # noqa: ASYNC109 (the public API's deadline)
    ) -> Any: ...

    def open_stream(
        self,
        ref: ActorRef,
        endpoint: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> StreamCall: ...


class _Cell(Protocol):
    """What an actor reads of its cell (``cell.ActorCell``)."""

    @property
    def runtime(self) -> ActorHost: ...

    @property
    def name(self) -> str: ...

    @property
    def generation(self) -> int: ...

    def ref(self) -> ActorRef: ...


_ENDPOINT_ATTR = "__spotlight_endpoint__"

# The runtime whose transport is decoding a message right now: refs that arrive inside
# a message bind to it. Outside a decode, refs fall back to the process's runtime.
decoding_runtime: contextvars.ContextVar[ActorHost | None] = contextvars.ContextVar(
    "spotlight_decoding_runtime", default=None
)
_process_runtime: list[ActorHost] = []


def register_process_runtime(runtime: ActorHost, running: bool) -> None:
    """Track running runtimes; unbound refs (made outside any runtime) use the newest."""
    if runtime in _process_runtime:
        _process_runtime.remove(runtime)
    if running:
        _process_runtime.append(runtime)


@dataclass(frozen=True)
class EndpointSpec:
    """What the runtime needs to know about one endpoint."""

    name: str
    concurrent: bool
    streaming: bool
    signature: inspect.Signature
    arity: int | None
    """Positional parameter count when every parameter is plain and required (fast path)."""


@overload
def endpoint(fn: F) -> F: ...
@overload
def endpoint(*, concurrent: bool = False) -> Callable[[F], F]: ...
def endpoint(fn: Any = None, *, concurrent: bool = False) -> Any:
    """Mark an ``async def`` (one reply) or ``async def ... yield`` (stream) as an endpoint.

    ``concurrent=True`` lets calls of this endpoint run while other messages are being
    handled (they no longer wait their turn in the mailbox).
    """

    def mark(func: F) -> F:
        streaming = inspect.isasyncgenfunction(func)
        if not (streaming or inspect.iscoroutinefunction(func)):
            raise TypeError(
                f"@endpoint {func.__qualname__} must be 'async def' (or an async generator "
                "for a stream); run blocking work with asyncio.to_thread inside it"
            )
        sig = inspect.signature(func)
        params = list(sig.parameters.values())[1:]  # without self
        plain = all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params)
        spec = EndpointSpec(
            func.__name__, concurrent, streaming, sig, len(params) if plain else None
        )
        setattr(func, _ENDPOINT_ATTR, spec)
        return func

    return mark(fn) if fn is not None else mark


def endpoints_of(cls: type) -> dict[str, EndpointSpec]:
    """All endpoints of an actor class, inherited ones included."""
    found: dict[str, EndpointSpec] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            spec = getattr(value, _ENDPOINT_ATTR, None)
            if isinstance(spec, EndpointSpec):
                found[name] = spec
            elif name in found:
                del found[name]  # overridden by a non-endpoint
    return found


class Actor:
    """Base class of actors. Subclass it, add ``@endpoint`` methods, spawn with ``Runtime``.

    Inside an actor: ``self.runtime``, ``self.ref`` (fenced to this generation),
    ``self.name``, ``self.generation`` and :meth:`spawn_child`. Never block the loop:
    put heavy synchronous work in ``await asyncio.to_thread(...)``.
    """

    __spotlight_endpoints__: ClassVar[dict[str, EndpointSpec]] = {}
    _cell: _Cell

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__spotlight_endpoints__ = endpoints_of(cls)

    async def on_start(self) -> None:
        """Called once per incarnation before the first message; raising fails the start."""

    async def on_stop(self) -> None:
        """Called when the actor stops (shutdown, failure, explicit stop), under a deadline."""

    @property
    def runtime(self) -> ActorHost:
        return self._cell.runtime

    @property
    def name(self) -> str:
        return self._cell.name

    @property
    def generation(self) -> int:
        return self._cell.generation

    @property
    def ref(self) -> ActorRef:
        return self._cell.ref()

    async def spawn_child(
        self,
        cls: type[A],
        /,
        *args: Any,
        name: str | None = None,
        restart: RestartPolicy | None = None,
        **kwargs: Any,
    ) -> ActorRef:
        """Spawn a supervised child; a ``tell`` failure restarts it per ``restart``.

        The default policy is ``RestartPolicy.on_failure(max_restarts=3, within_s=60.0)``.
        Children stop before their parent.
        """
        policy = restart if restart is not None else RestartPolicy.on_failure()
        return await self._cell.runtime.spawn_under(
            self._cell, policy, cls, *args, name=name, **kwargs
        )


class ActorRef:
    """Address of an actor: ``(runtime address, actor name, generation)``; cheap to copy.

    ``generation=None`` means "whichever incarnation is current"; a number fences the
    ref to that incarnation. Refs travel inside messages (as a codec extension).
    """

    __slots__ = ("_cls", "_runtime", "address", "generation", "name")

    def __init__(
        self,
        address: str,
        name: str,
        generation: int | None = None,
        *,
        cls: type[Actor] | None = None,
        runtime: ActorHost | None = None,
    ) -> None:
        self.address = address
        self.name = name
        self.generation = generation
        self._cls = cls
        self._runtime = runtime

    def __getattr__(self, attr: str) -> EndpointCaller:
        if attr.startswith("__"):
            raise AttributeError(attr)
        cls = self._cls
        if cls is not None and attr not in cls.__spotlight_endpoints__:
            names = ", ".join(sorted(cls.__spotlight_endpoints__)) or "(none)"
            hint = (
                f"{cls.__name__}.{attr} exists but is not an endpoint: decorate it with @endpoint"
                if hasattr(cls, attr)
                else f"{cls.__name__} has no endpoint {attr!r}"
            )
            raise NotAnEndpoint(f"{hint}; its endpoints are: {names}")
        return EndpointCaller(self, attr)

    def _rt(self) -> ActorHost:
        runtime = self._runtime
        if runtime is None or runtime.closed:
            if not _process_runtime:
                raise SpotlightError(f"{self!r} is not bound to a running Runtime")
            runtime = _process_runtime[-1]
        return runtime

    def any_generation(self) -> ActorRef:
        """The same actor, unfenced: messages go to whichever incarnation is current."""
        return ActorRef(self.address, self.name, None, cls=self._cls, runtime=self._runtime)

    def _key(self) -> tuple[str, str, int | None]:
        return (self.address, self.name, self.generation)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        gen = "*" if self.generation is None else self.generation
        return f"ActorRef({self.address}/{self.name}@{gen})"


def _ref_to_wire(ref: ActorRef) -> list[Any]:
    return [ref.address, ref.name, ref.generation]


def _ref_from_wire(value: Any) -> ActorRef:
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not isinstance(value[0], str)
        or not isinstance(value[1], str)
        or not (value[2] is None or isinstance(value[2], int))
    ):
        raise ValueError(f"malformed ActorRef on the wire: {value!r}")
    return ActorRef(value[0], value[1], value[2], runtime=decoding_runtime.get())


register_extension(ActorRef, "spotlight.ActorRef", _ref_to_wire, _ref_from_wire)


class EndpointCaller:
    """``ref.<endpoint>``: choose the delivery with ``tell``, ``ask`` or ``stream``."""

    __slots__ = ("_endpoint", "_ref")

    def __init__(self, ref: ActorRef, endpoint_name: str) -> None:
        self._ref = ref
        self._endpoint = endpoint_name

    async def tell(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> None:  # noqa: ASYNC109
        """Send without a reply; returns once handed to the transport.

        Waits for a send credit (back-pressure), at most ``timeout`` seconds
        (default ``config.tell_timeout_s``), then raises ``Timeout``.
        """
        await self._ref._rt().send_tell(self._ref, self._endpoint, args, kwargs, timeout)

    async def ask(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:  # noqa: ASYNC109
        """Send and await one reply within ``timeout`` (default ``config.ask_timeout_s``)."""
        return await self._ref._rt().send_ask(self._ref, self._endpoint, args, kwargs, timeout)

    def stream(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> StreamCall:
        """Iterate the replies of a generator endpoint; ``timeout`` applies to each item.

        Leaving the loop early (``break``, an exception, cancellation) cancels the
        remote generator. Use ``async with ref.ep.stream(...) as s:`` to make that
        immediate rather than at garbage collection.
        """
        return self._ref._rt().open_stream(self._ref, self._endpoint, args, kwargs, timeout)


class StreamCall(AsyncIterator[Any]):
    """The consumer side of one stream call; an async iterator and context manager.

    Concrete routes (local or remote) implement :meth:`_start`, :meth:`_next` and
    :meth:`_cancel` in the runtime.
    """

    def __init__(
        self,
        ref: ActorRef,
        endpoint: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float,
    ) -> None:
        self.ref = ref
        self.endpoint = endpoint
        self.args = args
        self.kwargs = kwargs
        self.timeout = timeout
        self._started = False
        self._finished = False

    async def _start(self) -> None:
        raise NotImplementedError

    async def _next(self) -> Any:
        raise NotImplementedError

    def _cancel(self, reason: str) -> None:
        raise NotImplementedError

    def __aiter__(self) -> StreamCall:
        return self

    async def __anext__(self) -> Any:
        if self._finished:
            raise StopAsyncIteration
        try:
            if not self._started:
                self._started = True
                await self._start()
            return await self._next()
        except StopAsyncIteration:
            self._finished = True
            raise
        except BaseException:
            self.close("consumer failed or was cancelled")
            raise

    def close(self, reason: str = "consumer closed the stream") -> None:
        """Stop consuming; the producer is told to cancel. Idempotent."""
        if not self._finished:
            self._finished = True
            if self._started:
                self._cancel(reason)

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> StreamCall:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._finished and self._started:
            try:
                self.close("stream dropped without being closed")
            except Exception:  # interpreter or loop shutting down: nothing left to tell
                return
