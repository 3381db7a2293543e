"""`spotlight run`'s reward workers: start them, hand the trainer its RewardFn, stop them.

With ``rewards.workers: N > 0`` (see ``RewardsSection``) rank 0 starts N reward worker
processes (spotlight/actors/rewards/pool.py) and gives the trainer loop a ``RemoteReward``
(spotlight/actors/rewards/client.py) as its ``reward_fn``; with 0 nothing here runs and the
trainer builds its in-process reward as before.

Metrics: after every reward call a ``rewards`` record (the client's cumulative
``RemoteRewardStats`` plus the registered worker count); at the end one ``reward_pool``
record with each actor's ``RewardActorStats``. The report gets both under
``stats.rewards`` and a summary under ``rewards``.

Order at the end of the run (``stop``): the trainer has stopped calling (it finished or was
cancelled) -> actor statistics asked (bounded) -> workers SIGINT, then SIGKILL by PID after
``exit_timeout_s`` -> reaped. ``stop`` is shielded by the caller so a second Ctrl-C still
kills the workers.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spotlight.actors.monitor.metrics import MetricsPublisher
    from spotlight.actors.rewards.client import RemoteReward, RemoteRewardStats
    from spotlight.actors.rewards.pool import RewardPool
    from spotlight.config import SystemConfig
    from spotlight.runtime import Runtime

__all__ = ["RunRewards", "reward_summary"]

log = logging.getLogger("spotlight.nodes.ondemand_rewards")

STATS_TIMEOUT_S = 5.0


@dataclass
class RunRewards:
    """The reward pool and the trainer's client of it."""

    pool: RewardPool
    client: RemoteReward

    @classmethod
    async def start(
        cls, rt: Runtime, cfg: SystemConfig, run_dir: Path, metrics: MetricsPublisher | None
    ) -> RunRewards | None:
        """Launch ``cfg.rewards.workers`` workers (None when 0); does not wait for them."""
        if cfg.rewards.workers == 0:
            return None
        from spotlight.actors.monitor.metrics import plain
        from spotlight.actors.monitor.records import RewardsRecord
        from spotlight.actors.rewards.client import RemoteReward
        from spotlight.actors.rewards.pool import RewardPool
        from spotlight.models.rewards import build_reward

        r = cfg.rewards
        pool = RewardPool(rt, r.pool_config(cfg.trainer.reward), run_dir / "rewards.log")
        loop = asyncio.get_running_loop()

        def publish(stats: RemoteRewardStats) -> None:  # on the loop: the roster is read here
            if metrics is not None:
                fields = plain(stats)
                metrics.publish_record(RewardsRecord(workers=len(pool.roster.workers), **fields))

        def on_call(stats: RemoteRewardStats) -> None:  # the trainer's torch thread
            loop.call_soon_threadsafe(publish, stats)

        client = RemoteReward(
            pool.roster,
            build_reward(cfg.trainer.reward),
            loop=loop,
            timeout_s=r.timeout_s,
            chunk_images=r.chunk_images,
            ready_within_s=pool.ready_within_s,
            on_call=on_call,
        )
        try:
            await pool.start()
        except BaseException:
            await asyncio.shield(pool.close())  # whatever was launched is killed by PID
            raise
        return cls(pool, client)

    async def stop(self, metrics: MetricsPublisher | None) -> dict[str, Any]:
        """Actor statistics, then every worker stopped and reaped; the report's record."""
        from spotlight.actors.monitor.metrics import plain

        try:
            workers = await self.pool.statistics(STATS_TIMEOUT_S)
        finally:
            await self.pool.close()
        workers["exit_codes"] = dict(self.pool.exit_codes)
        if metrics is not None:
            metrics.publish("reward_pool", **workers)
        return {"client": plain(self.client.statistics()), "pool": workers}


def reward_summary(stats: dict[str, Any] | None, workers: int) -> dict[str, Any]:
    """report.json's ``rewards``: where the trainer's images were scored."""
    if stats is None:
        return {"workers": workers, "mode": "in-process"}
    client, pool = stats["client"], stats["pool"]
    return {
        "workers": workers,
        "mode": "actors",
        "calls": client["calls"],
        "images": client["images"],
        "remote_images": client["remote_images"],
        "local_images": client["local_images"],
        "retries": client["retries"],
        "seconds": client["seconds"],
        "workers_lost": pool["lost"],
        "pids": pool["pids"],
    }
