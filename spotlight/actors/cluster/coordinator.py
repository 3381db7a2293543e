"""The coordinator: who is in the cluster, what it costs, and what preemptions took away.

Why one actor for this: membership, the bill and the preemption tally are three views of the
same events (a node joins, gets a notice, leaves or vanishes); keeping them in one mailbox
means they never disagree, and the monitor and the final report read one record.

Map (one actor on the on-demand node; two tasks it owns, cancelled in ``on_stop``)::

    spot node ──register_node(id, "spot", gpus, explorer)──► registry (status "alive")
                   │ answer: scheduler / planner / monitor refs, model (the trainer's
                   │   DiTConfig as a dict), sampler, weight version
                   ├──► publisher.subscribe(id, explorer)     (weights flow to the node)
                   └──► planner.register_explorer(explorer, id)
    spot node ──register_rollout_worker(id, worker)──► publisher.subscribe(id/rollout, worker)
    spot node ──node_notice(id, deadline)──► status "notice"; publisher.unsubscribe(id, id/rollout)
    spot node ──node_left(id, PreemptionReport | None)──► status "left"; preemption tally
    runtime.peer_events() ── peer_lost(address) ──► _peer_task: node at that address
                                                      "gone" (silent loss, counted)
    spot node ──register_node(id, …, incarnation) after it was found gone, same process
                   (same incarnation token) ──► revived: the silent loss is taken back
                   and counted in ``rejoined``; billing resumes as if never interrupted
    any change ──► _planner_task: planner.unregister_explorer(id, explorer) for each node
                   that stopped exploring (notice, left, gone), then
                   planner.set_spot_gpus(alive spot GPUs) (latest value only)
    every metrics_period_s ──► _metrics_task: topics "node" (one source per node) + "cost"

What waits on what: endpoints never wait on a remote actor except ``register_explorer``
(a ``tell`` bounded by ``call_timeout_s``; a dead planner is logged, the node still joins).
``unregister_explorer`` and ``set_spot_gpus`` go through ``_planner_task`` so a slow
planner never delays an endpoint (peer losses are found outside any endpoint) and only the
newest count is sent; an unregistration carries the explorer's ref, so the planner never
forgets a newer incarnation registered under the same id. Metrics use
:class:`MetricsPublisher` (never blocks).

Accounting rules:

* Billing: every node from ``register_node`` to ``node_left``/peer loss (per second,
  ``CostMeter``); a node still alive is billed up to ``clock()``.
* A preemption *with notice* is a ``node_left`` carrying a report; its work lost is the
  report's ``drain.abandoned_steps`` (sample-steps thrown away). A ``node_left`` without a
  report is a voluntary leave, not a preemption.
* A *silent* loss is a peer loss (or bye) of a node that never said ``node_left``; if it had
  said ``node_notice`` first it is also counted in ``notice_unclean``. Work lost is unknown
  to the coordinator (the scheduler's lease expiry resumes it from the last commit).
* A silent loss is taken back when the *same process* registers again (the node passes an
  ``incarnation`` token drawn once per process): a stalled node or a few seconds of network
  trouble is no preemption. It counts in ``rejoined``, and the node is billed throughout (it
  was running all along). A restarted process under the same id and address has a new
  token: a new incarnation, the loss stands.

Shutdown: ``on_stop`` cancels the tasks, closes the publishers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import spotlight.actors.scheduling.work  # noqa: F401 - registers SamplerConfig as a wire type
from spotlight.actors.monitor.metrics import MetricsPublisher
from spotlight.actors.monitor.records import CostRecord, NodeRecord, PreemptionRecord
from spotlight.actors.scheduling.preemption import PreemptionReport
from spotlight.actors.spot.prices import NODE_CLASSES, CostMeter, CostSummary, Prices
from spotlight.actors.weights.policy_spec import PolicySpec
from spotlight.models.dit import DiTConfig
from spotlight.models.sampler import SamplerConfig
from spotlight.runtime import Actor, ActorRef, endpoint
from spotlight.runtime.codec import register_wire_type
from spotlight.runtime.errors import SpotlightError
from spotlight.runtime.serving import PEER_SHUT_DOWN

__all__ = ["Coordinator", "CoordinatorStats", "NodeStats"]

log = logging.getLogger("spotlight.actors.cluster.coordinator")

register_wire_type(Prices, name="spotlight.Prices")
register_wire_type(CostSummary, name="spotlight.CostSummary")

NodeStatus = Literal["alive", "notice", "gone", "left"]


@register_wire_type(name="spotlight.NodeStats")
@dataclass(frozen=True, kw_only=True)
class NodeStats:
    """One node as the coordinator sees it."""

    node_id: str
    kind: str
    """"ondemand" or "spot"."""
    gpus: int
    status: str
    """"alive", "notice" (leaving before ``notice_deadline``), "left" (said so), "gone"
    (lost without a word)."""
    joined_at: float
    ended_at: float | None
    """When it left or was found gone (``clock()``); None while alive or on notice."""
    notice_deadline: float | None
    gpu_hours: float
    cost_usd: float
    address: str | None
    """Runtime address of the node (how a peer loss is tied to it)."""
    rejoins: int = 0
    """Times this node was found gone and then registered again from the same process."""


@register_wire_type(name="spotlight.CoordinatorStats")
@dataclass(frozen=True, kw_only=True)
class CoordinatorStats:
    run_id: str
    nodes: dict[str, NodeStats]
    cost: CostSummary
    preemptions_notice: int
    """Nodes that left on a notice with a drain report (clean exits)."""
    preemptions_silent: int
    """Nodes lost without ``node_left`` (kill -9, crash, network)."""
    notice_unclean: int
    """Of the silent losses, those that had announced a notice first."""
    rejoined: int = 0
    """Peer losses taken back: the same node process registered again (not preemptions)."""
    late_exits: int
    """Notice exits whose report finished after the deadline."""
    voluntary_leaves: int
    """``node_left`` without a report (an operator stop, not a preemption)."""
    work_lost_steps: int
    """Sample-steps abandoned in drains (silent losses are not known here)."""
    alive_spot_gpus: int
    weight_version: int


@dataclass
class _Node:
    node_id: str
    kind: str
    gpus: int
    joined_at: float
    explorer: ActorRef | None
    address: str | None
    """Runtime address of the node (its explorer's); a peer loss there means it is gone."""
    status: NodeStatus = "alive"
    ended_at: float | None = None
    notice_deadline: float | None = None
    notice_at: float | None = None
    forgotten: bool = False
    """The planner was told to drop this node's explorer (sent once per registration)."""
    incarnation: str | None = None
    """Token the node's process drew at start (None: a caller that sends none)."""
    rejoins: int = 0

    def gpu_seconds(self, now: float) -> float:
        end = self.ended_at if self.ended_at is not None else now
        return max(0.0, end - self.joined_at) * self.gpus


@dataclass
class _Tally:
    notice: int = 0
    silent: int = 0
    notice_unclean: int = 0
    rejoined: int = 0
    late: int = 0
    voluntary: int = 0
    steps_lost: int = 0
    retired_gpu_s: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(NODE_CLASSES, 0.0)
    )
    """GPU-seconds of nodes replaced by a re-registration under the same id."""


