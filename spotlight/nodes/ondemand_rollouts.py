"""`spotlight run`'s rollout pool: started beside the trainer, summarised in the report.

Only with ``rollout.workers`` resolving to ``pool`` (spotlight/config/sections.py): the
trainer's samples then go through the rollout scheduler, pulled by the trainer's own
rollout worker and by every spot node's (spotlight/actors/rollout/pool.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spotlight.actors.rollout.pool import RolloutPool
    from spotlight.config import RolloutSection
    from spotlight.models.sampler import SamplerConfig
    from spotlight.runtime import Runtime

__all__ = ["rollout_stats", "rollout_summary", "start_rollout_pool"]

CALL_TIMEOUT_S = 30.0
IDLE_PULL_S = 0.05
"""An idle worker asks again this often: rollouts are on the trainer's critical path."""


async def start_rollout_pool(
    rt: Runtime, section: RolloutSection, sampler: SamplerConfig, *, commits: bool = True
) -> RolloutPool:
    """The rollout scheduler in ``rt``, its workers sampling exactly as ``sampler`` does.

    ``commits=False`` is the checkpoint/restart baseline (``spot.fault_mode: restart``):
    workers never commit and hand nothing back, so a lost request starts over from step 0,
    as a TorchElastic-style restart of the sampling job would."""
    from spotlight.actors.rollout.pool import RolloutPool
    from spotlight.actors.rollout.worker import RolloutSettings

    timing = section.scheduling(idle_pull_s=IDLE_PULL_S, call_timeout_s=CALL_TIMEOUT_S)
    settings = RolloutSettings.like(sampler, batch_held=True, checkpoint=commits)
    return await RolloutPool.start(rt, timing, settings=settings, timeout_s=section.timeout_s)


async def rollout_stats(rollouts: RolloutPool | None) -> dict[str, Any] | None:
    """The pool's statistics as plain data (None without a pool); stops its local worker."""
    from spotlight.actors.monitor.metrics import plain
    from spotlight.runtime.errors import SpotlightError

    if rollouts is None:
        return None
    try:
        return plain(await rollouts.statistics())
    except (SpotlightError, TimeoutError) as exc:
        return {"error": repr(exc)}
    finally:
        await rollouts.close()


def rollout_summary(stats: dict[str, Any] | None, mode: str) -> dict[str, Any]:
    """report.json's ``rollouts``: who sampled the trainer's batches, what preemptions cost."""
    from spotlight.actors.rollout.pool import LOCAL_WORKER, spot_share

    if stats is None or "error" in stats:
        return {"mode": mode, **({"error": stats["error"]} if stats else {})}
    by_worker: dict[str, int] = stats["samples_by_worker"]
    leases = stats["scheduler"]["leases"]
    local = stats.get("local_worker") or {}
    return {
        "mode": mode,
        "samples": sum(by_worker.values()),
        "samples_by_trainer": by_worker.get(LOCAL_WORKER, 0),
        "samples_by_spot": spot_share(by_worker)[0],
        "samples_by_worker": by_worker,
        "re_leases": leases.get("re_leases"),
        "steps_recomputed": leases.get("steps_recomputed"),
        "stale_results": leases.get("stale_results"),
        "trainer_worker_version_releases": local.get("version_releases"),
    }
