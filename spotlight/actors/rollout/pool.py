"""The trainer's rollouts as pull-scheduled requests: its own worker and every spot node's.

Why: in Flow-GRPO the rollout phase is most of an iteration, and the samples of one
iteration finish nearly together, so spot GPUs that join the rollout phase shorten it;
a spot GPU lost mid-trajectory must not lose the trajectory. The pull scheduler gives both:
free workers pull requests (load balance without a central plan), commit their in-flight
denoising state every ``commit_interval`` steps and hand it back on a notice, and a lease
that expires (a silent loss) resumes from the last commit elsewhere. Exactly once.

Map (rank 0 of the trainer; one iteration k)::

    TrainerLoop ──sample(k, prompts, seeds)──► RolloutPool
        submit(B requests "r{k}.{i}", group "r{k}", weight_version k, kind rollout)
                                  │
            rollout scheduler (SchedulerActor "rollout_scheduler", in this process)
              ▲ pull/commit/complete/renew/release            ▲
              │                                               │
     "rollout_local" RolloutWorker (this process,      "rollout" RolloutWorker on each spot
      the trainer's own policy, version = k)            node (weights from the publisher;
                                                         hands back requests of a version
                                                         it does not hold yet)
        collect(ack, wait_s) long poll ◄── group "r{k}" complete ──► TrajectoryStates, in order

What waits on what: ``sample`` waits on the scheduler's ``collect`` (a long poll, each
under ``call_timeout_s``) until the group is complete or ``timeout_s`` has passed (then
:class:`RolloutTimeout`). It never waits on a spot node: the local worker pulls too, so a
pool with no spot node is the trainer sampling its own batch, one pull at a time.

On-policy: every request names weight version k; a worker samples it only with exactly
θ_k. The local worker samples with the trainer's policy object itself, which the trainer
does not touch until the group is complete (``sample`` returns before the update).

Not journaled: the rollout scheduler lives and dies with the trainer process, and a resumed
trainer redoes the iteration from its checkpoint anyway; spot losses, the case this is
for, are covered by leases and commits.

Shutdown: ``close`` stops the local worker (its leases, if any, are forgotten with the
scheduler, which the runtime stops next).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spotlight.actors.rollout.worker import RolloutSettings, RolloutWorker
from spotlight.actors.scheduling.scheduler import SchedulerActor, SchedulingConfig
from spotlight.actors.scheduling.work import SampleRequest
from spotlight.runtime.errors import SpotlightError

if TYPE_CHECKING:
    from spotlight.models.dit import DiTPolicy
    from spotlight.models.sampler import TrajectoryState
    from spotlight.runtime import ActorRef, Runtime

__all__ = ["LOCAL_WORKER", "RolloutBatch", "RolloutPool", "RolloutTimeout", "spot_share"]

LOCAL_WORKER = "rollout_local"
ROLLOUT_PRIORITY = 1


class RolloutTimeout(SpotlightError):
    """An iteration's rollouts did not complete within ``timeout_s``."""


@dataclass(frozen=True)
class RolloutBatch:
    """One iteration's samples, in the order they were asked for."""

    states: list[TrajectoryState]
    seconds: float
    by_worker: dict[str, int]
    """Samples completed per worker id (the local one is ``LOCAL_WORKER``)."""


