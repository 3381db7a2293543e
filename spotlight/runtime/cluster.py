"""Cluster bootstrap and membership.

Two ways in:

* **torchrun**: :meth:`ClusterInfo.from_env` reads ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; an :class:`AddressBook` publishes
  and looks up runtime addresses through a ``torch.distributed.TCPStore`` (rank 0
  hosts it), so every rank finds every other without a hard-coded port.
* **explicit coordinator**: a runtime hosts a :class:`Membership` actor; others call
  :func:`join` with its address (``--coordinator tcp://host:port``).

Membership map: members ``register`` (address + labels: node id, role, ``spot`` or
``on-demand``) and keep a connection that heartbeats; the ``Membership`` actor
watches its runtime's ``peer_events`` and drops a member whose runtime goes silent
(or that calls ``leave``). Watchers consume ``watch()``, a stream that first replays
the current members as ``member_joined`` and then follows changes. Nobody is
restarted when a member joins or leaves: membership is information, not control.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from spotlight.runtime.actor import Actor, endpoint
from spotlight.runtime.codec import register_wire_type
from spotlight.runtime.runtime import PeerEvents, Runtime

__all__ = [
    "AddressBook",
    "ClusterInfo",
    "MemberInfo",
    "Membership",
    "MembershipEvent",
    "join",
]

log = logging.getLogger("spotlight.runtime")

_CAPACITIES = ("spot", "on-demand")


@dataclass(frozen=True, kw_only=True)
class ClusterInfo:
    """Where this process sits in a torchrun launch."""

    rank: int
    """Global rank (``RANK``)."""
    world_size: int
    """Number of ranks (``WORLD_SIZE``)."""
    local_rank: int
    """Rank within this node (``LOCAL_RANK``)."""
    master_addr: str
    """Host of rank 0, which hosts the TCPStore (``MASTER_ADDR``)."""
    master_port: int
    """Port of the TCPStore (``MASTER_PORT``)."""

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"WORLD_SIZE={self.world_size} must be >= 1")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"RANK={self.rank} must be in 0..{self.world_size - 1}")
        if self.local_rank < 0:
            raise ValueError(f"LOCAL_RANK={self.local_rank} must be >= 0")
        if not 0 < self.master_port < 65536:
            raise ValueError(f"MASTER_PORT={self.master_port} is not a TCP port (1..65535)")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClusterInfo:
        """Read torchrun's variables; a missing or non-integer one is a ``ValueError``."""
        env = os.environ if env is None else env
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
        missing = [n for n in names if n not in env]
        if missing:
            raise ValueError(
                f"not launched by torchrun: {', '.join(missing)} unset; start with torchrun "
                "or pass an explicit coordinator address"
            )
        ints: dict[str, int] = {}
        for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
            try:
                ints[n] = int(env[n])
            except ValueError:
                raise ValueError(f"{n}={env[n]!r} is not an integer") from None
        return cls(
            rank=ints["RANK"],
            world_size=ints["WORLD_SIZE"],
            local_rank=ints["LOCAL_RANK"],
            master_addr=env["MASTER_ADDR"],
            master_port=ints["MASTER_PORT"],
        )


