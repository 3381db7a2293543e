"""Reward actors: the actor, the worker processes and the client that splits batches across
them (spotlight/actors/rewards/actor.py, reward_worker.py, reward_pool.py, reward_client.py)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from spotlight.actors.rewards.actor import INPUT_ERROR, RewardActor, RewardActorStats
from spotlight.actors.rewards.client import RemoteReward
from spotlight.actors.rewards.pool import RewardPool, RewardPoolConfig
from spotlight.models.rewards import build_reward
from spotlight.models.scenes import random_batch
from spotlight.runtime import Runtime
from spotlight.runtime.errors import RemoteError
from tests.procs import process_gone, wait_for
from tests.runtime.helpers import FAST, arun


def _batch(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Rendered scenes, each with the NEXT scene's caption: rewards spread over [0, 1] (a
    scene under its own caption scores 1)."""
    images, prompts = random_batch(np.random.default_rng(seed), n)
    return images, prompts[1:] + prompts[:1]


def test_reward_actor_scores_exactly_like_the_in_process_reward() -> None:
    images, prompts = _batch(24)
    expected = build_reward("geneval")(images, prompts)
    assert expected.std() > 0  # a batch that can tell a wrong order from the right one

    async def main() -> None:
        # Two runtimes: the batch crosses ZeroMQ and the codec (zero-copy frames), as it
        # does between the trainer and a reward worker.
        async with Runtime(FAST) as caller, Runtime(FAST) as host:
            await host.spawn(RewardActor, reward="geneval", name="reward")
            ref = caller.ref(host.address, "reward", cls=RewardActor)
            got = await ref.score.ask(images, prompts, timeout=20)
            assert got.dtype == np.float32 and np.array_equal(got, expected)
            stats = await ref.statistics.ask(timeout=20)
            assert isinstance(stats, RewardActorStats)
            assert (stats.calls, stats.images, stats.errors) == (1, 24, 0) and stats.seconds > 0

    arun(main())


def test_bad_input_is_a_typed_error_and_the_actor_keeps_serving() -> None:
    images, prompts = _batch(4)

    async def main() -> None:
        async with Runtime(FAST) as caller, Runtime(FAST) as host:
            await host.spawn(RewardActor, reward="geneval", name="reward")
            ref = caller.ref(host.address, "reward", cls=RewardActor)
            bad = [
                (images.astype(np.float32), prompts, "uint8"),  # wrong dtype
                (images[..., :2].copy(), prompts, "B×H×W×3"),  # wrong shape
                (images, prompts[:3], "one prompt per image"),  # count mismatch
                (images, ["a purple dragon", *prompts[1:]], "purple"),  # outside the grammar
            ]
            for imgs, ps, needle in bad:
                with pytest.raises(RemoteError) as info:
                    await ref.score.ask(imgs, ps, timeout=20)
                assert info.value.type_name == INPUT_ERROR and needle in info.value.message
            got = await ref.score.ask(images, prompts, timeout=20)  # still serving
            assert np.array_equal(got, build_reward("geneval")(images, prompts))
            stats = await ref.statistics.ask(timeout=20)
            assert (stats.calls, stats.errors, stats.bad_inputs) == (1, 4, 4)

    arun(main())


async def _pool(rt: Runtime, tmp_path: Path, workers: int) -> RewardPool:
    pool = RewardPool(
        rt,
        RewardPoolConfig(workers=workers, start_timeout_s=60.0, heartbeat_s=0.25),
        tmp_path / "rewards.log",
    )
    await pool.start()
    await pool.roster.wait_ready(60.0)
    log = (tmp_path / "rewards.log").read_text() if (tmp_path / "rewards.log").exists() else ""
    assert sorted(pool.roster.workers) == [f"r{i}" for i in range(workers)], log[-2000:]
    return pool


async def _close(pool: RewardPool) -> None:
    await pool.close()
    assert all(process_gone(pid) for pid in pool.pids)


