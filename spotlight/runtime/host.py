"""What the runtime's own parts call on it: the cell, the serving side and the transport.

``Runtime`` owns those three and they call back into it; typing them against this protocol
instead of ``Runtime`` keeps the imports one way (actor, envelope -> host -> cell, serving,
transport -> runtime -> signals) with no circle, not even under ``TYPE_CHECKING``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

from spotlight.runtime.actor import ActorHost
from spotlight.runtime.config import RuntimeConfig
from spotlight.runtime.envelope import Envelope, Kind

__all__ = ["Host"]


class Host(ActorHost, Protocol):
    """:class:`~spotlight.runtime.actor.ActorHost` plus the calls of the runtime's parts."""

    config: RuntimeConfig

    def forget(self, cell: Any) -> None:
        """Drop a stopped child ``ActorCell`` (the cell's supervision)."""
        ...

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
        """Queue a message for a local actor (the serving side)."""
        ...

    def cancel_envelope(self, env: Envelope, reason: str) -> None:
        """The caller of ``env`` gave up or was lost (serving side, transport)."""
        ...

    def emit_peer_event(
        self, kind: Literal["peer_joined", "peer_lost"], address: str, reason: str
    ) -> None:
        """A peer joined or was lost (the transport's heartbeats)."""
        ...
