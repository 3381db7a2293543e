"""An explorer's sampling pass in the node's elastic SP group (spot node at ``--sp-degree`` > 1).

Map (all in the spot node's process, except the member processes)::

    ExplorerActor._loop ──rewards(prompts, seeds, n)──► SPBackend
        │                                                 │ SPRequest(weights_version=v)
        │                                                 ▼
        │                                LocalWorkSource.submit ──pull──► SPGroupScheduler
        │                                                 ▲                 "sp_group" actor
        │            final TrajectoryState (future) ──────┘                 │ step/form/ping
        │                                                                   ▼
        │                       member processes (sp_worker, one per GPU; PIDs tracked here)
        └─ decode + reward the final latents in a worker thread (the explorer's policy)

    ExplorerActor._apply_newest ──load(v, state)──► SPBackend: publish_to_shm once, then
        every member load_shared(manifest, v) (concurrently, bounded); a member that cannot
        load is given notice (it leaves the group), so no step runs on mixed versions

Who waits on what:

- ``rewards`` waits on the request's future (bounded by ``request_timeout_s``); the group
  scheduler drives it step by step, re-forming on member loss and resuming from the last
  step boundary (``sp_group.py``). Cancelling ``rewards`` (drain) abandons the request.
- ``load`` runs only between batches (the explorer's loop never overlaps the two), so a
  version is never half-applied across the members of one request; each step also carries
  ``weights_version`` and a member holding another refuses it (``StaleWeights``).
- ``_publish_metrics`` (one task) reads the scheduler's statistics every ``metrics_period_s``
  and publishes topic ``sp_group`` (node, epoch, degree, members, status) to the monitor.

Weight cost per version: one copy of the state into /dev/shm by the node (a memcpy of the
weights' bytes) plus one read of it into each member (``load_from_shm``: one ``read`` per
tensor), instead of sending the version over a socket to every member. The explorer's own
policy loads it too (it is the reference for ``weights_fit``; decoding itself is shape-only).

Shutdown order (``stop``, idempotent, also run at process exit): cancel the metrics task; stop
the ``sp_group`` actor (its ``on_stop`` tells every member ``stand_by``, aborting groups);
SIGTERM the member processes, SIGKILL whatever is left after ``exit_grace_s``, reap them by
PID; remove the /dev/shm snapshot. Members also die with the node (``PR_SET_PDEATHSIG``), so
a SIGKILLed node leaves no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from spotlight.actors.exploration.backends import RewardFn, SamplingFailed
from spotlight.actors.monitor.metrics import MetricsPublisher
from spotlight.actors.monitor.records import SPGroupRecord
from spotlight.actors.sp.group import SPGroupConfig, SPGroupScheduler
from spotlight.actors.sp.local import LocalSPCluster, Worker
from spotlight.actors.sp.work import LocalWorkSource, SPRequest, check_group_config
from spotlight.actors.weights.policy_spec import PolicySpec
from spotlight.actors.weights.share import SharedWeights, publish_to_shm
from spotlight.models.dit import DiTConfig, DiTPolicy
from spotlight.models.flow_grpo import decode
from spotlight.models.lora import load_tunable_state
from spotlight.runtime import ActorRef, Runtime
from spotlight.runtime.errors import SpotlightError

if TYPE_CHECKING:
    from spotlight.actors.exploration.backends import ExploreSettings

__all__ = ["GROUP_ACTOR", "NodeSPConfig", "SPBackend"]

log = logging.getLogger("spotlight.actors.exploration.sp_backend")

GROUP_ACTOR = "sp_group"
"""Name of the node's SPGroupScheduler actor (tests and the monitor ask it directly)."""


