"""Work for an SP group: the request type, the pull interface, a local queue, layout checks.

The group scheduler (``sp_group.py``) pulls :class:`SPRequest` values from a
:class:`WorkSource`, commits the trajectory at every step boundary and completes (or fails) the
request. The lease-based scheduler actor (``scheduler.py``) can sit behind this protocol; the
:class:`LocalWorkSource` queue serves tests, benchmarks and single-group use.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal, Protocol

from spotlight.models.sampler import SamplerConfig, TrajectoryState
from spotlight.models.ulysses import validate_degree

__all__ = ["LocalWorkSource", "SPRequest", "WorkSource", "check_group_config"]


def check_group_config(degree: int, members: int, num_heads: int, num_tokens: int) -> None:
    """Refuse a fixed group layout that cannot work, naming the valid degrees."""
    validate_degree(degree, num_heads, num_tokens)
    if members < degree:
        raise ValueError(
            f"SP degree {degree} needs {degree} members, only {members} given; valid degrees "
            f"for {members} members: "
            + ", ".join(
                str(d) for d in range(1, members + 1) if num_heads % d == 0 and num_tokens % d == 0
            )
        )


@dataclass(kw_only=True)
class SPRequest:
    """One sampling job for the group (a batch of trajectories sharing prompts)."""

    id: str
    prompts: list[str]
    seeds: list[int]
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    mode: Literal["sde", "ode"] = "sde"
    state: TrajectoryState | None = None
    """Resume from this boundary (a lease taken over from another worker); None = start."""
    weights_version: int | None = None
    """Every step must run on members holding this weight version (None: whatever they
    hold); a member holding another refuses the step, so a request never mixes versions."""


class WorkSource(Protocol):
    """Where the group gets work (the scheduler actor of issue 6 adapts to this)."""

    async def pull(self) -> SPRequest: ...
    async def commit(self, request_id: str, state: TrajectoryState) -> None: ...
    async def complete(self, request_id: str, state: TrajectoryState) -> None: ...
    async def fail(self, request_id: str, reason: str) -> None: ...


class LocalWorkSource:
    """An in-process queue (tests, benchmarks, single-group use)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[SPRequest] = asyncio.Queue()
        self._results: dict[str, asyncio.Future[TrajectoryState]] = {}
        self.commits: dict[str, TrajectoryState] = {}
        """The last committed boundary of each request in flight (what a restart resumes)."""

    def submit(self, request: SPRequest) -> asyncio.Future[TrajectoryState]:
        if request.id in self._results:
            raise ValueError(f"request id {request.id!r} already submitted")
        fut: asyncio.Future[TrajectoryState] = asyncio.get_running_loop().create_future()
        self._results[request.id] = fut
        self._queue.put_nowait(request)
        return fut

    async def pull(self) -> SPRequest:
        return await self._queue.get()

    async def commit(self, request_id: str, state: TrajectoryState) -> None:
        self.commits[request_id] = state

    async def complete(self, request_id: str, state: TrajectoryState) -> None:
        self.commits.pop(request_id, None)
        fut = self._results.pop(request_id)
        if not fut.done():
            fut.set_result(state)

    async def fail(self, request_id: str, reason: str) -> None:
        fut = self._results.pop(request_id)
        if not fut.done():
            fut.set_exception(RuntimeError(reason))

    def qsize(self) -> int:
        return self._queue.qsize()
