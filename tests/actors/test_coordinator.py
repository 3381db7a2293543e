"""Coordinator: registry, cost metering on a fake clock, notice vs silent preemption
accounting, planner/publisher calls, metrics topics."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from spotlight.actors.cluster.coordinator import Coordinator, CoordinatorStats
from spotlight.actors.monitor.actor import Monitor
from spotlight.actors.scheduling.preemption import PreemptionReport
from spotlight.actors.scheduling.work import DrainReport, sampler_from_dict
from spotlight.actors.spot.prices import Prices
from spotlight.models.sampler import SamplerConfig
from spotlight.runtime import Actor, ActorRef, Runtime, endpoint
from spotlight.runtime.errors import PeerLost, RemoteError
from tests.runtime.helpers import FAST, arun

pytestmark = pytest.mark.timeout(60)

PRICES = Prices(ondemand_usd_per_gpu_hour=10.0, spot_usd_per_gpu_hour=3.0, name="test")


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakePlanner(Actor):
    """Records what the coordinator tells the planner; ``wait_gpus`` waits on a value."""

    def __init__(self) -> None:
        self.explorers: dict[str, ActorRef] = {}
        self.gpus: list[int] = []
        self.forgotten: list[str] = []
        self._changed = asyncio.Event()

    @endpoint
    async def register_explorer(self, ref: ActorRef, worker_id: str) -> None:
        self.explorers[worker_id] = ref
        self._changed.set()

    @endpoint
    async def unregister_explorer(self, worker_id: str, ref: ActorRef | None = None) -> bool:
        self.forgotten.append(worker_id)
        known = self.explorers.get(worker_id)
        if known is None or (ref is not None and known != ref):
            return False
        del self.explorers[worker_id]
        self._changed.set()
        return True

    @endpoint(concurrent=True)
    async def wait_explorers(self, ids: list[str]) -> list[str]:
        while sorted(self.explorers) != sorted(ids):
            self._changed.clear()
            await self._changed.wait()
        return list(self.forgotten)

    @endpoint
    async def set_spot_gpus(self, n: int) -> None:
        self.gpus.append(n)
        self._changed.set()

    @endpoint(concurrent=True)
    async def wait_gpus(self, n: int) -> list[int]:
        while not (self.gpus and self.gpus[-1] == n):
            self._changed.clear()
            await self._changed.wait()
        return list(self.gpus)

    @endpoint
    async def seen(self) -> dict[str, ActorRef]:
        return dict(self.explorers)


class Dummy(Actor):
    """Stands for a spot node's explorer (only its address matters here)."""

    @endpoint
    async def ping(self) -> str:
        return "pong"


class FakePublisher:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def subscribe(self, name: str, ref: ActorRef) -> None:
        self.calls.append(("subscribe", name))

    def unsubscribe(self, name: str) -> None:
        self.calls.append(("unsubscribe", name))

    def statistics(self) -> Any:
        class S:
            latest_version = 3

        return S()


def _report(worker: str, *, abandoned: int, deadline: float, finished: float) -> PreemptionReport:
    drain = DrainReport(
        worker_id=worker,
        released=4,
        snapshots={},
        finished_inflight=False,
        abandoned_steps=abandoned,
        seconds=0.2,
    )
    return PreemptionReport(
        worker_id=worker,
        source="signal",
        received_at=deadline - 30.0,
        deadline=deadline,
        drain=drain,
        finished_at=finished,
    )


async def _until_gone(coord: ActorRef, node_id: str) -> CoordinatorStats:
    """The coordinator's statistics once ``node_id`` is "gone" (a peer loss reaches its
    task asynchronously), or the last ones after ~10 s of polling its own record."""
    for _ in range(200):
        st: CoordinatorStats = await coord.statistics.ask()
        if st.nodes[node_id].status == "gone":
            break
        await asyncio.sleep(0.05)
    return st


