"""Spot node processes on loopback: join, receive weights, explore; SIGTERM = a notice and a
clean exit before the deadline (node_left); SIGKILL = a silent loss the coordinator counts."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spotlight.actors.cluster.coordinator import Coordinator, CoordinatorStats
from spotlight.actors.exploration.explorer import ExploreResult
from spotlight.actors.scheduling.scheduler import SchedulerActor, SchedulingConfig
from spotlight.actors.scheduling.work import SampleRequest
from spotlight.actors.spot.prices import Prices
from spotlight.actors.weights.publish import WeightPublisher
from spotlight.models.dit import build_policy
from spotlight.models.sampler import SamplerConfig
from spotlight.runtime import ActorRef, Runtime
from spotlight.runtime.config import TOKEN_ENV
from tests.runtime.helpers import FAST, REPO, arun

pytestmark = pytest.mark.timeout(240)

GRACE_S = 6.0


def _start(
    node_id: str, coordinator: str, tmp: Path, *extra: str
) -> tuple[subprocess.Popen[bytes], Path]:
    ready = tmp / f"{node_id}.ready"
    log = open(tmp / f"{node_id}.log", "wb")  # noqa: SIM115 - closed with the test's tmp dir
    proc = subprocess.Popen(
        [sys.executable, "-m", "spotlight.nodes.spot", "--coordinator", coordinator,
         "--node-id", node_id, "--notice-grace", str(GRACE_S), "--ready-file", str(ready),
         "--heartbeat-s", "0.25", "--pull-batch", "4", "--micro-batch", "4",
         "--log-level", "INFO", *extra],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    return proc, ready


async def _until(coord: ActorRef, check: object, what: str, within_s: float) -> CoordinatorStats:
    give_up = time.monotonic() + within_s
    while True:
        st: CoordinatorStats = await coord.statistics.ask()
        if check(st):  # type: ignore[operator]
            return st
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}: {st}")
        await asyncio.sleep(0.1)  # polling the coordinator's record, not a synchronisation


async def _ready(*files: Path, within_s: float = 150.0) -> None:
    give_up = time.monotonic() + within_s
    while not all(f.exists() for f in files):
        if time.monotonic() > give_up:
            raise AssertionError(f"not ready within {within_s}s: {files}")
        await asyncio.sleep(0.1)  # polling a file another process writes


async def _explore(
    sched: ActorRef, group: str, n: int, *, tries: int, between: Callable[[], None] = lambda: None
) -> list[Any] | None:
    """Submit ``n`` explore requests of "a red circle" and wait (``tries`` × 0.5 s) for the
    group's results; ``between`` runs after each empty wait (e.g. to check a node's log)."""
    requests = [
        SampleRequest(
            request_id=f"{group}/{i}", group_id=group, prompt="a red circle", seed=i,
            num_steps=2, deadline=None, kind="explore",
        )
        for i in range(n)
    ]  # fmt: skip
    await sched.submit.ask(requests)
    for _ in range(tries):
        groups = await sched.collect.ask(wait_s=0.5, timeout=20.0)
        if groups:
            return list(groups[0].results)
        between()
    return None


def test_spot_nodes_join_explore_and_leave_on_notice_or_silently(tmp_path: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    state = build_policy("tiny", seed=3).state_dict()

    async def body() -> None:
        async with Runtime(FAST) as rt:
            sched = await rt.spawn(
                SchedulerActor, name="explore_scheduler", config=SchedulingConfig()
            )
            publisher = WeightPublisher(chunk_bytes=1 << 20)
            coord = await rt.spawn(
                Coordinator,
                name="coordinator",
                prices=Prices(),
                run_id="t",
                publisher=publisher,
                scheduler=sched,
                sampler=SamplerConfig(num_steps=2, noise_level=0.7, sde_window=(0, 1)),
            )
            await coord.register_node.ask("od0", "ondemand", 1, None)
            publisher.publish(1, state)
            (a, ready_a), (b, ready_b) = (_start(n, rt.address, tmp_path) for n in ("sA", "sB"))
            procs.extend([a, b])

            await _ready(ready_a, ready_b)  # written once registered with the explorer
            st = await coord.statistics.ask()
            assert {"sA", "sB"} <= set(st.nodes)
            assert st.alive_spot_gpus == 2 and st.weight_version == 1

            # Weights reach the nodes in chunks; exploration requests come back explored.
            results = await _explore(sched, "e", 8, tries=600)
            assert results is not None and {r.version for r in results} == {1}
            # the scheduler here decodes the nodes' results: ExploreResult registered above
            assert all(isinstance(r, ExploreResult) for r in results)
            assert {r.worker_id for r in results} <= {"sA", "sB"}

            # SIGTERM: a notice with GRACE_S of lead; node_left arrives, exit 0 in time.
            t0 = time.monotonic()
            a.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(a.wait, GRACE_S + 30)
            took = time.monotonic() - t0
            assert rc == 0, (tmp_path / "sA.log").read_text()[-3000:]
            assert took < GRACE_S, f"exit took {took:.2f}s, grace {GRACE_S}s"
            st = await _until(coord, lambda s: s.nodes["sA"].status == "left", "sA left", 10.0)
            assert st.preemptions_notice == 1 and st.preemptions_silent == 0
            assert st.alive_spot_gpus == 1

            # SIGKILL: nothing runs on the node; the coordinator sees the peer loss.
            b.kill()
            await asyncio.to_thread(b.wait, 30)
            st = await _until(coord, lambda s: s.nodes["sB"].status == "gone", "sB gone", 30.0)
            assert st.preemptions_silent == 1 and st.preemptions_notice == 1
            assert st.alive_spot_gpus == 0 and st.nodes["sA"].status == "left"
            assert st.cost.gpu_hours["spot"] > 0
            await publisher.close()

    try:
        arun(body())
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_a_node_never_hangs_when_the_coordinator_is_absent_or_goes_away(tmp_path: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = []

    async def body() -> None:
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            nobody = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
        orphan, _ = _start("sX", nobody, tmp_path, "--register-timeout-s", "2")
        procs.append(orphan)
        async with Runtime(FAST) as rt:
            sched = await rt.spawn(SchedulerActor, name="explore_scheduler")
            coord = await rt.spawn(
                Coordinator, name="coordinator", prices=Prices(), run_id="t", scheduler=sched
            )
            node, ready = _start("sC", rt.address, tmp_path, "--coordinator-lost-s", "1")
            procs.append(node)
            await _ready(ready)
            assert (await coord.statistics.ask()).nodes["sC"].status == "alive"
        # The coordinator's runtime is gone: the node tries to re-join for 1 s, then exits.
        t0 = time.monotonic()
        rc = await asyncio.to_thread(node.wait, 60)
        assert rc == 0 and time.monotonic() - t0 < 30, (tmp_path / "sC.log").read_text()[-3000:]
        assert "coordinator gone" in (tmp_path / "sC.log").read_text()
        # Nobody to register with: give up after --register-timeout-s, exit status 1.
        assert await asyncio.to_thread(orphan.wait, 120) == 1
        said = (tmp_path / "sX.log").read_text()
        assert f"the coordinator at {nobody} did not answer" in said and TOKEN_ENV in said

    try:
        arun(body())
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_a_spot_node_explores_a_base_that_is_not_a_named_config(
    micro_base: Path, tmp_path: Path
) -> None:
    """The coordinator's model is the micro base checkpoint's config (no named config has its
    shapes): the node builds it from register_node's answer, loads the published micro
    weights and explores (rewards come back)."""
    from spotlight.models.bases import load_checkpoint

    policy, card = load_checkpoint(micro_base)
    assert card.config.name == "micro"
    procs: list[subprocess.Popen[bytes]] = []

    async def body() -> None:
        async with Runtime(FAST) as rt:
            sched = await rt.spawn(SchedulerActor, name="explore_scheduler")
            publisher = WeightPublisher(chunk_bytes=64 << 10)
            coord = await rt.spawn(
                Coordinator,
                name="coordinator",
                prices=Prices(),
                run_id="t",
                publisher=publisher,
                scheduler=sched,
                model=card.config,
                sampler=SamplerConfig(num_steps=2, noise_level=0.7, sde_window=(0, 1)),
            )
            publisher.publish(1, policy.state_dict())
            node, ready = _start("sM", rt.address, tmp_path)
            procs.append(node)
            await _ready(ready)
            assert (await coord.statistics.ask()).nodes["sM"].status == "alive"

            def node_is_healthy() -> None:
                log = (tmp_path / "sM.log").read_text()
                assert node.poll() is None and "rejects weights" not in log, log[-3000:]

            results = await _explore(sched, "m", 4, tries=240, between=node_is_healthy)
            assert results is not None, (tmp_path / "sM.log").read_text()[-3000:]
            assert {r.version for r in results} == {1} and {r.worker_id for r in results} == {"sM"}
            assert all(0.0 <= r.reward <= 1.0 and not r.skipped for r in results)
            await publisher.close()

    try:
        arun(body())
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
