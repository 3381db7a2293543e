"""Elastic SP group on CPU/gloo: member processes on loopback, the scheduler in this process.

Tolerance 1e-5 (float32): the sharded forward runs the same per-head arithmetic as the
single-process model; only the order of some reductions differs (attention over a head
subset), which moves the latent by ~1e-7 per step. The same tolerance holds across degree
changes mid-trajectory, since each step is computed from the kept boundary latent.

The four member processes are shared by the tests of this module (starting them dominates
the run); each test uses its own scheduler (a new group id, so new store prefixes) over the
live ones. Processes are killed by PID at module teardown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from spotlight.actors.sp.group import SPGroupConfig, SPGroupScheduler, check_group_config
from spotlight.actors.sp.local import LocalSPCluster
from spotlight.models.dit import build_policy
from spotlight.models.sampler import SamplerConfig, sample
from spotlight.models.ulysses import largest_valid_degree, validate_degree
from spotlight.runtime import ActorRef, Runtime, RuntimeConfig
from tests.runtime.helpers import FAST, arun

TOL = 1e-5
PROMPTS = ["a red circle", "two blue squares"]
SEEDS = [11, 12]
SAMPLER = {"num_steps": 4, "noise_level": 0.7}
CONFIG = SPGroupConfig(
    name="t", collective_timeout_s=10.0, probe_interval_s=0.5, probe_timeout_s=1.0
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSPCluster]:
    with LocalSPCluster(tmp_path_factory.mktemp("sp")) as c:
        c.wait_ready(c.launch(4, seed=0), timeout_s=120)
        yield c


def reference(steps: int) -> torch.Tensor:
    policy = build_policy("tiny", seed=0).eval()
    with torch.no_grad():
        text = policy.encode_prompts(PROMPTS)
        cfg = SamplerConfig(**{**SAMPLER, "num_steps": steps})
        shape = (policy.config.num_tokens, policy.config.token_dim)
        state = sample(lambda x, s: policy(x, s, text), SEEDS, shape, cfg)
    return state.x_BNC


def refs(rt: Runtime, cluster: LocalSPCluster, n: int) -> list[ActorRef]:
    alive = [w for w in cluster.workers if w.alive][:n]
    return [rt.ref(w.address, cluster.member_name()) for w in alive]


async def run_sample(sched: ActorRef, steps: int) -> torch.Tensor:
    out = await sched.sample.ask(
        PROMPTS, SEEDS, {**SAMPLER, "num_steps": steps}, "sde", timeout=120
    )
    x: torch.Tensor = out["x_BNC"]
    return x


@pytest.mark.timeout(240)
def test_degrees_2_and_4_and_reform_4_2_4(cluster: LocalSPCluster) -> None:
    want = reference(SAMPLER["num_steps"])

    async def main() -> list[tuple[int, int, float]]:
        async with Runtime(FAST) as rt:
            sched = await rt.spawn(SPGroupScheduler, CONFIG)
            for m in refs(rt, cluster, 4):
                await sched.join.ask(m, timeout=30)
            seen = []
            for cap in (2, 4, 2, 4):
                await sched.set_max_degree.ask(cap)
                got = await run_sample(sched, SAMPLER["num_steps"])
                st = await sched.statistics.ask()
                seen.append((st["degree"], st["epoch"], float((got - want).abs().max())))
            st = await sched.statistics.ask()
            assert st["reforms"] == 4 and st["step_failures"] == 0
            assert st["members"] == {"active": 4}
            return seen

    seen = arun(main())
    assert [d for d, _, _ in seen] == [2, 4, 2, 4]
    assert [e for _, e, _ in seen] == [0, 1, 2, 3]
    for degree, _, err in seen:
        assert err < TOL, f"degree {degree}: max error {err}"


@pytest.mark.timeout(240)
def test_kill_member_mid_step_reforms_and_matches(cluster: LocalSPCluster) -> None:
    steps = 8
    want = reference(steps)
    victim = [w for w in cluster.workers if w.alive][3]

    async def main() -> tuple[torch.Tensor, dict[str, Any]]:
        async with Runtime(FAST) as rt:
            sched = await rt.spawn(SPGroupScheduler, CONFIG)
            for m in refs(rt, cluster, 4):
                await sched.join.ask(m, timeout=30)
            task = asyncio.create_task(run_sample(sched, steps))
            deadline = time.monotonic() + 120
            while True:  # wait until a step of the degree-4 epoch is in flight past step 2
                st = await sched.statistics.ask()
                req = st["request"]
                if st["phase"] == "stepping" and req is not None and req[1] >= 2:
                    break
                assert time.monotonic() < deadline and not task.done()
                await asyncio.sleep(0.002)
            cluster.kill(victim)
            got = await asyncio.wait_for(task, 120)
            return got, await sched.statistics.ask()

    got, st = arun(main())
    assert float((got - want).abs().max()) < TOL
    assert st["reforms"] >= 2 and st["degree"] == 2  # 3 survivors: degree 2, one spare
    assert st["requests"] == 1 and st["failed_requests"] == 0
    # The kill landed mid-step (a step failed and was redone) or between steps (the next
    # step failed): either way one step was redone in the new epoch.
    assert st["step_failures"] >= 1 and st["lost"] + st["members"].get("suspect", 0) >= 1
    print("kill test stats:", {k: st[k] for k in ("epoch", "reforms", "reform_last_s", "lost")})
    assert st["members"].get("active") == 2 and st["members"].get("spare") == 1


@pytest.mark.slow  # launches another process (~5-10 s); the copy itself is in test_weight_share
@pytest.mark.timeout(240)
def test_joiner_copies_weights_from_peer_and_serves(cluster: LocalSPCluster) -> None:
    # The joiner is built from another seed: only a correct weight copy reproduces the result.
    joiner = cluster.launch(1, seed=123)
    cluster.wait_ready(joiner)
    want = reference(SAMPLER["num_steps"])

    async def main() -> tuple[torch.Tensor, dict[str, Any], dict[str, Any]]:
        async with Runtime(FAST) as rt:
            sched = await rt.spawn(SPGroupScheduler, CONFIG)
            old = next(m for m in refs(rt, cluster, 8) if m.address != joiner[0].address)
            await sched.join.ask(old, timeout=30)
            await run_sample(sched, 1)
            assert (await sched.statistics.ask())["degree"] == 1
            jref = rt.ref(joiner[0].address, cluster.member_name())
            info = await sched.join.ask(jref, True, timeout=60)
            got = await run_sample(sched, SAMPLER["num_steps"])
            return got, info, await sched.statistics.ask()

    got, info, st = arun(main())
    assert info["copy"]["path"] == "shm" and info["copy"]["bytes"] > 1_000_000
    assert st["degree"] == 2 and st["members"] == {"active": 2}  # the joiner holds half the heads
    assert float((got - want).abs().max()) < TOL


def test_bad_configs_name_valid_choices() -> None:
    with pytest.raises(ValueError, match=r"does not divide 4 heads; valid degrees: 1, 2, 4"):
        validate_degree(3, 4, 64)
    with pytest.raises(ValueError, match=r"more members than tokens.*valid degrees: 1, 2, 4"):
        validate_degree(8, 8, 4)
    with pytest.raises(ValueError, match=r"does not divide 4 heads; valid degrees: 1, 2, 4"):
        check_group_config(3, 4, num_heads=4, num_tokens=64)
    with pytest.raises(ValueError, match=r"needs 4 members, only 3 given; .*: 1, 2"):
        check_group_config(4, 3, num_heads=4, num_tokens=64)
    assert largest_valid_degree(3, 4, 64) == 2
    with pytest.raises(ValueError, match="max_degree must be >= 1"):
        SPGroupConfig(max_degree=0)
    with pytest.raises(ValueError, match="probe_timeout_s must be > 0"):
        SPGroupConfig(probe_timeout_s=0)


def test_reference_is_deterministic(tmp_path: Path) -> None:
    # Guards the comparisons above: two single-process runs agree exactly.
    assert torch.equal(reference(2), reference(2))


@pytest.mark.timeout(240)
def test_member_dead_while_forming_starts_another_epoch(cluster: LocalSPCluster) -> None:
    """A spare dies just before the group grows to include it: the rendezvous of that epoch
    cannot complete, the probe finds the dead member and the next epoch forms without it."""
    want = reference(SAMPLER["num_steps"])
    alive = [w for w in cluster.workers if w.alive]
    assert len(alive) >= 3, "needs three live members (the kill test leaves three)"

    # Heartbeats slow enough (5 s) that the probe, not the heartbeat, finds the dead spare.
    slow_hb = RuntimeConfig(heartbeat_s=1.0, missed_heartbeats=5, ask_timeout_s=20.0)

    async def main() -> tuple[torch.Tensor, dict[str, Any], list[list[Any]]]:
        async with Runtime(slow_hb) as rt:
            sched = await rt.spawn(SPGroupScheduler, CONFIG)
            for w in alive:
                await sched.join.ask(rt.ref(w.address, cluster.member_name()), timeout=30)
            await sched.set_max_degree.ask(1)
            await run_sample(sched, 1)  # degree 1: every other member is a spare
            cluster.kill(alive[1])
            t0 = time.time()
            await sched.set_max_degree.ask(4)  # re-form now, before any heartbeat notices
            got = await run_sample(sched, SAMPLER["num_steps"])
            return got, await sched.statistics.ask(), await sched.events.ask(t0)

    dead = f"{alive[1].address}/{cluster.member_name()}"
    got, st, events = arun(main())
    assert float((got - want).abs().max()) < TOL
    forms = [d for _, k, d in events if k == "form"]
    assert dead in forms[0]["members"], f"first attempt should include the dead spare: {forms}"
    assert dead not in forms[-1]["members"] and forms[-1]["epoch"] == st["epoch"]
    assert len(forms) >= 2 and st["failed_requests"] == 0
