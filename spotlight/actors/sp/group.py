"""Elastic SP group: a persistent scheduler that drives members step by step and re-forms.

Map (one scheduler per SP group, on the coordinator's runtime; one ``SPMember`` per process)::

    WorkSource --pull--> SPGroupScheduler._drive --step(epoch, boundary)--> SPMember x degree
        ^                    |   keeps the latent of the last step boundary    | Ulysses
        +--commit/complete---+                                                 v collectives
                             |--form(epoch, rank, size)--> chosen members  (store prefix
                             |--stand_by(epoch)---------> spares / leavers   sp/<group>/<epoch>)
                             |--ping (probe)------------> members when a step/form stalls
    joiners --join()--> fetch_weights from a donor (same node: /dev/shm; else runtime stream)
    notices --notice()-> member leaves at the next step boundary
    runtime.peer_events() --peer_lost--> member marked gone

Who waits on what:

- ``_drive`` (one task) waits on ``WorkSource.pull`` for work, then on the step asks of the
  current epoch. It never waits on a dead member: it returns as soon as rank 0 answered (all
  ranks compute the same boundary) or any member failed, and while waiting it probes the
  members still pending every ``probe_interval_s``. A failed or stalled step marks members
  that miss the probe ``suspect`` and the step is redone in a new epoch from the kept latent.
- ``_reform`` waits on ``form`` asks with the same fail-fast/probe rule; a member dying while
  the group forms just starts the next epoch (never a hang: each rendezvous and collective is
  bounded by ``collective_timeout_s`` in the member, each ask by its deadline here).
- ``join`` (concurrent) waits on the joiner's weight copy while the group keeps serving; the
  joiner is taken in at the next step boundary when the degree can grow.
- A suspect whose late ping arrives becomes a spare again (a busy box is not a dead member).

Degree: the largest valid one for the live members (divides the heads and the image
tokens, at most ``max_degree``); members beyond it are spares that wait for the next re-form.

Shutdown order: stop pulling (cancel ``_drive``; a request in flight stays uncommitted past
its last boundary, so its lease resumes elsewhere), tell every member ``stand_by`` (groups
aborted), then the member processes may exit.
"""

from __future__ import annotations

import asyncio
import logging
import statistics as stats
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from spotlight.actors.sp.work import (
    LocalWorkSource,
    SPRequest,
    WorkSource,
    check_group_config,
)
from spotlight.models.sampler import SamplerConfig, TrajectoryState
from spotlight.models.ulysses import largest_valid_degree
from spotlight.runtime import Actor, ActorRef, endpoint

__all__ = [
    "LocalWorkSource",
    "SPGroupConfig",
    "SPGroupScheduler",
    "SPRequest",
    "WorkSource",
    "check_group_config",
]

log = logging.getLogger("spotlight.sp_group")
Status = Literal["spare", "active", "suspect", "leaving", "gone"]


@dataclass(frozen=True, kw_only=True)
class SPGroupConfig:
    """The group's knobs, timing included (tests shrink them)."""

    name: str = "sp0"
    """Group name; store prefixes are ``sp/<name>.<incarnation>/<epoch>``."""
    max_degree: int = 64
    """Cap on the SP degree (members beyond the chosen degree are spares)."""
    collective_timeout_s: float = 10.0
    """Bounds each rendezvous and collective inside the members."""
    probe_interval_s: float = 0.5
    """While a step/form is pending, probe the pending members this often."""
    probe_timeout_s: float = 0.2
    """A member that does not answer a ping within this is suspect (excluded for now)."""
    suspect_timeout_s: float = 5.0
    """A suspect silent this long (or lost by heartbeat) is gone."""
    step_timeout_s: float = 60.0
    """Deadline of one step ask (a slow step is probed long before this)."""
    max_attempts: int = 5
    """Consecutive failed attempts of a step with no member lost before the request fails."""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be non-empty without '/', got {self.name!r}")
        if self.max_degree < 1:
            raise ValueError(f"max_degree must be >= 1, got {self.max_degree}")
        for k in (
            "collective_timeout_s",
            "probe_interval_s",
            "probe_timeout_s",
            "suspect_timeout_s",
            "step_timeout_s",
        ):
            if not getattr(self, k) > 0:
                raise ValueError(f"{k} must be > 0 seconds, got {getattr(self, k)}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")