def test_registry_costs_and_notice_accounting_on_a_fake_clock() -> None:
    clock = FakeClock()

    async def body() -> None:
        async with Runtime(FAST) as rt:
            coord = await rt.spawn(
                Coordinator,
                name="coordinator",
                prices=PRICES,
                run_id="r1",
                clock=clock,
                sampler=SamplerConfig(num_steps=6, noise_level=0.5, sde_window=(1, 4)),
            )
            answer = await coord.register_node.ask("od0", "ondemand", 2, None)
            assert sampler_from_dict(answer["sampler"]) == SamplerConfig(
                num_steps=6, noise_level=0.5, sde_window=(1, 4)
            )
            assert answer["weight_version"] == -1 and answer["model"] == "tiny"
            clock.t += 100.0
            await coord.register_node.ask("s1", "spot", 1, None)
            clock.t += 3600.0
            st: CoordinatorStats = await coord.statistics.ask()
            assert st.nodes["od0"].status == "alive" and st.nodes["s1"].status == "alive"
            assert st.nodes["od0"].gpu_hours == pytest.approx(3700 * 2 / 3600)
            assert st.nodes["s1"].gpu_hours == pytest.approx(1.0)
            assert st.nodes["s1"].cost_usd == pytest.approx(3.0)
            assert st.cost.dollars["spot"] == pytest.approx(3.0)
            assert st.cost.dollars["ondemand"] == pytest.approx(10.0 * 3700 * 2 / 3600)
            assert st.alive_spot_gpus == 1

            await coord.node_notice.ask("s1", 5000.0)
            assert (await coord.statistics.ask()).nodes["s1"].status == "notice"
            clock.t += 36.0  # billed until it leaves, notice or not
            report = _report("s1", abandoned=12, deadline=5000.0, finished=4990.0)
            await coord.node_left.ask("s1", report)
            clock.t += 7200.0  # a node that left is billed no more
            st = await coord.statistics.ask()
            assert st.nodes["s1"].status == "left" and st.nodes["s1"].ended_at == 1000 + 3736
            assert st.nodes["s1"].gpu_hours == pytest.approx(1.01)
            assert (st.preemptions_notice, st.preemptions_silent, st.late_exits) == (1, 0, 0)
            assert st.work_lost_steps == 12 and st.alive_spot_gpus == 0
            # A second node_left (retry) changes nothing; an unknown node is a user error.
            await coord.node_left.ask("s1", report)
            assert (await coord.statistics.ask()).preemptions_notice == 1
            with pytest.raises((ValueError, RemoteError), match="unknown node"):
                await coord.node_left.ask("nope", None)
            with pytest.raises((ValueError, RemoteError), match="kind"):
                await coord.register_node.ask("x", "preemptible", 1, None)
            # A voluntary leave is not a preemption.
            await coord.register_node.ask("s2", "spot", 1, None)
            await coord.node_left.ask("s2", None)
            st = await coord.statistics.ask()
            assert st.voluntary_leaves == 1 and st.preemptions_notice == 1
            # A late exit is counted as such.
            await coord.register_node.ask("s3", "spot", 1, None)
            await coord.node_left.ask("s3", _report("s3", abandoned=0, deadline=10.0, finished=11))
            assert (await coord.statistics.ask()).late_exits == 1

    arun(body())


def test_planner_and_publisher_follow_membership_and_silent_loss_is_counted() -> None:
    publisher = FakePublisher()

    async def body() -> None:
        async with Runtime(FAST) as rt, Runtime(FAST) as node_rt:
            planner = await rt.spawn(FakePlanner, name="planner")
            coord = await rt.spawn(
                Coordinator,
                name="coordinator",
                prices=PRICES,
                run_id="r2",
                planner=planner,
                publisher=publisher,
            )
            local = await rt.spawn(Dummy, name="x0")
            remote = await node_rt.spawn(Dummy, name="explorer")
            coord_seen = node_rt.ref(rt.address, "coordinator")  # the node dials the coordinator
            answer = await coord.register_node.ask("a", "spot", 2, local)
            assert answer["planner"] is not None and answer["weight_version"] == 3
            await coord_seen.register_node.ask("b", "spot", 1, None, node_rt.address)
            assert await planner.wait_gpus.ask(3, timeout=10.0)
            assert (await coord.statistics.ask()).nodes["b"].address == node_rt.address
            assert set(await planner.seen.ask()) == {"a"}  # b has no explorer yet
            # Re-registering the same node with its explorer is idempotent (still 2 nodes).
            await coord_seen.register_node.ask("b", "spot", 1, remote)
            assert set(await planner.seen.ask()) == {"a", "b"}
            assert ("subscribe", "a") in publisher.calls and ("subscribe", "b") in publisher.calls
            st = await coord.statistics.ask()
            assert len(st.nodes) == 2 and st.alive_spot_gpus == 3
            over_wire = await coord_seen.statistics.ask()  # the record travels (wire types)
            b_local, b_wire = st.nodes["b"], over_wire.nodes["b"]  # (real clock: hours move)
            assert (b_wire.status, b_wire.address, b_wire.joined_at) == (
                b_local.status,
                b_local.address,
                b_local.joined_at,
            )
            assert over_wire.cost.prices == PRICES and over_wire.alive_spot_gpus == 3

            await coord.node_notice.ask("a", 1e12)  # a notice stops weights and budget at once
            assert await planner.wait_gpus.ask(1, timeout=10.0)
            assert ("unsubscribe", "a") in publisher.calls
            assert await planner.wait_explorers.ask(["b"], timeout=10.0) == ["a"]

            await node_rt.shutdown("test: the node vanishes")  # no node_left: silent loss
            st = await _until_gone(coord, "b")
            assert st.nodes["b"].status == "gone" and st.nodes["b"].ended_at is not None
            assert (st.preemptions_silent, st.notice_unclean, st.preemptions_notice) == (1, 0, 0)
            assert await planner.wait_gpus.ask(0, timeout=10.0)
            assert ("unsubscribe", "b") in publisher.calls
            # The planner forgets the lost node's explorer too (it kept asking a dead one).
            assert await planner.wait_explorers.ask([], timeout=10.0) == ["a", "b"]
            await coord.node_left.ask("a", None)  # a leaves after its notice: no second call
            await coord.register_node.ask("c", "spot", 1, local)
            assert await planner.wait_explorers.ask(["c"], timeout=10.0) == ["a", "b"]

    arun(body())