class Coordinator(Actor):
    """Membership, cost and preemption accounting of a run; see the module map."""

    def __init__(
        self,
        *,
        prices: Prices,
        run_id: str,
        monitor: ActorRef | None = None,
        publisher: Any = None,
        planner: ActorRef | None = None,
        scheduler: ActorRef | None = None,
        sampler: SamplerConfig | None = None,
        model: DiTConfig | str | PolicySpec = "tiny",
        rollouts: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        metrics_period_s: float = 1.0,
        call_timeout_s: float = 5.0,
    ) -> None:
        """``publisher``: a :class:`~spotlight.actors.weights.publish.WeightPublisher` on this
        process's loop (``subscribe``/``unsubscribe``), or None (no weights pushed).
        ``model``: the trainer's policy config (its base checkpoint's card), sent to every
        node so its explorer builds the same shapes; a name only for named configs; a
        :class:`PolicySpec` with LoRA also sends the adapters' settings and the base path
        (answer's ``lora``: nodes then load the base themselves and receive adapters only).
        ``rollouts``: what a node needs to serve the trainer's rollouts, passed on as is in
        ``register_node``'s answer (``scheduler``: the rollout scheduler's ref,
        ``settings``: ``RolloutSettings``, ``timing``: ``SchedulingConfig``); None: rollouts
        stay with the trainer."""
        if not isinstance(prices, Prices):
            raise ValueError(f"prices must be a Prices, got {prices!r}")
        if not run_id:
            raise ValueError("run_id must be a non-empty string")
        if not isinstance(model, DiTConfig | str | PolicySpec):
            raise ValueError(
                f"model must be a PolicySpec, a DiTConfig or a config name, got {model!r}"
            )
        for name, value in (
            ("metrics_period_s", metrics_period_s),
            ("call_timeout_s", call_timeout_s),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value} must be a finite number of seconds > 0")
        self.prices = prices
        self.run_id = run_id
        self.monitor = monitor
        self.publisher = publisher
        self.planner = planner
        self.scheduler = scheduler
        self.sampler = sampler or SamplerConfig()
        self.model = model.config if isinstance(model, PolicySpec) else model
        self.lora_offer = model.lora_offer() if isinstance(model, PolicySpec) else None
        self.rollouts = rollouts
        self._clock = clock
        self._period_s = metrics_period_s
        self._call_timeout_s = call_timeout_s
        self._nodes: dict[str, _Node] = {}
        self._tally = _Tally()
        self._weight_version = -1
        self._tasks: list[asyncio.Task[None]] = []
        self._planner_dirty = asyncio.Event()
        self._planner_forget: dict[str, ActorRef] = {}
        """Explorers the planner must drop (node id -> the explorer ref it registered)."""
        self._metrics: dict[str, MetricsPublisher] = {}

    async def on_start(self) -> None:
        peers = self.runtime.peer_events()  # registered now: no loss between here and the task
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._watch_peers(peers), name="coordinator peers"),
            loop.create_task(self._sync_planner(), name="coordinator planner sync"),
        ]
        if self.monitor is not None:
            self._tasks.append(loop.create_task(self._publish_loop(), name="coordinator metrics"))
        for task in self._tasks:
            task.add_done_callback(self._task_done)

    async def on_stop(self) -> None:
        for task in self._tasks:
            task.cancel("coordinator stopping")
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pub in self._metrics.values():
            await pub.close()

    # ------------------------------------------------------------------ endpoints

    @endpoint
    async def register_node(
        self,
        node_id: str,
        kind: str,
        gpus: int,
        explorer: ActorRef | None = None,
        address: str | None = None,
        incarnation: str | None = None,
    ) -> dict[str, Any]:
        """A node joins (or tells us its explorer, a second call with the same id).

        ``address``: the node's runtime address when it has no explorer yet (how its loss
        is noticed); the explorer's address otherwise. ``incarnation``: a token the node's
        process drew once at start; with it a node found gone that registers again from the
        same process is revived (see "Accounting rules"), and a restarted process under an
        old id and address is told apart from the one before.

        Returns what the node needs to work: ``scheduler``, ``planner``, ``monitor``
        (refs or None), ``model`` (the trainer's ``DiTConfig`` as a dict, or a config name),
        ``lora`` (None, or the adapters' settings and base path;
        :meth:`PolicySpec.from_answer` rebuilds both), ``sampler`` (the
        trainer's ``SamplerConfig`` as a dict; :func:`sampler_from_dict` rebuilds it),
        ``weight_version`` (-1: none yet).
        """
        if not isinstance(node_id, str) or not node_id:
            raise ValueError(f"node_id must be a non-empty string, got {node_id!r}")
        if kind not in NODE_CLASSES:
            raise ValueError(f"node kind {kind!r} is not one of {NODE_CLASSES}")
        if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
            raise ValueError(f"gpus must be an int >= 0, got {gpus!r}")
        if incarnation is not None and (not isinstance(incarnation, str) or not incarnation):
            raise ValueError(f"incarnation must be a non-empty string, got {incarnation!r}")
        if explorer is not None:
            address = explorer.address
        now = self._clock()
        node = self._nodes.get(node_id)
        if (
            node is not None
            and node.status == "gone"  # by a peer loss: a replaced record leaves the registry
            and incarnation is not None
            and node.incarnation == incarnation
            and node.kind == kind
        ):
            self._revive(node)
        same = (
            node is not None
            and node.status in ("alive", "notice")
            and node.kind == kind
            and (node.address is None or address is None or node.address == address)
            and (node.incarnation is None or incarnation is None or node.incarnation == incarnation)
        )
        if node is not None and same:
            if explorer is not None:
                node.explorer = explorer
            node.address = node.address or address
            node.incarnation = node.incarnation or incarnation
            node.gpus = gpus
        else:
            if node is not None:  # a new incarnation under an old id: bill the old one
                if node.status in ("alive", "notice"):
                    node.ended_at = now
                    node.status = "gone"
                    self._forget_explorer(node)
                self._tally.retired_gpu_s[node.kind] += node.gpu_seconds(now)
            node = _Node(
                node_id=node_id,
                kind=kind,
                gpus=gpus,
                joined_at=now,
                explorer=explorer,
                address=address,
                incarnation=incarnation,
            )
            self._nodes[node_id] = node
            log.info("node %s joined (%s, %d GPUs)", node_id, kind, gpus)
        if explorer is not None and node.status == "alive":
            self._planner_forget.pop(node_id, None)
            node.forgotten = False
            if self.publisher is not None:
                self.publisher.subscribe(node_id, explorer)
            if self.planner is not None:
                try:
                    await self.planner.register_explorer.tell(
                        explorer, node_id, timeout=self._call_timeout_s
                    )
                except (SpotlightError, TimeoutError) as exc:
                    log.warning("planner did not take explorer %s: %r", node_id, exc)
        self._changed()
        return {
            "scheduler": self.scheduler,
            "planner": self.planner,
            "monitor": self.monitor,
            "model": self.model if isinstance(self.model, str) else self.model.to_dict(),
            "lora": self.lora_offer,
            "sampler": asdict(self.sampler),
            "weight_version": self._latest_version(),
            "run_id": self.run_id,
            "rollouts": self.rollouts,
        }

    @endpoint
    async def register_rollout_worker(self, node_id: str, worker: ActorRef) -> bool:
        """``node_id``'s rollout worker: weights flow to it too, until the node leaves.

        Returns False (and subscribes nothing) unless the node is alive: a worker of a node
        on notice or gone must not receive the next weights."""
        node = self._known(node_id)
        if node.status != "alive" or self.publisher is None:
            return False
        self.publisher.subscribe(_rollout_name(node_id), worker)
        return True

    @endpoint
    async def node_notice(self, node_id: str, deadline: float) -> None:
        """``node_id`` will be taken away at ``deadline`` (its clock); it is draining."""
        node = self._known(node_id)
        if node.status != "alive":
            return
        node.status = "notice"
        node.notice_deadline = float(deadline)
        node.notice_at = self._clock()
        self._unsubscribe(node_id)
        self._forget_explorer(node)
        self._changed()
        log.info("node %s on notice, deadline in %.1f s", node_id, deadline - time.time())

    @endpoint
    async def node_left(self, node_id: str, report: PreemptionReport | None = None) -> None:
        """``node_id`` leaves now: with a report after a notice, or voluntarily (None)."""
        node = self._known(node_id)
        if node.status in ("left", "gone"):
            log.info("node_left of %s ignored: already %s", node_id, node.status)
            return
        node.status = "left"
        node.ended_at = self._clock()
        self._unsubscribe(node_id)
        self._forget_explorer(node)
        if report is None:
            self._tally.voluntary += 1
        else:
            self._tally.notice += 1
            steps = report.drain.abandoned_steps if report.drain is not None else 0
            self._tally.steps_lost += steps
            late = report.finished_at > report.deadline
            self._tally.late += late
            self._publish_event(
                node_id,
                kind="notice",
                lead_s=report.deadline - report.received_at,
                steps_lost=steps,
                late=late,
                released=report.drain.released if report.drain is not None else None,
            )
        self._changed()
        log.info("node %s left (%s)", node_id, "preempted" if report else "voluntary")

    @endpoint
    async def set_weight_version(self, version: int) -> None:
        """The newest weight version published (told to joiners in ``register_node``)."""
        if not isinstance(version, int) or version < 0:
            raise ValueError(f"weight version must be an int >= 0, got {version!r}")
        self._weight_version = max(self._weight_version, version)

    @endpoint
    async def statistics(self) -> CoordinatorStats:
        return self.snapshot()

    # ------------------------------------------------------------------ pure views

    def snapshot(self) -> CoordinatorStats:
        """The statistics record (also what the metrics loop publishes)."""
        now = self._clock()
        meter = CostMeter(prices=self.prices)
        for kind, gpu_s in self._tally.retired_gpu_s.items():
            meter.add_interval(kind, 0.0, gpu_s)
        nodes: dict[str, NodeStats] = {}
        for node in self._nodes.values():
            gpu_s = node.gpu_seconds(now)
            meter.add_interval(node.kind, 0.0, gpu_s)
            hours = gpu_s / 3600.0
            nodes[node.node_id] = NodeStats(
                node_id=node.node_id,
                kind=node.kind,
                gpus=node.gpus,
                status=node.status,
                joined_at=node.joined_at,
                ended_at=node.ended_at,
                notice_deadline=node.notice_deadline,
                gpu_hours=hours,
                cost_usd=hours * self.prices.per_gpu_hour(node.kind),
                address=node.address,
                rejoins=node.rejoins,
            )
        t = self._tally
        return CoordinatorStats(
            run_id=self.run_id,
            nodes=nodes,
            cost=meter.summary(),
            preemptions_notice=t.notice,
            preemptions_silent=t.silent,
            notice_unclean=t.notice_unclean,
            rejoined=t.rejoined,
            late_exits=t.late,
            voluntary_leaves=t.voluntary,
            work_lost_steps=t.steps_lost,
            alive_spot_gpus=self._alive_spot_gpus(),
            weight_version=self._latest_version(),
        )

    def peer_lost(self, address: str, reason: str) -> list[str]:
        """Mark the nodes served from ``address`` gone (silent loss); returns their ids."""
        lost = []
        for node in self._nodes.values():
            if node.address != address or node.status not in ("alive", "notice"):
                continue
            had_notice = node.status == "notice"
            node.status = "gone"
            node.ended_at = self._clock()
            self._tally.silent += 1
            self._tally.notice_unclean += had_notice
            self._unsubscribe(node.node_id)
            self._forget_explorer(node)
            self._publish_event(
                node.node_id, kind="silent", lead_s=0.0, steps_lost=None, reason=reason
            )
            lost.append(node.node_id)
            log.warning(
                "node %s lost without leaving (%s)%s",
                node.node_id,
                reason,
                " after a notice" if had_notice else "",
            )
        if lost:
            self._changed()
        return lost

    # ------------------------------------------------------------------ internals

    def _revive(self, node: _Node) -> None:
        """Take back the silent loss of ``node``: its process registered again."""
        had_notice = node.notice_at is not None
        node.status = "notice" if had_notice else "alive"
        node.ended_at = None
        node.rejoins += 1
        self._tally.silent -= 1
        self._tally.notice_unclean -= had_notice
        self._tally.rejoined += 1
        self._publish_event(node.node_id, kind="rejoined", lead_s=None, steps_lost=None)
        log.warning(
            "node %s rejoined from the same process: its loss was a stall or a network "
            "hiccup, not a preemption",
            node.node_id,
        )

    def _known(self, node_id: str) -> _Node:
        node = self._nodes.get(node_id)
        if node is None:
            raise ValueError(f"unknown node {node_id!r}; registered: {sorted(self._nodes)}")
        return node

    def _latest_version(self) -> int:
        published = -1
        if self.publisher is not None:
            published = int(self.publisher.statistics().latest_version)
        return max(published, self._weight_version)

    def _alive_spot_gpus(self) -> int:
        return sum(n.gpus for n in self._nodes.values() if n.kind == "spot" and n.status == "alive")

    def _changed(self) -> None:
        self._planner_dirty.set()

    def _unsubscribe(self, node_id: str) -> None:
        if self.publisher is not None:
            self.publisher.unsubscribe(node_id)
            self.publisher.unsubscribe(_rollout_name(node_id))

    def _forget_explorer(self, node: _Node) -> None:
        """Queue ``planner.unregister_explorer`` for ``node`` (sent by ``_sync_planner``)."""
        if node.explorer is not None and self.planner is not None and not node.forgotten:
            node.forgotten = True
            self._planner_forget[node.node_id] = node.explorer
            self._changed()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("coordinator task %s failed", task.get_name(), exc_info=task.exception())

    async def _watch_peers(self, peers: Any) -> None:
        async for event in peers:
            if event.kind == "peer_lost":
                reason = "shut down without node_left" if event.reason == PEER_SHUT_DOWN else ""
                self.peer_lost(event.address, reason or event.reason)

    async def _sync_planner(self) -> None:
        sent: int | None = None
        while True:
            await self._planner_dirty.wait()
            self._planner_dirty.clear()
            if self.planner is None:
                continue
            if not await self._send_forgets(self.planner):
                await asyncio.sleep(self._call_timeout_s / 5)  # back off, then retry
                self._planner_dirty.set()
                continue
            n = self._alive_spot_gpus()
            if n == sent:
                continue
            try:
                await self.planner.set_spot_gpus.tell(n, timeout=self._call_timeout_s)
                sent = n
            except (SpotlightError, TimeoutError) as exc:
                log.warning("planner did not take set_spot_gpus(%d): %r", n, exc)
                await asyncio.sleep(self._call_timeout_s / 5)  # back off, then retry the newest
                self._planner_dirty.set()

    async def _send_forgets(self, planner: ActorRef) -> bool:
        """``unregister_explorer`` for every queued node; False if one failed (kept queued)."""
        while self._planner_forget:
            node_id, explorer = next(iter(self._planner_forget.items()))
            try:
                await planner.unregister_explorer.tell(
                    node_id, explorer, timeout=self._call_timeout_s
                )
            except (SpotlightError, TimeoutError) as exc:
                log.warning("planner did not take unregister_explorer(%s): %r", node_id, exc)
                return False
            if self._planner_forget.get(node_id) is explorer:  # not re-queued meanwhile
                del self._planner_forget[node_id]
        return True

    def _publisher(self, source: str) -> MetricsPublisher:
        pub = self._metrics.get(source)
        if pub is None:
            pub = MetricsPublisher(self.monitor, source=source, runtime=self.runtime)
            self._metrics[source] = pub
        return pub

    def _publish_event(self, node_id: str, **fields: Any) -> None:
        if self.monitor is not None:
            record = PreemptionRecord(node=node_id, **fields)
            self._publisher(node_id).publish_record(record)

    def publish_metrics(self) -> None:
        """One "node" record per node (source = node id) and one "cost" record."""
        if self.monitor is None:
            return
        stats = self.snapshot()
        live = [n for n in stats.nodes.values() if n.status in ("alive", "notice")]
        for node in stats.nodes.values():
            self._publisher(node.node_id).publish_record(
                NodeRecord(
                    kind=node.kind,
                    status=node.status,
                    gpus=node.gpus,
                    gpu_hours=node.gpu_hours,
                    cost_usd=node.cost_usd,
                )
            )
        bill = stats.cost.to_dict()
        self._publisher(self.name).publish_record(
            CostRecord(
                ondemand_gpu_hours=bill["ondemand_gpu_hours"],
                spot_gpu_hours=bill["spot_gpu_hours"],
                ondemand_usd=bill["ondemand_usd"],
                spot_usd=bill["spot_usd"],
                total_usd=bill["total_usd"],
                usd_per_hour=sum(n.gpus * self.prices.per_gpu_hour(n.kind) for n in live),
                live_nodes=sum(n.kind == "spot" for n in live),
                alive_spot_gpus=stats.alive_spot_gpus,
                preemptions_notice=stats.preemptions_notice,
                preemptions_silent=stats.preemptions_silent,
                rejoined=stats.rejoined,
                work_lost_steps=stats.work_lost_steps,
            )
        )

    async def _publish_loop(self) -> None:
        while True:
            self.publish_metrics()
            await asyncio.sleep(self._period_s)  # a period, not synchronisation


def _rollout_name(node_id: str) -> str:
    """The publisher subscription of a node's rollout worker (beside its explorer's)."""
    return f"{node_id}/rollout"