@dataclass(eq=False)
class _Member:
    key: str
    ref: ActorRef
    node: str
    order: int
    status: Status = "spare"
    weights_ready: bool = True
    rank: int = -1
    """Rank in the current epoch (valid while ``status == "active"``)."""


class _StepFailed(Exception):
    pass


class SPGroupScheduler(Actor):
    """Persistent scheduler of one SP group: pulls work, drives steps, re-forms on change."""

    def __init__(self, config: SPGroupConfig | None = None, source: WorkSource | None = None):
        self.config = config or SPGroupConfig()
        self._local = source is None
        self.source: WorkSource = source if source is not None else LocalWorkSource()
        self.group_id = f"{self.config.name}.{uuid.uuid4().hex[:8]}"
        self._members: dict[str, _Member] = {}
        self._orders = 0
        self._epoch = -1
        self._degree = 0
        self._model: dict[str, int] | None = None
        self._changed = asyncio.Event()
        self._drive_task: asyncio.Task[None] | None = None
        self._peer_task: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self.reform_s: deque[float] = deque(maxlen=1000)
        self.timeline: deque[tuple[float, str, dict[str, Any]]] = deque(maxlen=2000)
        self.counts = {
            "reforms": 0,
            "steps": 0,
            "step_failures": 0,
            "requests": 0,
            "failed_requests": 0,
            "joins": 0,
            "notices": 0,
            "lost": 0,
        }
        self._phase = "idle"
        self._current: tuple[str, int] | None = None
        self._last_copy: dict[str, Any] | None = None
        self._pending_reason = "initial"

    # -- lifecycle -------------------------------------------------------------------

    async def on_start(self) -> None:
        self._drive_task = asyncio.create_task(self._drive(), name=f"sp-drive-{self.group_id}")
        self._peer_task = asyncio.create_task(self._watch_peers(), name="sp-peers")

    async def on_stop(self) -> None:
        for t in (self._drive_task, self._peer_task, *self._bg):
            if t is not None:
                t.cancel("SP group scheduler stopped")
        live = [m for m in self._members.values() if m.status != "gone"]
        await self._quiet_all(
            [
                m.ref.stand_by.ask(
                    self.group_id, self._epoch + 1, timeout=self.config.probe_interval_s
                )
                for m in live
            ]
        )

    async def _watch_peers(self) -> None:
        async for ev in self.runtime.peer_events():
            if ev.kind != "peer_lost":
                continue
            for m in self._members.values():
                if m.ref.address == ev.address and m.status not in ("gone", "suspect"):
                    # Suspect, not gone: a stalled (overloaded) process may still answer.
                    self._mark(m, "suspect", f"peer lost: {ev.reason}")
                    ping = asyncio.ensure_future(
                        m.ref.ping.ask(timeout=self.config.suspect_timeout_s)
                    )
                    self._spawn_bg(self._settle_suspect(m, ping))

    # -- endpoints -------------------------------------------------------------------

    @endpoint(concurrent=True)
    async def join(self, member: ActorRef, copy_weights: bool = False) -> dict[str, Any]:
        """Add a member; with ``copy_weights`` it first copies weights from a live peer
        (same node: shared memory; otherwise streamed over the runtime). It is taken into
        the group at the next step boundary where the degree can grow."""
        t0 = time.perf_counter()
        desc = await member.describe.ask(timeout=self.config.step_timeout_s)
        model = {k: int(desc[k]) for k in ("num_heads", "num_tokens", "token_dim")}
        if self._model is None:
            self._model = model
        elif model != self._model:
            raise ValueError(f"member model {model} differs from the group's {self._model}")
        key = f"{member.address}/{member.name}"
        if key in self._members and self._members[key].status != "gone":
            raise ValueError(f"member {key} is already in the group")
        m = _Member(key=key, ref=member, node=str(desc["node"]), order=self._orders)
        self._orders += 1
        copy: dict[str, Any] | None = None
        if copy_weights:
            m.weights_ready = False
            self._members[key] = m
            donors = [x for x in self._members.values() if x.weights_ready and x.status != "gone"]
            if not donors:
                raise ValueError("no live member holds the weights to copy from")
            same = [x for x in donors if x.node == m.node]
            donor = (same or donors)[0]
            try:
                copy = await member.fetch_weights.ask(
                    donor.ref, bool(same), timeout=self.config.step_timeout_s
                )
            except BaseException:
                del self._members[key]
                raise
            m.weights_ready = True
            self._last_copy = copy
        self._members[key] = m
        self.counts["joins"] += 1
        self._event("join", member=key, node=m.node, copy=copy)
        self._changed.set()
        return {"key": key, "copy": copy, "join_s": time.perf_counter() - t0}

    @endpoint(concurrent=True)
    async def notice(self, member: ActorRef) -> None:
        """``member`` will go away soon: it leaves at the next step boundary."""
        m = self._members.get(f"{member.address}/{member.name}")
        if m is None:
            raise ValueError(f"{member} is not a member of group {self.group_id}")
        self.counts["notices"] += 1
        if m.status == "spare":  # not in the group: release it now
            self._mark(m, "gone", "notice")
            await m.ref.stand_by.ask(
                self.group_id, self._epoch, timeout=self.config.probe_timeout_s
            )
            return
        self._mark(m, "leaving", "notice")

    @endpoint(concurrent=True)
    async def set_max_degree(self, max_degree: int) -> int:
        """Cap (or uncap) the degree from the next step boundary; returns the cap."""
        if max_degree < 1:
            raise ValueError(f"max_degree must be >= 1, got {max_degree}")
        self.config = _replace(self.config, max_degree=max_degree)
        self._changed.set()
        return max_degree

    @endpoint(concurrent=True)
    async def sample(
        self,
        prompts: list[str],
        seeds: list[int],
        sampler: dict[str, Any] | None = None,
        mode: Literal["sde", "ode"] = "sde",
    ) -> dict[str, Any]:
        """Run one request through the local queue and return its final boundary."""
        if not isinstance(self.source, LocalWorkSource):
            raise ValueError("sample() needs the built-in LocalWorkSource; this group pulls work")
        fields = dict(sampler or {})
        if fields.get("sde_window") is not None:
            fields["sde_window"] = tuple(fields["sde_window"])  # lists on the wire
        cfg = SamplerConfig(**fields)
        req = SPRequest(id=uuid.uuid4().hex, prompts=prompts, seeds=seeds, sampler=cfg, mode=mode)
        state = await self.source.submit(req)
        return state.to_dict()

    @endpoint(concurrent=True)
    async def statistics(self) -> dict[str, Any]:
        """Monitor metrics: epoch, degree, members by status, re-forms and their durations."""
        by_status: dict[str, int] = {}
        for m in self._members.values():
            by_status[m.status] = by_status.get(m.status, 0) + 1
        r = list(self.reform_s)
        return {
            "group": self.group_id,
            "epoch": self._epoch,
            "degree": self._degree,
            "members": by_status,
            "phase": self._phase,
            "request": None if self._current is None else list(self._current),
            **self.counts,
            "reform_last_s": r[-1] if r else None,
            "reform_p50_s": stats.median(r) if r else None,
            "reform_max_s": max(r) if r else None,
            "last_copy": self._last_copy,
            "config": asdict(self.config),
        }

    @endpoint(concurrent=True)
    async def events(self, since: float = 0.0) -> list[list[Any]]:
        """The timeline ``[wall_time, kind, details]`` after ``since`` (benchmarks, debugging)."""
        return [[t, k, d] for t, k, d in self.timeline if t > since]

    # -- the drive loop ----------------------------------------------------------------

    async def _drive(self) -> None:
        while True:
            self._phase = "idle"
            req = await self.source.pull()
            try:
                state = await self._run(req)
            except _StepFailed as e:
                self.counts["failed_requests"] += 1
                await self.source.fail(req.id, str(e))
                continue
            self.counts["requests"] += 1
            await self.source.complete(req.id, state)

    async def _run(self, req: SPRequest) -> TrajectoryState:
        while self._model is None:
            await self._wait_changed()
        assert self._model is not None
        shape = (self._model["num_tokens"], self._model["token_dim"])
        state = req.state or TrajectoryState.start(req.seeds, shape)
        sampler = asdict(req.sampler)
        attempts = 0
        while state.step < req.sampler.num_steps:
            self._current = (req.id, state.step)
            if self._needs_reform():
                await self._reform()
            boundary = {
                "seeds": list(state.seeds),
                "step": state.step,
                "x_BNC": state.x_BNC,
                "prompts": list(req.prompts),
                "sampler": sampler,
                "mode": req.mode,
                "weights_version": req.weights_version,
            }
            out = await self._step(boundary)
            if out is None:
                attempts += 1
                if attempts >= self.config.max_attempts:
                    raise _StepFailed(f"step {state.step} failed {attempts} times")
                continue
            attempts = 0
            state = TrajectoryState(
                seeds=state.seeds,
                step=state.step + 1,
                x_BNC=out["x_BNC"],
                latents=[*state.latents, out["x_BNC"]],
                log_probs=[*state.log_probs, out["log_prob_B"]],
                timesteps=[*state.timesteps, float(out["sigma"])],
            )
            self.counts["steps"] += 1
            self._event("step_done", request=req.id, step=state.step, epoch=self._epoch)
            await self.source.commit(req.id, state)
        self._current = None
        return state

    def _active(self) -> list[_Member]:
        act = [m for m in self._members.values() if m.status == "active"]
        return sorted(act, key=lambda m: m.rank)

    def _candidates(self) -> list[_Member]:
        live = [
            m for m in self._members.values() if m.status in ("active", "spare") and m.weights_ready
        ]
        # Current members first (no churn when the degree shrinks), then by join order.
        return sorted(live, key=lambda m: (m.status != "active", m.order))

    def _target_degree(self, n: int) -> int:
        assert self._model is not None
        return largest_valid_degree(
            min(n, self.config.max_degree), self._model["num_heads"], self._model["num_tokens"]
        )

    def _needs_reform(self) -> bool:
        if self._epoch < 0 or len(self._active()) != self._degree:
            return True
        cands = self._candidates()
        return bool(cands) and self._target_degree(len(cands)) != self._degree

    async def _wait_changed(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    # -- re-forming --------------------------------------------------------------------

    async def _reform(self) -> None:
        self._phase = "reforming"
        t0 = time.perf_counter()
        self._event("reform_start", epoch=self._epoch + 1)
        failures = 0
        while True:
            cands = self._candidates()
            if not cands:
                self._phase = "waiting_for_members"
                await self._wait_changed()
                continue
            degree = self._target_degree(len(cands))
            chosen = cands[:degree]
            self._epoch += 1
            epoch = self._epoch
            self._event("form", epoch=epoch, degree=degree, members=[m.key for m in chosen])
            for m in self._members.values():
                if m in chosen:
                    m.status, m.rank = "active", chosen.index(m)
                elif m.status in ("active", "leaving", "suspect"):
                    # Spares, suspects and leavers drop the old group; leavers for good.
                    self._spawn_bg(
                        m.ref.stand_by.ask(
                            self.group_id, epoch, timeout=self.config.probe_timeout_s
                        )
                    )
                    if m.status != "suspect":
                        m.status = "gone" if m.status == "leaving" else "spare"
            tasks = {
                m.key: asyncio.ensure_future(
                    m.ref.form.ask(
                        self.group_id,
                        epoch,
                        rank,
                        degree,
                        self.config.collective_timeout_s,
                        timeout=self.config.collective_timeout_s + 5.0,
                    )
                )
                for rank, m in enumerate(chosen)
            }
            ok, _, lost = await self._collect(tasks, None)
            if not ok and not lost:
                # Everyone answers yet the group does not form (bad store, refused degree):
                # retrying forever would spin through epochs, so give up after a few.
                failures += 1
                if failures >= self.config.max_attempts:
                    raise _StepFailed(f"epoch {epoch} failed to form {failures} times")
            if ok:
                self._degree = degree
                dt = time.perf_counter() - t0
                self.reform_s.append(dt)
                self.counts["reforms"] += 1
                self._event("reform_done", epoch=epoch, degree=degree, seconds=dt)
                self._phase = "stepping"
                return

    async def _step(self, boundary: dict[str, Any]) -> dict[str, Any] | None:
        self._phase = "stepping"
        active = self._active()
        if len(active) != self._degree:
            return None  # a member was lost since the re-form: redo in a new epoch
        tasks = {
            m.key: asyncio.ensure_future(
                m.ref.step.ask(
                    self.group_id, self._epoch, boundary, timeout=self.config.step_timeout_s
                )
            )
            for m in active
        }
        ok, result, _lost = await self._collect(tasks, active[0].key)
        if not ok:
            self.counts["step_failures"] += 1
            self._event("step_failed", step=boundary["step"], epoch=self._epoch)
            return None
        assert isinstance(result, dict)
        return result

    async def _collect(
        self, tasks: Mapping[str, asyncio.Future[Any]], first: str | None
    ) -> tuple[bool, Any, bool]:
        """Wait for ``tasks`` (one per member); False as soon as one fails or stalls.

        With ``first`` set, success is that member's result (the others finish on their own).
        Tasks left pending are not cancelled (that would cancel a member's handler while its
        thread still runs a collective): they end by themselves within their deadlines.
        """
        pending = set(tasks.values())
        key_of = {id(t): k for k, t in tasks.items()}
        try:
            while pending:
                done, pending = await asyncio.wait(
                    pending,
                    timeout=self.config.probe_interval_s,
                    return_when=asyncio.FIRST_EXCEPTION,
                )
                failed = [t for t in done if t.exception() is not None]
                if failed:
                    for t in failed:
                        log.info("SP member %s failed: %r", key_of[id(t)], t.exception())
                    lost = await self._probe([self._members[k] for k in tasks])
                    return False, None, lost
                if first is not None and tasks[first].done():
                    return True, tasks[first].result(), False
                if any(self._members[k].status in ("suspect", "gone") for k in tasks):
                    return False, None, True  # lost by heartbeat while waiting
                if pending:
                    lost = await self._probe([self._members[key_of[id(t)]] for t in pending])
                    if lost:
                        return False, None, True
            if first is not None:
                return True, tasks[first].result(), False
            return True, None, False
        finally:
            for t in pending:
                t.add_done_callback(_consume)

    async def _probe(self, members: list[_Member]) -> bool:
        """Ping ``members``; those silent past ``probe_timeout_s`` become suspect. True if any."""
        pings = {
            m.key: asyncio.ensure_future(m.ref.ping.ask(timeout=self.config.suspect_timeout_s))
            for m in members
            if m.status != "gone"
        }
        if not pings:
            return True
        _done, pending = await asyncio.wait(pings.values(), timeout=self.config.probe_timeout_s)
        any_lost = any(m.status == "gone" for m in members)
        for key, t in pings.items():
            m = self._members[key]
            if t in pending:
                self._mark(m, "suspect", "no answer to ping")
                self._spawn_bg(self._settle_suspect(m, t))
                any_lost = True
            elif t.exception() is not None:
                self._mark(m, "gone", f"ping failed: {t.exception()!r}")
                any_lost = True
        return any_lost

    async def _settle_suspect(self, m: _Member, ping: asyncio.Future[Any]) -> None:
        try:
            await ping
        except Exception as e:  # any failure of the ping means gone
            self._mark(m, "gone", f"suspect never answered: {e!r}")
            return
        if m.status == "suspect":
            m.status = "spare"
            self._event("suspect_back", member=m.key)
            self._changed.set()

    def _mark(self, m: _Member, status: Status, why: str) -> None:
        if m.status == status or m.status == "gone":
            return
        if status == "gone":
            self.counts["lost"] += 1
        self._event("member", member=m.key, status=status, why=why)
        m.status = status
        self._changed.set()

    # -- helpers -----------------------------------------------------------------------

    def _event(self, kind: str, **details: Any) -> None:
        self.timeline.append((time.time(), kind, details))

    def _spawn_bg(self, aw: Awaitable[Any]) -> None:
        t = asyncio.ensure_future(aw)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)
        t.add_done_callback(_consume)

    async def _quiet_all(self, aws: list[Awaitable[Any]]) -> None:
        results = await asyncio.gather(*aws, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                log.info("stand_by at shutdown failed: %r", r)


def _consume(t: asyncio.Future[Any]) -> None:
    """Retrieve a background future's exception (a late failure of a dead member's ask)."""
    if not t.cancelled() and t.exception() is not None:
        log.debug("late SP call failure: %r", t.exception())


def _replace(config: SPGroupConfig, **changes: Any) -> SPGroupConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)
