"""Peer events: a peer runtime joined (first hello either way) or was lost.

The runtime emits them (``Runtime.emit_peer_event``, from the transport's heartbeats) and any
actor follows them with ``self.runtime.peer_events()``; a module of their own so that the
actor API (``actor.py``) can name them without importing the runtime.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

__all__ = ["PeerEvent", "PeerEvents"]


@dataclass(frozen=True)
class PeerEvent:
    """A peer runtime appeared (first hello either way) or was lost."""

    kind: Literal["peer_joined", "peer_lost"]
    address: str
    reason: str = ""


class PeerEvents(AsyncIterator[PeerEvent]):
    """An async iterator of :class:`PeerEvent`; ``aclose()`` unsubscribes."""

    def __init__(self, watchers: list[asyncio.Queue[PeerEvent | None]]) -> None:
        self._watchers = watchers
        self._queue: asyncio.Queue[PeerEvent | None] = asyncio.Queue()
        watchers.append(self._queue)

    def __aiter__(self) -> PeerEvents:
        return self

    async def __anext__(self) -> PeerEvent:
        event = await self._queue.get()
        if event is None:
            await self.aclose()
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        if self._queue in self._watchers:
            self._watchers.remove(self._queue)
