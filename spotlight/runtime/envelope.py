"""One message in an actor's mailbox (:class:`Envelope`) and where its outcome goes (:class:`Sink`).

Shared by the cell (which runs it), the runtime (which queues local calls) and the serving
side of the transport (which queues remote ones); below all three, so none imports another
for it.
"""

from __future__ import annotations

import asyncio
import builtins
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from spotlight.runtime.errors import RemoteError

__all__ = ["Envelope", "InlineCell", "Kind", "Sink", "remote_error"]

Kind = Literal["tell", "ask", "stream"]


class InlineCell(Protocol):
    """What an envelope needs of the cell running it inline (``ActorCell``)."""

    inline_cancel: Envelope | None


class Sink(Protocol):
    """Where a handler's outcome goes: a local future/queue or a remote reply."""

    async def reply(self, value: Any) -> None: ...
    async def item(self, value: Any) -> None: ...
    async def end(self) -> None: ...
    def fail(self, exc: BaseException) -> None: ...


@dataclass(eq=False)
class Envelope:
    """One message in a mailbox."""

    kind: Kind
    endpoint: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    sink: Sink | None
    on_done: Callable[[], None] | None = None
    cancelled: bool = False
    stop_error: BaseException | None = None
    task: asyncio.Task[Any] | None = None
    finished: bool = field(default=False)
    inline_cell: InlineCell | None = None
    """Set when the handler runs inside its actor's loop task (non-concurrent endpoints)."""

    def cancel(self, reason: str) -> None:
        """The caller gave up: a queued message is skipped, a running handler cancelled."""
        self.cancelled = True
        if self.task is None or self.task.done() or self.finished:
            return
        if self.inline_cell is not None:
            self.inline_cell.inline_cancel = self  # cancel this message, not the actor
        self.task.cancel(msg=reason)

    def finish(self) -> None:
        """Release what the sender holds for this message (its credit); idempotent."""
        if not self.finished:
            self.finished = True
            if self.on_done is not None:
                self.on_done()


def remote_error(exc: BaseException) -> RemoteError:
    """Describe a handler's exception as text: type name, message, traceback."""
    cls = type(exc)
    name = cls.__qualname__
    if cls.__module__ != "builtins" or getattr(builtins, name, None) is not cls:
        name = f"{cls.__module__}.{name}"
    text = "".join(traceback.format_exception(exc))
    return RemoteError(name, str(exc), text)