class RolloutPool:
    """Submits each iteration's samples to the rollout scheduler and collects them; see the
    module map. Build with :meth:`start`; call :meth:`attach` once the policy exists."""

    def __init__(
        self,
        rt: Runtime,
        scheduler: ActorRef,
        timing: SchedulingConfig,
        *,
        settings: RolloutSettings,
        timeout_s: float,
    ) -> None:
        self.rt = rt
        self.scheduler = scheduler
        self.timing = timing
        self.settings = settings
        self.timeout_s = timeout_s
        self.local: ActorRef | None = None
        self._totals: Counter[str] = Counter()

    @classmethod
    async def start(
        cls,
        rt: Runtime,
        timing: SchedulingConfig,
        *,
        settings: RolloutSettings,
        timeout_s: float,
        name: str = "rollout_scheduler",
    ) -> RolloutPool:
        """Spawn the rollout scheduler in ``rt`` (spot nodes learn its ref from the
        coordinator)."""
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        scheduler = await rt.spawn(SchedulerActor, config=timing, name=name)
        return cls(rt, scheduler, timing, settings=settings, timeout_s=timeout_s)

    def offer(self) -> dict[str, Any]:
        """What a spot node needs to serve these rollouts (the coordinator passes it on in
        ``register_node``'s answer): the scheduler's ref, how to sample, the lease timing."""
        return {"scheduler": self.scheduler, "settings": self.settings, "timing": self.timing}

    async def attach(
        self, policy: DiTPolicy, version: Callable[[], int], *, executor: Executor | None = None
    ) -> None:
        """Start the trainer's own worker on ``policy``, whose weight version is
        ``version()`` (the trainer's iteration). ``executor``: the trainer's torch thread, so
        the worker's steps run where the trainer's own torch work does (one hot OpenMP
        team); None: a pool thread per step. Idempotent."""
        if self.local is not None:
            return
        self.local = await self.rt.spawn(
            RolloutWorker,
            scheduler=self.scheduler,
            worker_id=LOCAL_WORKER,
            model=policy,
            timing=self.timing,
            settings=self.settings,
            version=version,
            executor=executor,
            name=LOCAL_WORKER,
        )

    async def sample(
        self,
        iteration: int,
        version: int,
        prompts: Sequence[str],
        seeds: Sequence[int],
        num_steps: int,
    ) -> RolloutBatch:
        """The trajectories of (prompts[i], seeds[i]) sampled with weights ``version``."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if self.local is None:
            raise SpotlightError("RolloutPool.sample before attach(): no worker would pull")
        from spotlight.models.sampler import TrajectoryState

        t0 = time.perf_counter()
        group = f"r{iteration}"
        requests = [
            SampleRequest(
                request_id=f"{group}.{i}",
                prompt=prompt,
                seed=int(seed),
                num_steps=num_steps,
                priority=ROLLOUT_PRIORITY,
                kind="rollout",
                group_id=group,
                weight_version=version,
            )
            for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True))
        ]
        await self.scheduler.submit.ask(requests, timeout=self.timing.call_timeout_s)
        results = await self._collect(group)
        states: list[TrajectoryState] = []
        by_worker: Counter[str] = Counter()
        for request, result in zip(requests, results, strict=True):
            if not isinstance(result, dict) or "error" in result:
                error = result.get("error") if isinstance(result, dict) else repr(result)
                raise ValueError(f"rollout {request.request_id} failed on a worker: {error}")
            states.append(TrajectoryState.from_dict(result))
            by_worker[str(result.get("worker_id", "?"))] += 1
        self._totals.update(by_worker)
        return RolloutBatch(states, time.perf_counter() - t0, dict(by_worker))

    async def _collect(self, group: str) -> list[Any]:
        """The results of ``group`` in submission order, acknowledged once received."""
        deadline = time.monotonic() + self.timeout_s
        wait_s = min(1.0, self.timing.call_timeout_s / 2)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                stats = await self.scheduler.statistics.ask(timeout=self.timing.call_timeout_s)
                raise RolloutTimeout(
                    f"rollouts of {group} not complete after {self.timeout_s:.0f} s "
                    f"(queued {stats.queue_depth}, leased {stats.active_leases}); raise "
                    "rollout.timeout_s, or check the workers in RUN_DIR/nodes.log"
                )
            groups = await self.scheduler.collect.ask(
                (), wait_s=min(wait_s, left), timeout=self.timing.call_timeout_s + wait_s
            )
            for found in groups:
                if found.group_id == group:
                    await self.scheduler.collect.ask(
                        [group], wait_s=0.0, timeout=self.timing.call_timeout_s
                    )
                    return list(found.results)

    async def statistics(self) -> dict[str, Any]:
        """The rollout scheduler's and the local worker's statistics (for the report)."""
        out: dict[str, Any] = {"samples_by_worker": dict(self._totals)}
        out["scheduler"] = await self.scheduler.statistics.ask(timeout=self.timing.call_timeout_s)
        if self.local is not None:
            out["local_worker"] = await self.local.statistics.ask(
                timeout=self.timing.call_timeout_s
            )
        return out

    async def close(self) -> None:
        """Stop the local worker (idempotent)."""
        local, self.local = self.local, None
        if local is not None:
            await self.rt.stop_actor(LOCAL_WORKER, reason="run finished")


def spot_share(by_worker: Mapping[str, int]) -> tuple[int, int]:
    """(samples, workers) of ``by_worker`` other than the trainer's own worker: what spot
    nodes drew (the metric, the monitor and the report all count it this way)."""
    spot = {w: n for w, n in by_worker.items() if w != LOCAL_WORKER}
    return sum(spot.values()), len(spot)
