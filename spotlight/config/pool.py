"""The sections of where the work runs: ``spot``, ``prices``, ``rewards``, ``rollout``.

Every field is documented where it is declared; each section validates itself and builds
its component's config (``PricesSection.build``, ``RewardsSection.pool_config``,
``RolloutSection.scheduling``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from spotlight.actors.scheduling.work import PULL_BATCH
from spotlight.config.checks import ConfigError, _positive_float, _positive_int

if TYPE_CHECKING:
    from spotlight.actors.rewards.pool import RewardPoolConfig
    from spotlight.actors.scheduling.scheduler import SchedulingConfig
    from spotlight.actors.spot.prices import Prices

__all__ = [
    "DEFAULT_NODE_COMMAND",
    "FAULT_MODES",
    "ROLLOUT_WORKERS",
    "PricesSection",
    "RewardsSection",
    "RolloutSection",
    "RolloutWorkers",
    "SpotSection",
]


FAULT_MODES = ("elastic", "restart")


DEFAULT_NODE_COMMAND = (
    "{python} -m spotlight.nodes.spot --coordinator {address} --node-id {node} "
    "--notice-grace {grace} --gpus {gpus} --sp-degree {sp_degree}"
)


@dataclass(frozen=True, kw_only=True)
class SpotSection:
    """The simulated spot pool: node processes started and stopped by a trace."""

    enabled: bool = True
    """False: on-demand only (no spot processes; ``--no-spot``)."""
    pool: Literal["trace", "external"] = "trace"
    """Where spot nodes come from. ``trace``: node processes this run starts and stops by
    ``trace``. ``external``: nodes join from outside (``scripts/launch_spot.sh``) and the
    coordinator only accepts their registrations; ``trace``, ``time_scale``, ``notice_s``
    and ``node_command`` are then unused and the bill's clock is wall time."""
    trace: str = "traces/steady_1h.csv"
    """CSV trace ``t_s,event,node`` (see traces/README.md); relative paths are tried
    against the current directory, then the repository root."""
    time_scale: float = 8.0
    """Trace seconds played per wall second; also the bill's clock (GPU-hours are in trace
    time, so a 1 h trace at 6x bills an hour in 10 wall minutes)."""
    notice_s: float = 30.0
    """Synthesise a notice this many trace seconds before each silent removal (0: none,
    removals stay silent). GCP/Azure give 30 s, AWS 120 s."""
    notice_grace_s: float = 1.0
    """Wall seconds a node keeps free before its deadline to leave cleanly."""
    gpus_per_node: int = 1
    """GPUs billed per spot node; with ``sp_degree`` > 1 also its SP member processes (one
    per simulated GPU)."""
    sp_degree: int = 1
    """Sequence-parallel degree of each spot node's explorer. 1 (default): the node samples
    in one process, a worker thread (fastest on a 2-core CPU box, see README). D > 1: the
    node runs ``gpus_per_node`` SP member processes as one elastic group at degree D (D <=
    gpus_per_node; D must divide the base model's attention heads and image tokens, checked
    against the base when the run starts); a lost member re-forms the group smaller."""
    ondemand_gpus: int | None = None
    """On-demand GPUs billed for the whole run (trainer + coordinator). None (default): the
    trainer's world size, i.e. one GPU per data-parallel rank (torchrun's WORLD_SIZE; 1 for
    a plain ``spotlight run``), resolved when the run starts (:meth:`ondemand_gpu_count`).
    Set it when ranks and GPUs differ, e.g. one process on a node with 8 GPUs."""
    node_command: str = DEFAULT_NODE_COMMAND
    """Command of one spot node; {python}, {address}, {node}, {grace}, {gpus} are
    substituted ({node} by the launcher, per node)."""
    fault_mode: Literal["elastic", "restart"] = "elastic"
    """How the pool reacts to a preemption. ``elastic`` (Spotlight): a noticed node drains
    and leaves, the others go on. ``restart`` (the TorchElastic-style baseline of the
    benchmark, spotlight/actors/spot/restart_pool.py): a notice or loss of any node kills every
    running spot node and starts them again (they reload weights; in-flight work is lost)."""

    def __post_init__(self) -> None:
        if self.fault_mode not in FAULT_MODES:
            raise ConfigError(
                f"spot.fault_mode={self.fault_mode!r}; valid: {', '.join(FAULT_MODES)}"
            )
        _positive_float("spot", "time_scale", self.time_scale)
        _positive_float("spot", "notice_s", self.notice_s, allow_zero=True)
        _positive_float("spot", "notice_grace_s", self.notice_grace_s, allow_zero=True)
        _positive_int("spot", "gpus_per_node", self.gpus_per_node)
        _positive_int("spot", "sp_degree", self.sp_degree)
        if self.sp_degree > self.gpus_per_node:
            raise ConfigError(
                f"spot.sp_degree={self.sp_degree} needs {self.sp_degree} GPUs per node (one SP "
                f"member each), spot.gpus_per_node={self.gpus_per_node}; valid degrees: "
                + ", ".join(str(d) for d in range(1, self.gpus_per_node + 1))
            )
        if self.ondemand_gpus is not None:
            _positive_int("spot", "ondemand_gpus", self.ondemand_gpus)
        if "{node}" not in self.node_command:
            raise ConfigError(f"spot.node_command must contain {{node}}, got {self.node_command!r}")
        if self.sp_degree > 1 and "{sp_degree}" not in self.node_command:
            raise ConfigError(
                f"spot.sp_degree={self.sp_degree} would be ignored: spot.node_command has no "
                f"{{sp_degree}} (pass it as --sp-degree {{sp_degree}}), got {self.node_command!r}"
            )

    def check_sp_degree(self, num_heads: int, num_tokens: int) -> None:
        """ConfigError unless ``sp_degree`` divides the base model's heads and image tokens
        (the message lists the valid degrees); called once the base is known."""
        from spotlight.models.ulysses import validate_degree

        try:
            validate_degree(self.sp_degree, num_heads, num_tokens)
        except ValueError as exc:
            raise ConfigError(f"spot.sp_degree={self.sp_degree}: {exc}") from None

    def ondemand_gpu_count(self, world_size: int) -> int:
        """GPUs to bill on demand: ``ondemand_gpus`` if set, else ``world_size`` (DP ranks)."""
        if self.ondemand_gpus is not None:
            return self.ondemand_gpus
        if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
            raise ValueError(f"world_size must be an int >= 1 (DP ranks), got {world_size!r}")
        return world_size

    def trace_path(self) -> Path:
        """The trace file; ConfigError naming the places tried if it is nowhere."""
        p = Path(self.trace)
        tried = [p]
        if not p.is_absolute():
            tried.append(Path(__file__).resolve().parent.parent / p)
        for candidate in tried:
            if candidate.is_file():
                return candidate
        raise ConfigError(
            f"spot.trace={self.trace!r}: no such file (tried {', '.join(map(str, tried))}); "
            "shipped traces are in traces/ (steady_1h.csv, bursty_1h.csv, diurnal_2h.csv)"
        )