class AddressBook:
    """Runtime addresses by key, through torchrun's TCPStore (rank 0 hosts it).

    The store calls block, so the async methods run them in a worker thread.
    """

    def __init__(
        self, info: ClusterInfo, *, timeout_s: float = 60.0, prefix: str = "spotlight"
    ) -> None:
        from torch.distributed import TCPStore

        self.prefix = prefix
        self.timeout_s = timeout_s
        self.store = TCPStore(
            info.master_addr,
            info.master_port,
            info.world_size,
            is_master=info.rank == 0,
            timeout=timedelta(seconds=timeout_s),
            wait_for_workers=False,
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/runtime/{key}"

    async def publish(self, key: str, address: str) -> None:
        """Make ``address`` findable under ``key`` (for example the rank)."""
        await asyncio.to_thread(self.store.set, self._key(key), address)

    async def lookup(self, key: str, *, timeout_s: float | None = None) -> str:
        """Wait (at most ``timeout_s``) until ``key`` is published; return its address."""
        wait_s = self.timeout_s if timeout_s is None else timeout_s

        def get() -> str:
            self.store.wait([self._key(key)], timedelta(seconds=wait_s))
            return bytes(self.store.get(self._key(key))).decode()

        return await asyncio.to_thread(get)


@register_wire_type(name="spotlight.MemberInfo")
@dataclass(frozen=True, kw_only=True)
class MemberInfo:
    """A runtime in the cluster and its labels."""

    address: str
    """The member runtime's ``Runtime.address``."""
    node_id: str
    """Machine it runs on (runtimes of one node act together for notices and weights)."""
    role: str
    """What it is for, for example ``trainer`` or ``explorer``."""
    capacity: str = "on-demand"
    """``spot`` (may vanish) or ``on-demand``."""
    labels: dict[str, str] = field(default_factory=dict)
    """Anything else a scheduler wants to filter on."""

    def __post_init__(self) -> None:
        if self.capacity not in _CAPACITIES:
            raise ValueError(f"capacity={self.capacity!r}; valid: {', '.join(_CAPACITIES)}")


@register_wire_type(name="spotlight.MembershipEvent")
@dataclass(frozen=True, kw_only=True)
class MembershipEvent:
    kind: Literal["member_joined", "member_left"]
    member: MemberInfo
    reason: str = ""


class Membership(Actor):
    """The coordinator's list of members; see the module docstring."""

    def __init__(self) -> None:
        self.members: dict[str, MemberInfo] = {}
        self.watchers: list[asyncio.Queue[MembershipEvent]] = []
        self._peers_task: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        events = self.runtime.peer_events()
        self._peers_task = self.runtime.create_task(self._follow(events), name="membership peers")

    async def on_stop(self) -> None:
        if self._peers_task is not None:
            self._peers_task.cancel(msg="membership stopped")

    async def _follow(self, events: PeerEvents) -> None:
        try:
            async for event in events:
                if event.kind == "peer_lost" and event.address in self.members:
                    self._remove(event.address, f"runtime lost: {event.reason}")
        finally:
            await events.aclose()

    def _publish(self, event: MembershipEvent) -> None:
        for queue in self.watchers:
            queue.put_nowait(event)

    def _remove(self, address: str, reason: str) -> None:
        member = self.members.pop(address)
        log.info("member %s (%s, %s) left: %s", address, member.role, member.capacity, reason)
        self._publish(MembershipEvent(kind="member_left", member=member, reason=reason))

    @endpoint
    async def register(self, member: MemberInfo) -> list[MemberInfo]:
        """Add or update a member; returns the current member list."""
        if not isinstance(member, MemberInfo):
            raise TypeError(f"register needs a MemberInfo, got {type(member).__name__}")
        self.members[member.address] = member
        self._publish(MembershipEvent(kind="member_joined", member=member))
        return list(self.members.values())

    @endpoint
    async def leave(self, address: str) -> None:
        """A member leaves on purpose (before a spot notice deadline, for example)."""
        if address in self.members:
            self._remove(address, "left")

    @endpoint
    async def members_list(self) -> list[MemberInfo]:
        return list(self.members.values())

    @endpoint(concurrent=True)
    async def watch(self):
        """Current members as ``member_joined``, then every change, until cancelled."""
        queue: asyncio.Queue[MembershipEvent] = asyncio.Queue()
        self.watchers.append(queue)
        try:
            for member in list(self.members.values()):
                yield MembershipEvent(kind="member_joined", member=member)
            while True:
                yield await queue.get()
        finally:
            self.watchers.remove(queue)


async def join(
    runtime: Runtime,
    coordinator: str,
    *,
    node_id: str,
    role: str,
    capacity: str = "on-demand",
    labels: dict[str, str] | None = None,
    name: str = "membership",
    timeout_s: float | None = None,
) -> list[MemberInfo]:
    """Register ``runtime`` with the ``Membership`` actor at ``coordinator``."""
    member = MemberInfo(
        address=runtime.address, node_id=node_id, role=role, capacity=capacity, labels=labels or {}
    )
    ref = runtime.ref(coordinator, name, cls=Membership)
    members: list[MemberInfo] = await ref.register.ask(member, timeout=timeout_s)
    return members