def test_metrics_topics_node_and_cost_reach_the_monitor() -> None:
    clock = FakeClock()

    async def body() -> None:
        async with Runtime(FAST) as rt:
            monitor = await rt.spawn(Monitor, name="monitor")
            coord = await rt.spawn(
                Coordinator,
                name="coordinator",
                prices=PRICES,
                run_id="r3",
                monitor=monitor,
                clock=clock,
                metrics_period_s=0.05,
            )
            await coord.register_node.ask("od0", "ondemand", 1, None)
            await coord.register_node.ask("s1", "spot", 1, None)
            clock.t += 3600.0
            await coord.node_left.ask("s1", _report("s1", abandoned=3, deadline=1e12, finished=0))
            state: Any = None
            for _ in range(200):
                state = await monitor.snapshot.ask()
                nodes = state.latest.get("node", {})
                cost = state.latest.get("cost", {})
                if "s1" in nodes and nodes["s1"]["fields"]["status"] == "left" and cost:
                    break
                await asyncio.sleep(0.05)  # the metrics period is a timer
            nodes = state.latest["node"]
            assert nodes["od0"]["fields"]["kind"] == "ondemand"
            assert nodes["s1"]["fields"]["gpu_hours"] == pytest.approx(1.0)
            cost = state.latest["cost"]["coordinator"]["fields"]
            assert cost["spot_usd"] == pytest.approx(3.0)
            assert cost["ondemand_usd"] == pytest.approx(10.0)
            assert cost["work_lost_steps"] == 3
            events = state.history.get("preemption", [])
            assert [e["fields"]["kind"] for e in events] == ["notice"]
            assert events[0]["fields"]["steps_lost"] == 3

    arun(body())


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="prices"):
        Coordinator(prices="aws", run_id="r")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="run_id"):
        Coordinator(prices=PRICES, run_id="")
    with pytest.raises(ValueError, match="metrics_period_s"):
        Coordinator(prices=PRICES, run_id="r", metrics_period_s=math.nan)


def test_nodes_get_the_trainers_model_config_and_a_rejoined_node_is_registered_again() -> None:
    """The answer carries the full DiTConfig (not a name), plain data that survives the wire;
    a node that re-joins under its old id (new process, new explorer) is registered again and
    the old incarnation's unregistration is sent once, not repeated for the new one."""
    from spotlight.actors.weights.policy_spec import model_config
    from tests.micro import MICRO

    async def body() -> None:
        async with Runtime(FAST) as rt, Runtime(FAST) as node_rt, Runtime(FAST) as node_rt2:
            planner = await rt.spawn(FakePlanner, name="planner")
            await rt.spawn(
                Coordinator,
                name="coordinator",
                prices=PRICES,
                run_id="r4",
                planner=planner,
                model=MICRO,
            )
            coord = node_rt.ref(rt.address, "coordinator")  # as a spot node sees it
            old = await node_rt.spawn(Dummy, name="explorer")
            answer = await coord.register_node.ask("s1", "spot", 1, old)
            assert isinstance(answer["model"], dict) and answer["model"]["name"] == "micro"
            assert model_config(answer["model"]) == MICRO  # lists back to tuples
            assert await planner.wait_explorers.ask(["s1"], timeout=10.0) == []
            await coord.node_notice.ask("s1", 1e12)
            assert await planner.wait_explorers.ask([], timeout=10.0) == ["s1"]
            # The node's process is replaced: same id, another runtime and explorer.
            new = await node_rt2.spawn(Dummy, name="explorer")
            coord2 = node_rt2.ref(rt.address, "coordinator")
            await coord2.register_node.ask("s1", "spot", 1, new)
            assert await planner.wait_explorers.ask(["s1"], timeout=10.0) == ["s1"]
            assert (await planner.seen.ask())["s1"].address == node_rt2.address
            st = await coord.statistics.ask()
            assert st.nodes["s1"].status == "alive" and st.alive_spot_gpus == 1

    arun(body())