@dataclass(frozen=True, kw_only=True)
class NodeSPConfig:
    """A spot node's SP group: how many member processes, at which degree, and its timing."""

    node: str
    """The node id (members' node id too: weights move through this node's /dev/shm)."""
    members: int
    """Member processes, one per (simulated) GPU: the node's ``--gpus``."""
    degree: int
    """Target SP degree (``--sp-degree``), at most ``members``; members beyond it are spares
    that step in at the next re-form when an active member is lost."""
    threads: int = 1
    """Torch threads per member process."""
    heartbeat_s: float = 0.25
    """Members' runtime heartbeat (the node notices a SIGKILLed member by it, or sooner by a
    failed collective)."""
    ready_timeout_s: float = 120.0
    """Give up when the members have not built their model and reached the store by then."""
    load_timeout_s: float = 30.0
    """Deadline of one member's ``load_shared`` (a weight version)."""
    request_timeout_s: float = 300.0
    """Deadline of one explore batch in the group (then :class:`SamplingFailed`)."""
    exit_grace_s: float = 1.0
    """Members get SIGTERM, then SIGKILL after this many seconds."""
    metrics_period_s: float = 1.0
    """Topic ``sp_group`` is published this often (when the run has a monitor)."""
    group: SPGroupConfig = field(
        default_factory=lambda: SPGroupConfig(
            probe_interval_s=1.0, probe_timeout_s=2.0, max_attempts=10
        )
    )
    """The group scheduler's timing (``name`` and ``max_degree`` are set from the node).
    Probes are lenient: on a loaded box (members at nice 19 beside other jobs) a live member
    answered a ping in over 1 s, and five such false suspicions failed a request."""

    def __post_init__(self) -> None:
        for name in ("members", "degree", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.degree > self.members:
            raise ValueError(
                f"SP degree {self.degree} needs {self.degree} member processes (GPUs) on the "
                f"node, only {self.members} given; valid degrees: 1..{self.members}"
            )
        for name in (
            "heartbeat_s",
            "ready_timeout_s",
            "load_timeout_s",
            "request_timeout_s",
            "metrics_period_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if not self.exit_grace_s >= 0:
            raise ValueError(f"exit_grace_s must be >= 0 seconds, got {self.exit_grace_s}")


class SPBackend:
    """The :class:`~spotlight.actors.exploration.backends.SamplingBackend` of an SP spot node.

    Build it with :meth:`start` (launches and joins the members), hand :meth:`factory` to the
    explorer, and call :meth:`stop` on the way out (the explorer's drain does too).
    """

    def __init__(
        self,
        rt: Runtime,
        config: NodeSPConfig,
        cluster: LocalSPCluster,
        workdir: Path,
        scheduler: ActorRef,
        source: LocalWorkSource,
        members: dict[str, ActorRef],
    ) -> None:
        self.rt = rt
        self.config = config
        self.cluster = cluster
        self.workdir = workdir
        self.scheduler = scheduler
        self.source = source
        self.members = members
        """Member key (``address/name``) -> ref, for the members given each weight version."""
        self.policy: DiTPolicy | None = None
        self.reward_fn: RewardFn | None = None
        self.version: int | None = None
        self._shared: SharedWeights | None = None
        self._stopped = False
        self._metrics_task: asyncio.Task[None] | None = None
        self.loads: list[dict[str, Any]] = []
        """Per version: publish seconds, slowest member load seconds, bytes, members."""

    # -- building ------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        rt: Runtime,
        config: NodeSPConfig,
        model: DiTConfig | PolicySpec,
        *,
        monitor: ActorRef | None,
    ) -> SPBackend:
        """Launch ``config.members`` member processes of ``model``, wait until they serve,
        spawn the group scheduler (actor ``sp_group``) and join them. With a LoRA
        :class:`PolicySpec` every member loads the base from disk and attaches the adapters;
        versions then carry the adapters only.

        ValueError (naming the valid degrees) when the degree does not divide the model's
        heads and image tokens. Call from the event loop's thread (members die with it).
        """
        spec = model if isinstance(model, PolicySpec) else PolicySpec(config=model)
        model = spec.config
        check_group_config(
            config.degree, config.members, model.num_attention_heads, model.num_tokens
        )
        workdir = Path(tempfile.mkdtemp(prefix=f"spotlight-sp-{config.node}-"))
        cluster = LocalSPCluster(
            workdir,
            heartbeat_s=config.heartbeat_s,
            threads=config.threads,
            model=json.dumps(model.to_dict()),
            lora=None if spec.lora is None else json.dumps(spec.lora.to_dict()),
            die_with_parent=True,
        )
        try:
            workers = cluster.launch(config.members, node=config.node, checkpoint=spec.base)
            await _wait_ready(workers, config.ready_timeout_s)
            source = LocalWorkSource()
            group = dataclasses.replace(
                config.group, name=config.node.replace("/", "_"), max_degree=config.degree
            )
            scheduler = await rt.spawn(SPGroupScheduler, group, source, name=GROUP_ACTOR)
            members: dict[str, ActorRef] = {}
            for w in workers:
                ref = rt.ref(w.address, cluster.member_name())
                joined = await scheduler.join.ask(ref, timeout=config.ready_timeout_s)
                members[str(joined["key"])] = ref
        except BaseException:
            cluster.close()
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        backend = cls(rt, config, cluster, workdir, scheduler, source, members)
        if monitor is not None:
            backend._metrics_task = asyncio.ensure_future(backend._publish_metrics(monitor))
        log.info(
            "SP group of %d members (degree %d) ready: pids %s",
            config.members,
            config.degree,
            backend.member_pids,
        )
        return backend

    def factory(self, policy: DiTPolicy, reward_fn: RewardFn) -> SPBackend:
        """The explorer's ``backend`` argument: binds the explorer's policy and reward."""
        self.policy, self.reward_fn = policy, reward_fn
        return self

    @property
    def member_pids(self) -> list[int]:
        return [w.proc.pid for w in self.cluster.workers]

    def _alive(self) -> list[Worker]:
        return [w for w in self.cluster.workers if w.alive]

    # -- the SamplingBackend protocol ----------------------------------------------

    async def load(self, version: int, state: Mapping[str, Tensor]) -> None:
        """Publish ``version`` to /dev/shm once; every member copies it from there."""
        assert self.policy is not None, "factory() binds the policy before any load"
        t0 = time.perf_counter()
        await asyncio.to_thread(load_tunable_state, self.policy, state)
        shared = await asyncio.to_thread(
            publish_to_shm, state, node=self.config.node, version=version
        )
        t_pub = time.perf_counter() - t0
        manifest = shared.manifest.to_dict()
        alive = {w.address for w in self._alive()}
        for key in [k for k, ref in self.members.items() if ref.address not in alive]:
            del self.members[key]  # its process is gone: no ask that could only time out
        keys = list(self.members)
        answers = await asyncio.gather(
            *(
                self.members[k].load_shared.ask(
                    manifest, version, timeout=self.config.load_timeout_s
                )
                for k in keys
            ),
            return_exceptions=True,
        )
        loaded: list[float] = []
        for key, answer in zip(keys, answers, strict=True):
            if isinstance(answer, BaseException):
                # It cannot sample this version: it leaves the group before the next step.
                log.warning("SP member %s did not load version %d: %r", key, version, answer)
                ref = self.members.pop(key)
                with contextlib.suppress(SpotlightError, TimeoutError, ValueError):
                    await self.scheduler.notice.ask(ref, timeout=self.config.load_timeout_s)
            else:
                loaded.append(float(answer["seconds"]))
        old, self._shared = self._shared, shared
        if old is not None:
            old.close()  # members read it fully before answering
        self.version = version
        self.loads.append(
            {
                "version": version,
                "publish_s": t_pub,
                "member_load_max_s": max(loaded) if loaded else None,
                "bytes": shared.manifest.total_bytes,
                "members": len(loaded),
                "seconds": time.perf_counter() - t0,
            }
        )
        del self.loads[:-20]

    async def rewards(
        self,
        prompts: list[str],
        seeds: list[int],
        *,
        num_steps: int,
        settings: ExploreSettings,
    ) -> np.ndarray:
        """One request through the group (the whole batch: ``micro_batch`` does not apply,
        the members' shards are the split), then decode and reward here."""
        assert self.policy is not None and self.reward_fn is not None
        if self._stopped:
            raise SamplingFailed("the SP group was stopped")
        if not self._alive() or not self.members:
            raise SamplingFailed("no SP member process is left on this node")
        request = SPRequest(
            id=uuid.uuid4().hex,
            prompts=list(prompts),
            seeds=[int(s) for s in seeds],
            sampler=settings.sampler(num_steps),
            mode=settings.mode,
            weights_version=self.version,
        )
        future = self.source.submit(request)
        try:
            state = await asyncio.wait_for(future, self.config.request_timeout_s)
        except TimeoutError:
            raise SamplingFailed(
                f"SP request took longer than {self.config.request_timeout_s} s"
            ) from None
        except RuntimeError as exc:  # LocalWorkSource.fail: the group gave up on it
            raise SamplingFailed(f"SP group failed the request: {exc}") from None
        policy, reward_fn = self.policy, self.reward_fn

        def score() -> np.ndarray:
            images = decode(policy, [state])
            return np.asarray(reward_fn(images, list(prompts)), dtype=np.float64)

        rewards = await asyncio.to_thread(score)
        if rewards.shape != (len(prompts),):
            raise ValueError(f"reward returned shape {rewards.shape}, expected ({len(prompts)},)")
        return rewards

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._metrics_task is not None:
            self._metrics_task.cancel("SP group stopping")
            with contextlib.suppress(asyncio.CancelledError):
                await self._metrics_task
        with contextlib.suppress(SpotlightError):  # already stopped with the runtime
            await self.rt.stop_actor(GROUP_ACTOR, "SP group stopping")
        await asyncio.to_thread(self.cluster.terminate, self.config.exit_grace_s)
        self.close()

    def close(self) -> None:
        """Synchronous last resort (process exit): kill members by PID, remove files."""
        self._stopped = True
        self.cluster.close()
        if self._shared is not None:
            self._shared.close()
            self._shared = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def statistics(self) -> dict[str, Any] | None:
        out: dict[str, Any] = {
            "backend": "sp",
            "target_degree": self.config.degree,
            "member_pids": self.member_pids,
            "members_alive": len(self._alive()),
            "weights_version": self.version,
            "last_load": self.loads[-1] if self.loads else None,
            "stopped": self._stopped,
        }
        if not self._stopped:
            try:
                st = await self.scheduler.statistics.ask(timeout=2.0)
            except (SpotlightError, TimeoutError) as exc:
                out["error"] = repr(exc)
            else:
                out.update({k: st[k] for k in _GROUP_FIELDS if k in st})
        return out

    # -- metrics -------------------------------------------------------------------

    async def _publish_metrics(self, monitor: ActorRef) -> None:
        publisher = MetricsPublisher(monitor, source=f"sp/{self.config.node}", runtime=self.rt)
        try:
            while True:
                st = await self.statistics()
                if st is not None and "epoch" in st:
                    members = st.get("members") or {}
                    publisher.publish_record(
                        SPGroupRecord(
                            node=self.config.node,
                            group=st.get("group"),
                            epoch=st["epoch"],
                            degree=st["degree"],
                            members=sum(members.values()),
                            active=members.get("active", 0),
                            status=st.get("phase"),
                            request=st.get("request"),
                            reforms=st.get("reforms"),
                            reform_last_s=st.get("reform_last_s"),
                            lost=st.get("lost"),
                            weights_version=self.version,
                        )
                    )
                await asyncio.sleep(self.config.metrics_period_s)  # a period, not a sync
        finally:
            await publisher.close()


_GROUP_FIELDS = (
    "group",
    "epoch",
    "degree",
    "members",
    "phase",
    "request",
    "reforms",
    "reform_last_s",
    "reform_max_s",
    "steps",
    "step_failures",
    "requests",
    "failed_requests",
    "lost",
)


async def _wait_ready(workers: list[Worker], timeout_s: float) -> None:
    """Until every member wrote its address (each ready file is written by a rename)."""
    give_up = time.monotonic() + timeout_s
    for w in workers:
        while not w.ready_file.exists():
            if not w.alive:
                raise RuntimeError(
                    f"SP member process {w.proc.pid} exited with {w.proc.returncode} "
                    "before it was ready (see the node's log)"
                )
            if time.monotonic() > give_up:
                raise TimeoutError(f"SP member {w.proc.pid} not ready after {timeout_s} s")
            await asyncio.sleep(0.05)  # polling a file another process writes
        w.address = w.ready_file.read_text()
