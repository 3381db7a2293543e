"""Pooled rollouts: the trainer's samples drawn by pull-scheduled rollout workers.

What must hold: a trainer loop whose rollouts go through the pool trains like one that
samples in its own thread (same seeds, same noise; the log-probs differ only by the
rounding of other batch shapes); a worker holding other weights hands back on-policy
requests instead of sampling them; a batched worker draws the same trajectories as batch-1
sampling within float rounding; regrouping checks every sample's seed and step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path

import pytest
import torch

from spotlight.actors.rollout.pool import LOCAL_WORKER, RolloutPool
from spotlight.actors.rollout.worker import RolloutSettings, RolloutWorker
from spotlight.actors.scheduling.scheduler import SchedulerActor, SchedulingConfig
from spotlight.actors.scheduling.work import SampleRequest
from spotlight.actors.trainer.loop import TrainerLoop, TrainerLoopConfig
from spotlight.models.dit import build_policy
from spotlight.models.flow_grpo import FlowGrpoConfig, regroup
from spotlight.models.grpo import GrpoConfig
from spotlight.models.sampler import SamplerConfig, TrajectoryState, concat_states, sample
from spotlight.runtime import Runtime
from tests.micro import MICRO, redness, save_micro_base
from tests.runtime.helpers import FAST

TIMING = SchedulingConfig(
    lease_ttl_s=10.0, heartbeat_s=0.2, expiry_period_s=0.05, commit_interval=2, idle_pull_s=0.02
)
SAMPLER = SamplerConfig(num_steps=3, noise_level=0.9, sde_window=(0, 2))


def _loop_config(base: Path, iterations: int) -> TrainerLoopConfig:
    algo = FlowGrpoConfig(
        prompts_per_iter=2,
        group_size=3,
        micro_batch=4,
        sampler=SAMPLER,
        grpo=GrpoConfig(clip_range=1e-2),
        lr=1e-3,
    )
    return TrainerLoopConfig(
        algo=algo,
        iterations=iterations,
        val_every=2,
        ckpt_every=2,
        val_per_kind=1,
        val_seeds=2,
        seed=5,
        base=str(base),
    )


@pytest.mark.timeout(120)
def test_pooled_rollouts_train_like_in_thread_rollouts(tmp_path: Path) -> None:
    base = save_micro_base(tmp_path / "base", seed=3)
    cfg = _loop_config(base, 3)
    plain = TrainerLoop(cfg, tmp_path / "plain", reward_fn=redness)
    asyncio.run(plain.run())

    async def pooled_run() -> tuple[TrainerLoop, dict]:
        async with Runtime(FAST) as rt:
            pool = await RolloutPool.start(
                rt,
                TIMING,
                settings=RolloutSettings.like(SAMPLER, batch_held=True),
                timeout_s=60.0,
            )
            loop = TrainerLoop(cfg, tmp_path / "pooled", reward_fn=redness, rollouts=pool)
            await loop.run()
            stats = await pool.statistics()
            await pool.close()
            return loop, stats

    pooled, stats = asyncio.run(pooled_run())
    assert pooled.iteration == plain.iteration == 3
    # Every sample of every iteration came back through the pool, exactly once.
    assert stats["samples_by_worker"] == {LOCAL_WORKER: 3 * 6}
    assert stats["scheduler"].leases.stale_results == 0
    a = plain.policy.state_dict()
    b = pooled.policy.state_dict()
    start = build_policy(MICRO, seed=3).state_dict()
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-4, "nothing trained"
    # Same seeds, same noise, same weights: the pooled samples differ from the in-thread
    # ones only by matmul rounding of other batch shapes (1e-7 per step), which the Adam
    # updates (lr 1e-3) carry into the weights as ~1e-6.
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=0, msg=name)
    records = [r for r in pooled.trainer_log.records if r["kind"] == "iteration"]
    expected = [r for r in plain.trainer_log.records if r["kind"] == "iteration"]
    for got, want in zip(records, expected, strict=True):
        # Same images to the last uint8 level (a wrong SDE window would change them).
        assert abs(got["reward_mean"] - want["reward_mean"]) < 1e-6, (got, want)
        assert got["first_ratio_dev"] < 1e-5, got


@pytest.mark.timeout(300)
def test_the_trainers_own_worker_steps_on_the_trainers_torch_thread(tmp_path: Path) -> None:
    """Issue 21 §3: with a dedicated torch thread every forward of the process (the local
    rollout worker's steps, the update, validation) runs on that one thread, so one OpenMP
    team stays hot (before, each step went to whichever thread of the loop's pool was free)."""
    base = save_micro_base(tmp_path / "base", seed=3)
    seen: set[str] = set()

    async def run() -> dict:
        async with Runtime(FAST) as rt:
            pool = await RolloutPool.start(
                rt, TIMING, settings=RolloutSettings.like(SAMPLER, batch_held=True), timeout_s=60.0
            )
            cfg = dataclasses.replace(_loop_config(base, 2), dedicated_torch_thread=True)
            loop = TrainerLoop(cfg, tmp_path / "run", reward_fn=redness, rollouts=pool)
            real_setup = loop._setup

            def setup() -> None:
                real_setup()
                loop.policy.transformer.register_forward_hook(
                    lambda *_: seen.add(threading.current_thread().name)
                )

            loop._setup = setup  # type: ignore[method-assign]
            await loop.run()
            stats = await pool.statistics()
            await pool.close()
            return stats

    stats = asyncio.run(run())
    assert stats["samples_by_worker"] == {LOCAL_WORKER: 2 * 6}  # the local worker sampled
    assert len(seen) == 1 and next(iter(seen)).startswith("trainer-torch"), seen


def test_a_worker_with_other_weights_leaves_on_policy_requests_queued(tmp_path: Path) -> None:
    """Version 1 is asked for: the worker at version 0 is not given it (it stays queued, no
    lease churn) until version 1 arrives; then it samples it with those weights (bit-equal
    to sampling them here)."""
    old = build_policy(MICRO, seed=0)
    new = build_policy(MICRO, seed=1)
    request = SampleRequest(
        request_id="r1.0",
        prompt="a red circle",
        seed=11,
        num_steps=3,
        kind="rollout",
        group_id="r1",
        weight_version=1,
    )

    async def main() -> tuple[dict, object]:
        async with Runtime(FAST) as rt:
            sched = await rt.spawn(SchedulerActor, config=TIMING, name="s")
            worker_model = build_policy(MICRO, seed=0)
            w = await rt.spawn(
                RolloutWorker,
                scheduler=sched,
                worker_id="spot-a",
                model=worker_model,
                timing=TIMING,
                settings=RolloutSettings(noise_level=0.9),
            )
            await w.load_weights.ask(0, old.state_dict())
            await sched.submit.ask([request])
            await sched.submit.ask([dataclasses.replace(request, request_id="v0", group_id="v0",
                                                        weight_version=0)])  # fmt: skip
            groups = await sched.collect.ask([], wait_s=20.0)  # v0: what it can sample
            assert [g.group_id for g in groups] == ["v0"]
            stats = await sched.statistics.ask()  # r1.0 was passed over, never leased
            assert stats.queue_depth == 1 and stats.leases.leases_granted == 1
            await sched.collect.ask(["v0"], wait_s=0.0)
            await w.load_weights.ask(1, new.state_dict())
            groups = await sched.collect.ask([], wait_s=20.0)
            return groups[0].results[0], await w.statistics.ask()

    result, stats = asyncio.run(main())
    assert stats.weight_version == 1  # type: ignore[attr-defined]
    assert stats.version_releases == 0  # type: ignore[attr-defined]
    text = new.encode_prompts(["a red circle"])
    shape = (MICRO.num_tokens, MICRO.token_dim)
    cfg = SamplerConfig(num_steps=3, noise_level=0.9)
    want = sample(lambda x, s: new(x, s, text), [11], shape, cfg)
    got = TrajectoryState.from_dict(result)
    assert result["worker_id"] == "spot-a"
    assert torch.equal(got.x_BNC, want.x_BNC)


def test_batched_worker_matches_batch_one_sampling(tmp_path: Path) -> None:
    policy = build_policy(MICRO, seed=4)
    requests = [
        SampleRequest(
            request_id=f"q{i}",
            prompt=["a red circle", "two blue squares"][i % 2],
            seed=100 + i,
            num_steps=4,
            kind="rollout",
            group_id="q",
        )
        for i in range(5)
    ]

    async def main() -> tuple[list, object]:
        async with Runtime(FAST) as rt:
            sched = await rt.spawn(SchedulerActor, config=TIMING, name="s")
            timing = SchedulingConfig(
                lease_ttl_s=10.0, heartbeat_s=0.2, commit_interval=1, pull_batch=5, idle_pull_s=0.02
            )
            w = await rt.spawn(
                RolloutWorker,
                scheduler=sched,
                worker_id="w",
                model=policy,
                timing=timing,
                settings=RolloutSettings(noise_level=0.9, batch_held=True),
            )
            await sched.submit.ask(requests)
            groups = await sched.collect.ask([], wait_s=30.0)
            return groups[0].results, await w.statistics.ask()

    results, stats = asyncio.run(main())
    assert stats.batches == 4  # type: ignore[attr-defined]  # 4 steps of all 5 at once
    shape = (MICRO.num_tokens, MICRO.token_dim)
    cfg = SamplerConfig(num_steps=4, noise_level=0.9)
    for r, res in zip(requests, results, strict=True):
        text = policy.encode_prompts([r.prompt])
        want = sample(lambda x, s, t=text: policy(x, s, t), [r.seed], shape, cfg)
        got = TrajectoryState.from_dict(res)
        # The same noise; only the rounding of a batch of 5 against a batch of 1 differs.
        torch.testing.assert_close(got.x_BNC, want.x_BNC, atol=1e-5, rtol=0)
        for lp_got, lp_want in zip(got.log_probs, want.log_probs, strict=True):
            torch.testing.assert_close(lp_got, lp_want, atol=1e-5, rtol=0, equal_nan=True)


def test_regroup_rebuilds_chunks_and_refuses_misplaced_samples() -> None:
    policy = build_policy(MICRO, seed=0)
    shape = (MICRO.num_tokens, MICRO.token_dim)
    prompts = ["a red circle"] * 3
    seeds = [1, 2, 3]
    text = policy.encode_prompts(prompts[:1])
    singles = [sample(lambda x, s: policy(x, s, text), [sd], shape, SAMPLER) for sd in seeds]
    chunks, chunk_prompts = regroup(singles, prompts, seeds, SAMPLER, micro_batch=2)
    assert [c.seeds for c in chunks] == [(1, 2), (3,)]
    assert chunk_prompts == [prompts[:2], prompts[2:]]
    assert torch.equal(chunks[0].latents[2], concat_states(singles[:2]).latents[2])
    with pytest.raises(ValueError, match=r"trajectory 1 holds seeds \(3,\)"):
        regroup([singles[0], singles[2], singles[1]], prompts, seeds, SAMPLER, micro_batch=2)
    with pytest.raises(ValueError, match="3 trajectories for 2 prompts"):
        regroup(singles, prompts[:2], seeds[:2], SAMPLER, micro_batch=2)


@pytest.mark.timeout(120)
def test_a_spot_worker_lost_mid_trajectory_costs_no_sample(tmp_path: Path) -> None:
    """A second worker (a spot node's, in its own runtime, slow) takes some of iteration 0's
    requests and vanishes after committing; its leases expire and the trainer's own worker
    resumes them from the commits. The iteration trains on every sample exactly once, with
    the same result as sampling in the trainer's thread."""
    base = save_micro_base(tmp_path / "base", seed=3)
    cfg = _loop_config(base, 1)
    plain = TrainerLoop(cfg, tmp_path / "plain", reward_fn=redness)
    asyncio.run(plain.run())
    timing = SchedulingConfig(
        lease_ttl_s=1.0, heartbeat_s=0.2, expiry_period_s=0.05, commit_interval=2, idle_pull_s=0.02
    )
    settings = RolloutSettings.like(SAMPLER, batch_held=True)

    async def run_with_a_loss() -> tuple[TrainerLoop, dict, int]:
        async with Runtime(FAST) as rt:
            pool = await RolloutPool.start(rt, timing, settings=settings, timeout_s=60.0)
            spot_rt = Runtime(FAST)
            await spot_rt.start()
            spot_policy = build_policy(MICRO, seed=0)
            spot_policy.load_state_dict(build_policy(MICRO, seed=3).state_dict())
            spot = await spot_rt.spawn(
                RolloutWorker,
                scheduler=spot_rt.ref(rt.address, "rollout_scheduler"),
                worker_id="spot-x/rollout",
                model=spot_policy,
                timing=timing,
                # a step of 1 s: the kill below lands inside its third step, after the commit
                settings=RolloutSettings.like(SAMPLER, batch_held=True, min_step_s=1.0),
                version=lambda: 0,
            )
            loop = TrainerLoop(cfg, tmp_path / "pooled", reward_fn=redness, rollouts=pool)
            training = asyncio.create_task(loop.run())
            steps = 0
            while steps < 2:  # it committed its requests at step 2 (of 3)
                assert not training.done(), "the iteration ended before the spot worker worked"
                steps = (await spot.statistics.ask()).steps_run
                await asyncio.sleep(0.02)
            await spot_rt.shutdown("test: the spot node vanishes")  # no release, no drain
            await training
            stats = await pool.statistics()
            await pool.close()
            return loop, stats, steps

    pooled, stats, spot_steps = asyncio.run(run_with_a_loss())
    leases = stats["scheduler"].leases
    assert leases.expired >= 1 and leases.completed == 6
    assert stats["samples_by_worker"] == {LOCAL_WORKER: 6}  # the lost worker completed none
    assert leases.steps_recomputed < spot_steps  # resumed from its commit, not from step 0
    a, b = plain.policy.state_dict(), pooled.policy.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=0, msg=name)


def test_rollouts_nobody_can_sample_end_in_a_timeout_naming_the_queue() -> None:
    """A pool whose only worker holds other weights cannot serve version 0: ``sample`` gives
    up after ``timeout_s`` with RolloutTimeout naming the queue, instead of hanging; asking
    before any worker is attached is refused at once."""
    from spotlight.actors.rollout.pool import RolloutTimeout
    from spotlight.runtime.errors import SpotlightError

    async def main() -> None:
        async with Runtime(FAST) as rt:
            pool = await RolloutPool.start(
                rt, TIMING, settings=RolloutSettings.like(SAMPLER), timeout_s=0.5
            )
            with pytest.raises(SpotlightError, match="before attach"):
                await pool.sample(0, 0, ["a red circle"], [1], 3)
            await pool.attach(build_policy(MICRO, seed=0), lambda: 7)  # never version 0
            with pytest.raises(RolloutTimeout, match=r"rollouts of r0 not complete.*queued 1"):
                await pool.sample(0, 0, ["a red circle"], [1], 3)
            await pool.close()

    asyncio.run(main())