def test_constructor_rejects_a_model_that_is_not_a_config() -> None:
    with pytest.raises(ValueError, match="model"):
        Coordinator(prices=PRICES, run_id="r", model=3)  # type: ignore[arg-type]


def test_a_node_found_gone_that_registers_again_from_the_same_process_is_no_preemption() -> None:
    """The coordinator's runtime declares a live node lost (its liveness verdict after a stall);
    the node, still the same process, registers again with its incarnation token: the silent
    loss is taken back (``rejoined``), it is billed as if never gone, the planner has it again.
    A restarted process (new token) under the same id and address stays a new incarnation."""
    clock = FakeClock()

    async def body() -> None:
        async with Runtime(FAST) as rt, Runtime(FAST) as node_rt:
            planner = await rt.spawn(FakePlanner, name="planner")
            local = await rt.spawn(
                Coordinator,
                name="coordinator",
                prices=PRICES,
                run_id="r5",
                planner=planner,
                clock=clock,
            )
            coord = node_rt.ref(rt.address, "coordinator")  # as the node sees it
            explorer = await node_rt.spawn(Dummy, name="explorer")

            async def rejoin(token: str) -> None:
                """As spot_node does: the first call may learn the coordinator dropped us."""
                try:
                    await coord.register_node.ask("s1", "spot", 1, explorer, incarnation=token)
                except PeerLost:
                    await coord.register_node.ask("s1", "spot", 1, explorer, incarnation=token)

            await coord.register_node.ask("s1", "spot", 1, explorer, incarnation="pid-1")
            assert await planner.wait_explorers.ask(["s1"], timeout=10.0) == []
            clock.t += 1800.0
            rt.transport.peer_lost(node_rt.address, "no heartbeat for 4.00s")  # a false verdict
            st = await _until_gone(local, "s1")
            assert (st.nodes["s1"].status, st.preemptions_silent, st.rejoined) == ("gone", 1, 0)
            assert await planner.wait_explorers.ask([], timeout=10.0) == ["s1"]

            clock.t += 1800.0
            await rejoin("pid-1")
            st = await local.statistics.ask()
            node = st.nodes["s1"]
            assert (node.status, node.ended_at, node.rejoins) == ("alive", None, 1)
            assert (st.preemptions_silent, st.notice_unclean, st.rejoined) == (0, 0, 1)
            assert node.gpu_hours == pytest.approx(1.0)  # billed through the false loss
            assert await planner.wait_explorers.ask(["s1"], timeout=10.0) == ["s1"]

            # A restarted process: a new token, so a new incarnation and the loss stands.
            rt.transport.peer_lost(node_rt.address, "no heartbeat for 4.00s")
            await _until_gone(local, "s1")
            await rejoin("pid-2")
            st = await local.statistics.ask()
            assert (st.nodes["s1"].status, st.nodes["s1"].rejoins, st.nodes["s1"].gpu_hours) == (
                "alive",
                0,
                0.0,
            )
            assert (st.preemptions_silent, st.rejoined) == (1, 1)
            with pytest.raises(RemoteError, match="incarnation"):
                await coord.register_node.ask("s2", "spot", 1, explorer, incarnation="")

    arun(body())


def test_rollout_workers_get_weights_while_their_node_is_alive() -> None:
    """A node's rollout worker is subscribed beside its explorer, refused once the node is on
    notice, and unsubscribed with it; the answer passes the rollout offer on as given."""
    publisher = FakePublisher()
    offer = {"scheduler": None, "settings": {"noise_level": 1.0}, "timing": {"pull_batch": 8}}

    async def body() -> None:
        async with Runtime(FAST) as rt:
            coord = await rt.spawn(
                Coordinator,
                name="coordinator",
                prices=PRICES,
                run_id="r-rollouts",
                publisher=publisher,
                rollouts=offer,
            )
            worker = await rt.spawn(Dummy, name="rollout")
            answer = await coord.register_node.ask("a", "spot", 1, None, rt.address)
            assert answer["rollouts"] == offer
            assert await coord.register_rollout_worker.ask("a", worker)
            assert ("subscribe", "a/rollout") in publisher.calls
            with pytest.raises(RemoteError, match="unknown node 'zz'"):
                await coord.register_rollout_worker.ask("zz", worker)
            await coord.node_notice.ask("a", 1e12)
            assert ("unsubscribe", "a/rollout") in publisher.calls
            publisher.calls.clear()
            assert not await coord.register_rollout_worker.ask("a", worker)  # on notice
            assert ("subscribe", "a/rollout") not in publisher.calls

    arun(body())