@pytest.mark.timeout(120)
def test_client_across_two_worker_processes_equals_the_in_process_reward(
    tmp_path: Path,
) -> None:
    images, prompts = _batch(40, seed=1)
    expected = build_reward("geneval")(images, prompts)

    async def main() -> None:
        async with Runtime(FAST) as rt:
            pool = await _pool(rt, tmp_path, 2)
            try:
                client = RemoteReward(
                    pool.roster, build_reward("geneval"), timeout_s=20, chunk_images=6
                )
                got = await asyncio.to_thread(client, images, prompts)  # as the trainer does
                assert got.dtype == np.float32 and np.array_equal(got, expected)
                s = client.statistics()
                assert (s.calls, s.images, s.chunks, s.remote_images) == (1, 40, 7, 40)
                assert (s.local_images, s.retries) == (0, 0)
                # pull: both workers took chunks (each drain pulls one before any reply)
                assert set(s.by_worker) == {"r0", "r1"} and sum(s.by_worker.values()) == 7
                stats = await pool.statistics()
                assert sum(a["images"] for a in stats["actors"].values()) == 40
                with pytest.raises(RuntimeError, match="worker thread"):
                    client(images, prompts)  # on the loop's own thread: refused, no deadlock
                with pytest.raises(ValueError, match="purple"):  # bad input: the caller's error
                    await asyncio.to_thread(client, images[:2], ["a purple dragon", prompts[1]])
            finally:
                await _close(pool)

    arun(main())


@pytest.mark.timeout(120)
def test_a_worker_killed_mid_batch_is_retried_and_none_left_falls_back_in_process(
    tmp_path: Path,
) -> None:
    images, prompts = _batch(30, seed=2)
    expected = build_reward("geneval")(images, prompts)

    async def main() -> None:
        async with Runtime(FAST) as rt:
            pool = await _pool(rt, tmp_path, 2)
            try:
                client = RemoteReward(
                    pool.roster, build_reward("geneval"), timeout_s=20, chunk_images=5
                )
                r0 = pool.procs["r0"].pid
                os.kill(r0, signal.SIGSTOP)  # r0 takes a chunk and cannot answer it
                call = asyncio.ensure_future(asyncio.to_thread(client, images, prompts))
                # Both drains send their first ask in the same loop turn, so once any ask is
                # in flight r0 holds a chunk (and keeps it: it is stopped).
                await wait_for(lambda: rt.statistics()["pending_calls"] >= 1, "chunks sent")
                os.kill(r0, signal.SIGKILL)  # killed mid-batch, its chunk unanswered
                got = await asyncio.wait_for(call, 60)
                assert np.array_equal(got, expected)
                s = client.statistics()
                assert s.retries == 1 and s.remote_images == 30 and s.local_images == 0
                assert s.by_worker.get("r0", 0) == 0 and s.by_worker["r1"] == 6
                # no worker left: the chunks are computed in process, counted, same scores
                os.kill(pool.procs["r1"].pid, signal.SIGKILL)
                got = await asyncio.wait_for(asyncio.to_thread(client, images, prompts), 60)
                assert np.array_equal(got, expected)
                s = client.statistics()
                assert s.local_images == 30 and s.calls == 2 and s.images == 60
                await wait_for(lambda: not pool.roster.workers, "both workers removed")
                assert pool.roster.lost == 2
            finally:
                await _close(pool)

    arun(main())


def test_a_reward_of_your_own_by_module_path() -> None:
    """What lets `spotlight run --set trainer.reward=pkg.mod:factory` reach reward workers."""
    from tests.micro import redness

    assert build_reward("tests.micro:redness_reward") is redness
    with pytest.raises(ValueError, match=r"cannot import 'nope' from 'tests.micro'.*geneval"):
        build_reward("tests.micro:nope")
    with pytest.raises(ValueError, match=r"unknown reward 'gen'; valid rewards: checks, geneval"):
        build_reward("gen")