@dataclass(frozen=True, kw_only=True)
class PricesSection:
    """USD per GPU-hour: a preset (spotlight/actors/spot/prices.py cites the sources), overridable."""

    preset: str = "aws-p5"
    """aws-p5 or gcp-a3-high-2026."""
    ondemand_usd_per_gpu_hour: float | None = None
    """Override the preset's on-demand price."""
    spot_usd_per_gpu_hour: float | None = None
    """Override the preset's spot price."""

    def __post_init__(self) -> None:
        self.build()

    def build(self) -> Prices:
        from spotlight.actors.spot.prices import Prices

        try:
            base = Prices.preset(self.preset)
        except ValueError as exc:
            raise ConfigError(f"prices.preset: {exc}") from None
        if self.ondemand_usd_per_gpu_hour is None and self.spot_usd_per_gpu_hour is None:
            return base
        od, spot = self.ondemand_usd_per_gpu_hour, self.spot_usd_per_gpu_hour
        try:
            return Prices(
                ondemand_usd_per_gpu_hour=base.ondemand_usd_per_gpu_hour if od is None else od,
                spot_usd_per_gpu_hour=base.spot_usd_per_gpu_hour if spot is None else spot,
                name=f"{base.name} (overridden)",
                source=f"config override of {base.name}",
            )
        except ValueError as exc:
            raise ConfigError(f"prices: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class RewardsSection:
    """Reward actors (spotlight/actors/rewards/): worker processes the trainer's rollouts
    and validation are scored by, so a slow reward runs beside the trainer, not inside it.

    Only the trainer's rank 0 uses them; data-parallel followers and spot-node explorers
    score in process (a spot node is its own machine: a node-local reward is right there).
    Scores are bit-identical either way, so this changes speed, never results."""

    workers: int = 1
    """Reward worker processes `spotlight run` starts (and kills by PID at the end); 0: the
    trainer scores in process, in its torch thread, exactly as without reward actors."""
    actors_per_worker: int = 1
    """RewardActors per worker process (each scores one chunk at a time, in a thread)."""
    chunk_images: int = 16
    """Images per ask; a batch is split into chunks that free actors pull. A lost worker
    costs one chunk's recomputation."""
    timeout_s: float = 30.0
    """Deadline of each ask; past it (or on a lost worker) the chunk goes to another actor,
    and with none left it is scored in process (counted in the report)."""
    start_timeout_s: float = 60.0
    """How long reward calls wait for launched workers to register at the start of a run
    (then they score in process until the workers are up)."""

    def __post_init__(self) -> None:
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 0:
            raise ConfigError(f"rewards.workers must be an integer >= 0, got {self.workers!r}")
        _positive_int("rewards", "actors_per_worker", self.actors_per_worker)
        _positive_int("rewards", "chunk_images", self.chunk_images)
        _positive_float("rewards", "timeout_s", self.timeout_s)
        _positive_float("rewards", "start_timeout_s", self.start_timeout_s)

    def pool_config(self, reward: str) -> RewardPoolConfig:
        """The reward worker pool's config, scoring ``reward`` (the trainer's)."""
        from spotlight.actors.rewards.pool import RewardPoolConfig

        return RewardPoolConfig(
            workers=self.workers,
            actors_per_worker=self.actors_per_worker,
            reward=reward,
            start_timeout_s=self.start_timeout_s,
        )


RolloutWorkers = Literal["auto", "pool", "trainer"]


ROLLOUT_WORKERS: tuple[str, ...] = get_args(RolloutWorkers)


@dataclass(frozen=True, kw_only=True)
class RolloutSection:
    """Where the trainer's rollouts of θ_k (on-policy, the samples it trains on) are drawn.

    ``pool``: each sample is a request on the rollout scheduler (spotlight/actors/
    rollout/pool.py); the trainer's own rollout worker and every spot node's pull them,
    commit their denoising state every ``commit_interval`` steps and hand it back on a
    notice, so a preempted spot GPU loses at most the step it was running. ``trainer``: the
    trainer rank samples its own batch in its torch thread (no scheduler; the log-probs are
    recorded in the training chunks, so the first ratio is exactly 1 instead of 1 ± 1e-7).
    """

    workers: RolloutWorkers = "auto"
    """``auto``: ``pool`` with one trainer rank, ``trainer`` with several (each data-parallel
    rank samples its own shard; the pool serves a single rank)."""
    pull_batch: int = PULL_BATCH
    """Requests a worker holds at once, advanced together in one forward pass."""
    commit_interval: int = 2
    """A worker commits a trajectory's state every this many denoising steps; a silent loss
    (SIGKILL) recomputes at most this many steps per request, a notice none."""
    lease_ttl_s: float = 30.0
    """A lease not renewed for this long (a worker lost without notice) is resumed elsewhere
    from its last commit; workers renew every third of it."""
    timeout_s: float = 600.0
    """An iteration whose rollouts are not all back after this long ends the run with an
    error naming the queue (the trainer's own worker pulls too, so only a bug gets here)."""

    def __post_init__(self) -> None:
        if self.workers not in ROLLOUT_WORKERS:
            raise ConfigError(
                f"rollout.workers={self.workers!r}; valid: {', '.join(ROLLOUT_WORKERS)}"
            )
        _positive_int("rollout", "pull_batch", self.pull_batch)
        _positive_int("rollout", "commit_interval", self.commit_interval)
        _positive_float("rollout", "lease_ttl_s", self.lease_ttl_s)
        _positive_float("rollout", "timeout_s", self.timeout_s)

    def scheduling(self, *, idle_pull_s: float, call_timeout_s: float) -> SchedulingConfig:
        """The rollout scheduler's and workers' timing (heartbeats at a third of the TTL)."""
        from spotlight.actors.scheduling.scheduler import SchedulingConfig

        return SchedulingConfig(
            lease_ttl_s=self.lease_ttl_s,
            heartbeat_s=self.lease_ttl_s / 3,
            commit_interval=self.commit_interval,
            pull_batch=self.pull_batch,
            idle_pull_s=idle_pull_s,
            call_timeout_s=call_timeout_s,
        )

    def pooled(self, world_size: int) -> bool:
        """Whether a trainer of ``world_size`` ranks samples through the pool."""
        if self.workers == "pool" and world_size > 1:
            raise ConfigError(
                f"rollout.workers=pool serves a single trainer rank, this run has {world_size}; "
                "use rollout.workers=auto or trainer (each rank then samples its own shard)"
            )
        return self.workers == "pool" or (self.workers == "auto" and world_size == 1)
