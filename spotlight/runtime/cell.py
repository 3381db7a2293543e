"""ActorCell: one actor's mailbox, its message loop, and its supervision state.

Map of the loops of one cell:

* ``_loop`` (one task per incarnation) waits on the mailbox event, pops envelopes in
  order and runs each in its own handler task; it waits for a non-concurrent handler to
  finish before popping the next, and does not wait for concurrent ones.
* a handler task (``_invoke``) runs the endpoint and hands its result, its stream items
  or its error to the envelope's *sink* (a local future/queue or a remote reply).
* ``_supervise`` (a runtime task, only after a ``tell`` failed under a parent) halts the
  incarnation and starts the next one with ``generation + 1``, per the restart policy.

Who unblocks whom: ``deliver`` sets the mailbox event; a caller's cancel marks the
envelope cancelled and cancels its handler task; ``stop``/``_halt`` cancel the loop and
every handler with the stop reason and fail queued envelopes with ``ActorStopped``.
Back-pressure is not applied here: callers hold a send credit per message, released by
``Envelope.finish`` (see ``Runtime`` and ``transport.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from spotlight.runtime.actor import Actor, ActorRef, EndpointSpec
from spotlight.runtime.envelope import Envelope, Kind, Sink, remote_error
from spotlight.runtime.errors import (
    ActorStopped,
    BadMessage,
    EndpointNotFound,
    StaleGeneration,
)
from spotlight.runtime.host import Host
from spotlight.runtime.supervision import RestartPolicy, RestartTracker

__all__ = ["ActorCell"]

log = logging.getLogger("spotlight.runtime")


class ActorCell:
    """Runtime-side record of one named actor across its incarnations."""

    def __init__(
        self,
        runtime: Host,
        cls: type[Actor],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str,
        parent: ActorCell | None,
        policy: RestartPolicy | None,
    ) -> None:
        self.runtime = runtime
        self.cls = cls
        self.args = args
        self.kwargs = kwargs
        self.name = name
        self.parent = parent
        self.tracker = RestartTracker(policy) if policy is not None else None
        self.children: list[ActorCell] = []
        self.generation = 0
        self.state: Literal["new", "running", "restarting", "stopped"] = "new"
        self.instance: Actor | None = None
        self.mailbox: deque[Envelope] = deque()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[Envelope] = set()
        self.inline_cancel: Envelope | None = None
        # statistics
        self.processed = 0
        self.handler_errors = 0
        self.tell_failures = 0
        self.stale_dropped = 0

    # -- lifecycle ------------------------------------------------------------------

    def ref(self) -> ActorRef:
        return ActorRef(
            self.runtime.address, self.name, self.generation, cls=self.cls, runtime=self.runtime
        )

    async def start(self) -> None:
        """Build the next incarnation (generation + 1), run ``on_start``, start the loop."""
        self.generation += 1
        instance = self.cls.__new__(self.cls)
        instance._cell = self
        instance.__init__(*self.args, **self.kwargs)  # type: ignore[misc]
        self.instance = instance
        await instance.on_start()
        self.state = "running"
        self._loop_task = self.runtime.create_task(
            self._loop(), name=f"actor {self.name}@{self.generation}"
        )

    async def stop(self, reason: str) -> None:
        """Stop children (last spawned first), then this actor; fail what is pending."""
        for child in reversed(self.children):
            await child.stop(reason)
        self.children.clear()
        if self.state == "stopped":
            return
        self.state = "stopped"
        self._fail_queued(ActorStopped(f"actor {self.name!r} stopped: {reason}"))
        await self._halt(reason)

    def _fail_queued(self, error: BaseException) -> None:
        while self.mailbox:
            env = self.mailbox.popleft()
            if env.sink is not None and not env.cancelled:
                env.sink.fail(error)
            env.finish()

    async def _halt(self, reason: str) -> None:
        """Cancel the loop and every running handler (with ``reason``), then ``on_stop``."""
        error = ActorStopped(f"actor {self.name!r} stopped: {reason}")
        tasks: list[asyncio.Task[Any]] = []
        current = asyncio.current_task()
        for env in list(self._running):
            # Fail the caller here too: a handler task cancelled before its first step
            # never reaches its own except clause. Sinks and finish() are idempotent.
            env.stop_error = error
            if env.sink is not None and not env.cancelled:
                env.sink.fail(error)
            env.finish()
            if env.task is not None and env.task is not current:  # stop() from a handler
                env.task.cancel(msg=reason)
                tasks.append(env.task)
        if self._loop_task is not None and self._loop_task is not asyncio.current_task():
            self._loop_task.cancel(msg=reason)
            tasks.append(self._loop_task)
        timeout = self.runtime.config.stop_timeout_s
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        if self.instance is not None:
            try:
                await asyncio.wait_for(self.instance.on_stop(), timeout)
            except Exception as exc:
                log.warning("actor %s: on_stop failed: %r", self.name, exc)
            self.instance = None

    # -- delivery -------------------------------------------------------------------

    def check(self, kind: Kind, endpoint: str, generation: int | None) -> EndpointSpec:
        """Validate a message for this actor; raise the typed error the sender gets."""
        if self.state == "stopped":
            raise ActorStopped(f"actor {self.name!r} is stopped")
        if generation is not None and (generation != self.generation or self.state == "restarting"):
            raise StaleGeneration(
                f"actor {self.name!r} is at generation {self.generation}"
                f"{' (restarting)' if self.state == 'restarting' else ''}; the message was "
                f"for generation {generation}: re-resolve the ref (lookup or any_generation())"
            )
        spec = self.cls.__spotlight_endpoints__.get(endpoint)
        if spec is None:
            names = ", ".join(sorted(self.cls.__spotlight_endpoints__)) or "(none)"
            raise EndpointNotFound(
                f"actor {self.name!r} ({self.cls.__name__}) has no endpoint {endpoint!r}; "
                f"its endpoints are: {names}"
            )
        if spec.streaming and kind != "stream":
            raise BadMessage(f"{self.cls.__name__}.{endpoint} is a stream: call .stream(...)")
        if kind == "stream" and not spec.streaming:
            raise BadMessage(f"{self.cls.__name__}.{endpoint} is not a stream: use .ask/.tell")
        return spec

    def deliver(
        self,
        kind: Kind,
        endpoint: str,
        generation: int | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        sink: Sink | None,
        on_done: Callable[[], None] | None,
    ) -> Envelope:
        """Queue one message; raises (and queues nothing) when the message is invalid."""
        spec = self.check(kind, endpoint, generation)
        try:
            if kwargs or spec.arity != len(args):
                spec.signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise BadMessage(
                f"wrong arguments for {self.cls.__name__}.{endpoint}{spec.signature}: {exc}"
            ) from None
        env = Envelope(kind, endpoint, args, kwargs, sink, on_done)
        self.mailbox.append(env)
        self._wake.set()
        return env

    # -- the loop -------------------------------------------------------------------

    async def _loop(self) -> None:
        while self.state == "running":
            if not self.mailbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            env = self.mailbox.popleft()
            if env.cancelled:
                env.finish()
                continue
            spec = self.cls.__spotlight_endpoints__[env.endpoint]
            self._running.add(env)
            if spec.concurrent:
                env.task = self.runtime.create_task(
                    self._invoke(env, spec), name=f"{self.name}.{env.endpoint}"
                )
                continue
            # One message at a time: run the handler inside this loop task (no task
            # per message). A caller's cancel of this one message cancels the loop
            # task through ``inline_cancel``, and the loop carries on with the next.
            env.task = asyncio.current_task()
            env.inline_cell = self
            try:
                await self._invoke(env, spec)
            except asyncio.CancelledError:
                if self.inline_cancel is not env or self.state != "running":
                    raise
                self._uncancel_inline()
                continue
            if self.inline_cancel is env:  # the handler swallowed the cancel
                self._uncancel_inline()

    def _uncancel_inline(self) -> None:
        self.inline_cancel = None
        task = asyncio.current_task()
        assert task is not None, "actor loop runs in a task"
        task.uncancel()

    async def _invoke(self, env: Envelope, spec: EndpointSpec) -> None:
        try:
            instance = self.instance
            if instance is None:  # halted between queueing and starting
                raise asyncio.CancelledError("actor halted")
            method = getattr(instance, env.endpoint)
            if spec.streaming:
                agen = method(*env.args, **env.kwargs)
                try:
                    async for value in agen:
                        assert env.sink is not None
                        await env.sink.item(value)
                finally:
                    await agen.aclose()
                assert env.sink is not None
                await env.sink.end()
            else:
                result = await method(*env.args, **env.kwargs)
                if env.kind == "ask":
                    assert env.sink is not None
                    await env.sink.reply(result)
            self.processed += 1
        except asyncio.CancelledError:
            if not env.cancelled and env.sink is not None:
                env.sink.fail(env.stop_error or ActorStopped(f"actor {self.name!r} stopped"))
            raise
        except Exception as exc:
            self.handler_errors += 1
            if env.kind == "tell":
                self._tell_failed(env, exc)
            elif env.sink is not None:
                env.sink.fail(remote_error(exc))
        finally:
            self._running.discard(env)
            env.finish()

    # -- supervision ----------------------------------------------------------------

    def _tell_failed(self, env: Envelope, exc: Exception) -> None:
        self.tell_failures += 1
        if self.parent is None or self.tracker is None:
            log.error(
                "actor %s: tell %s raised %s: %s (no supervisor; the actor keeps running)",
                self.name,
                env.endpoint,
                type(exc).__name__,
                exc,
            )
            return
        if self.state != "running":
            return
        log.warning(
            "actor %s@%d: tell %s raised %s: %s; its supervisor %s decides",
            self.name,
            self.generation,
            env.endpoint,
            type(exc).__name__,
            exc,
            self.parent.name,
        )
        self.state = "restarting"
        reason = f"generation {self.generation} failed: {type(exc).__name__}: {exc}"
        self._fail_queued(ActorStopped(f"actor {self.name!r} {reason}"))
        self.runtime.create_task(self._supervise(reason), name=f"supervise {self.name}")

    async def _supervise(self, reason: str) -> None:
        for child in reversed(self.children):
            await child.stop(f"parent restarting: {reason}")
            self.runtime.forget(child)
        self.children.clear()
        await self._halt(reason)
        assert self.tracker is not None
        loop = asyncio.get_running_loop()
        while self.state == "restarting":
            if not self.tracker.allow(loop.time()):
                self.state = "stopped"
                self._fail_queued(ActorStopped(f"actor {self.name!r} stopped: {reason}"))
                log.error(
                    "actor %s: restart budget of %s exhausted; it stays stopped",
                    self.name,
                    self.tracker.policy,
                )
                return
            try:
                await self.start()
                log.info("actor %s restarted as generation %d", self.name, self.generation)
            except Exception as exc:
                self.tell_failures += 1
                reason = f"on_start of generation {self.generation} raised {exc!r}"
                log.warning("actor %s: %s", self.name, reason)
                self.instance = None

    def statistics(self) -> dict[str, Any]:
        tracker = self.tracker
        return {
            "name": self.name,
            "class": self.cls.__name__,
            "generation": self.generation,
            "state": self.state,
            "parent": self.parent.name if self.parent is not None else None,
            "mailbox": len(self.mailbox),
            "running": len(self._running),
            "processed": self.processed,
            "handler_errors": self.handler_errors,
            "tell_failures": self.tell_failures,
            "restarts": tracker.total_restarts if tracker is not None else 0,
            "stale_dropped": self.stale_dropped,
        }
