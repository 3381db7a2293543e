"""The on-demand node of `spotlight run`: the trainer's process and the actors around it.

Processes and actors (embedded default, one CPU machine, tiny model)::

    this process (on-demand node "od0"; torchrun rank 0 on a cluster)
      runtime actors: "monitor" (Monitor -> RUN_DIR/metrics.jsonl), "explore_scheduler"
        (SchedulerActor, journal RUN_DIR/explore.journal), "planner" (PlannerActor),
        "coordinator" (Coordinator: membership, weights, cost, preemptions),
        "rollout_scheduler" + "rollout_local" (rollout.workers pool: the trainer's samples
        as pull-scheduled requests, see spotlight/actors/rollout/pool.py)
      + TrainerLoop (spotlight/actors/trainer/loop.py; torch work in a thread)
      + TraceReplayer + ProcessNodeLauncher: one spot node process per trace node
      + "rewards" (RewardRegistry) and ``rewards.workers`` reward worker processes
        (ondemand_rewards.py); the trainer scores its rollouts and validation through them
      + the live view (a subscriber of the monitor, given by the command)
    spot node processes: `python -m spotlight.nodes.spot --coordinator ADDR ...`
      (explorer + rollout worker + preemption handler; a notice is SIGTERM, a removal
      SIGKILL)

Ranks > 0 under torchrun are data-parallel trainer followers (no runtime, no output).

Shutdown order (:meth:`Controller.run`): trainer stops (end, time budget, or first Ctrl-C:
after its iteration, with a checkpoint) -> replay cancelled -> every spot process killed and
reaped by PID -> reward workers' statistics asked, workers killed and reaped by PID ->
weight streams and metrics flushed -> runtime shut down. A second Ctrl-C cancels at once
(spot processes are still killed by PID on the way out). Under torchrun every rank gets the
signal: a follower ignores the first and stops when rank 0 broadcasts the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spotlight.config import SystemConfig
from spotlight.nodes.ondemand_rewards import RunRewards
from spotlight.nodes.ondemand_rollouts import rollout_stats, start_rollout_pool
from spotlight.nodes.ondemand_stats import relay_schedulers
from spotlight.nodes.process import write_atomic
from spotlight.nodes.serving import Serving, watch_stop_file

if TYPE_CHECKING:
    from spotlight.actors.trainer.loop import TrainerSummary
    from spotlight.actors.weights.policy_spec import PolicySpec
    from spotlight.models.sampler import SamplerConfig
    from spotlight.runtime import ActorRef, Runtime

__all__ = ["Controller", "Outcome", "node_command", "resolve_ondemand_gpus"]

SETUP_TIMEOUT_S = 30.0
FLUSH_TIMEOUT_S = 10.0
NODE_EXIT_TIMEOUT_S = 5.0


def resolve_ondemand_gpus(cfg: SystemConfig, world_size: int) -> SystemConfig:
    """``cfg`` with ``spot.ondemand_gpus`` set: as configured, else ``world_size`` (the
    trainer's DP ranks, one GPU each). Done once per run, where the DP context is known;
    config.json keeps the unresolved value so a resume on another world size re-resolves."""
    gpus = cfg.spot.ondemand_gpu_count(world_size)
    return dataclasses.replace(cfg, spot=dataclasses.replace(cfg.spot, ondemand_gpus=gpus))


def node_command(cfg: SystemConfig, address: str) -> str:
    """``spot.node_command`` with its placeholders filled for this run."""
    cmd = cfg.spot.node_command
    for key, value in (
        ("{python}", shlex.quote(sys.executable)),
        ("{address}", address),
        ("{grace}", f"{cfg.spot.notice_grace_s:g}"),
        ("{gpus}", str(cfg.spot.gpus_per_node)),
        ("{sp_degree}", str(cfg.spot.sp_degree)),
    ):
        cmd = cmd.replace(key, value)
    return cmd


def _policy_spec(cfg: SystemConfig, progress: bool) -> PolicySpec:
    """What the explorers build: the base checkpoint's policy config (the coordinator sends
    it to every spot node; the weights come from the trainer), so any base can be explored;
    with LoRA also the adapters and the base's path (nodes load the frozen base themselves).

    With no base configured this is where the cached tiny base is built on first use
    (minutes; a progress bar on a terminal), before the live view starts."""
    from spotlight.actors.weights.policy_spec import PolicySpec
    from spotlight.models.bases import base_config

    if cfg.trainer.base is None:
        from spotlight.models.base_build import ensure_base

        base = str(ensure_base(progress=progress))
    else:
        base = cfg.trainer.base
    config = base_config(base, image_size=cfg.trainer.latent_side(), device=_trainer_device())
    return PolicySpec(config=config, lora=cfg.trainer.lora(), base=base)


def _trainer_device() -> str:
    """Where rank 0's trainer computes (the device type sets a pipeline base's dtype)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclasses.dataclass
class _Pool:
    """What the spot pool did (filled as it runs)."""

    enabled: bool
    external: bool = False
    trace: Any = None
    replayer: Any = None
    launcher: Any = None
    task: asyncio.Task[Any] | None = None
    log: Any = None


@dataclasses.dataclass
class _Actors:
    """The runtime actors of the node and the trainer's helpers around them."""

    monitor: ActorRef
    scheduler: ActorRef
    planner: ActorRef
    coordinator: ActorRef
    publisher: Any
    metrics: Any
    rollouts: Any
    relay: asyncio.Task[None] | None = None
    """Publishes the schedulers' statistics (ondemand_stats.py) until the run closes."""

    def schedulers(self) -> dict[str, ActorRef]:
        """The node's pull schedulers by actor name (the sources of topic ``scheduler``)."""
        out = {"explore_scheduler": self.scheduler}
        if self.rollouts is not None:
            out["rollout_scheduler"] = self.rollouts.scheduler
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outcome:
    """What a run of the on-demand node leaves for its report (rank 0), or ``rank`` and
    ``iterations`` for a data-parallel follower (everything else empty)."""

    rank: int = 0
    iterations: int = 0
    cfg: SystemConfig | None = None
    summary: TrainerSummary | None = None
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    pool: _Pool | None = None
    pooled: bool = False
    t0_wall: float = 0.0
    end_wall: float = 0.0
    elapsed_s: float = 0.0
    interrupted: bool = False


class Controller:
    """Starts the on-demand node's actors, runs the trainer, stops everything in order.

    ``on_event(event, **fields)`` prints the start line; ``live_view(monitor)`` (optional)
    draws the monitor's states until cancelled. Both come from the command (its output).
    """

    def __init__(
        self,
        cfg: SystemConfig,
        run_dir: Path,
        *,
        resume: bool,
        serving: Serving,
        on_event: Callable[..., None],
        live_view: Callable[[ActorRef], Awaitable[None]] | None = None,
        progress: bool = False,
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.resume = resume
        self.serving = serving
        self.on_event = on_event
        self.live_view = live_view
        self.progress = progress
        self.stop = asyncio.Event()

    async def run(self) -> Outcome:
        """The whole node; a follower rank only trains (see the module docstring)."""
        from spotlight.actors.trainer.loop import TrainerLoop, init_context
        from spotlight.runtime import Runtime

        ctx = await asyncio.to_thread(init_context)
        loop_cfg = self.cfg.trainer_loop()
        pooled = self.cfg.rollout.pooled(ctx.world)  # every rank refuses a bad combination alike
        if ctx.rank != 0:  # a data-parallel follower: no runtime, rank 0 drives
            # torchrun forwards a signal to every rank: a follower goes on until rank 0
            # (signalled too) broadcasts the stop; a second signal stops it at once.
            _on_interrupts(lambda: None)
            try:
                loop = TrainerLoop(loop_cfg, self.run_dir, resume=self.resume, ctx=ctx)
                follower = await loop.run()
            finally:
                _remove_interrupt_handlers()
            return Outcome(rank=ctx.rank, iterations=follower.iterations)
        cfg = self.cfg = resolve_ondemand_gpus(self.cfg, ctx.world)
        interrupts = _on_interrupts(self._stop_after_iteration)
        t0, t0_wall = time.monotonic(), time.time()
        pool = _Pool(enabled=cfg.spot.enabled, external=cfg.spot.pool == "external")
        summary: TrainerSummary | None = None
        async with Runtime(self.serving.runtime) as rt:
            actors = await self._spawn(rt, loop_cfg.algo.sampler, pooled)
            self._announce(rt, pool)
            view = None
            if self.live_view is not None:
                view = rt.create_task(self.live_view(actors.monitor), name="live view")
            actors.relay = rt.create_task(
                relay_schedulers(actors.schedulers(), actors.monitor, rt), name="scheduler stats"
            )
            if self.serving.stop_file is not None:
                rt.create_task(watch_stop_file(self.serving.stop_file, self.stop), name="stop file")
            rewards = None
            reward_stats: dict[str, Any] | None = None
            try:
                rewards = await RunRewards.start(rt, cfg, self.run_dir, actors.metrics)
                if self.serving.ready_file is not None:
                    write_atomic(self.serving.ready_file, rt.address + "\n")
                if pool.enabled and not pool.external:
                    self._start_pool(rt, pool)
                trainer = TrainerLoop(
                    loop_cfg,
                    self.run_dir,
                    resume=self.resume,
                    ctx=ctx,
                    planner=actors.planner,
                    publisher=actors.publisher,
                    metrics=actors.metrics,
                    reward_fn=rewards.client if rewards is not None else None,
                    rollouts=actors.rollouts,
                )
                summary = await trainer.run(self.stop)
            finally:
                elapsed, end_wall = time.monotonic() - t0, time.time()
                reward_stats = await self._stop_workers(pool, rewards, actors.metrics)
            stats = await self._close(rt, actors, view)
            stats["rewards"] = reward_stats
        _remove_interrupt_handlers()
        return Outcome(
            cfg=cfg,
            summary=summary,
            stats=stats,
            pool=pool,
            pooled=pooled,
            t0_wall=t0_wall,
            end_wall=end_wall,
            elapsed_s=elapsed,
            interrupted=bool(interrupts),
        )

    def _stop_after_iteration(self) -> None:
        print(
            "spotlight run: stopping after this iteration (checkpoint, spot nodes "
            "killed); Ctrl-C again to stop now",
            file=sys.stderr,
            flush=True,
        )
        self.stop.set()

    async def _spawn(self, rt: Runtime, sampler: SamplerConfig, pooled: bool) -> _Actors:
        """Monitor, explore scheduler, planner, weight publisher, rollout pool, coordinator
        (with this node registered), in the order each needs the previous ones."""
        from spotlight.actors.cluster.coordinator import Coordinator
        from spotlight.actors.exploration.planner import PlannerActor
        from spotlight.actors.monitor.actor import Monitor, MonitorConfig
        from spotlight.actors.monitor.metrics import MetricsPublisher
        from spotlight.actors.scheduling.scheduler import SchedulerActor
        from spotlight.actors.weights.publish import WeightPublisher

        cfg, run_dir = self.cfg, self.run_dir
        # The policy spec first: with no base configured it builds the cached tiny base
        # (minutes), which must not count in the monitor's uptime (its clock starts at spawn).
        model = await asyncio.to_thread(_policy_spec, cfg, self.progress)
        tracking = cfg.tracking.build(run_dir, cfg.to_dict())
        monitor = await rt.spawn(
            Monitor,
            MonitorConfig(run_dir=str(run_dir), node_id="od0", tracking=tracking),
            name="monitor",
        )
        scheduler = await rt.spawn(
            SchedulerActor, journal_path=str(run_dir / "explore.journal"), name="explore_scheduler"
        )
        planner = await rt.spawn(
            PlannerActor,
            scheduler=scheduler,
            config=cfg.planner.build(
                group_size=cfg.trainer.group_size, explore_steps=cfg.trainer.num_steps
            ),
            monitor=monitor,
            seed=cfg.run.seed,
            name="planner",
        )
        publisher = WeightPublisher()
        rollouts = None
        if pooled:
            commits = cfg.spot.fault_mode == "elastic"
            rollouts = await start_rollout_pool(rt, cfg.rollout, sampler, commits=commits)
        coordinator = await rt.spawn(
            Coordinator,
            prices=cfg.prices.build(),
            run_id=run_dir.name,
            monitor=monitor,
            publisher=publisher,
            planner=planner,
            scheduler=scheduler,
            sampler=sampler,
            model=model,
            rollouts=rollouts.offer() if rollouts is not None else None,
            name="coordinator",
        )
        await coordinator.register_node.ask(
            "od0", "ondemand", cfg.spot.ondemand_gpus, None, timeout=SETUP_TIMEOUT_S
        )
        metrics = MetricsPublisher(monitor, source="trainer", runtime=rt)
        return _Actors(monitor, scheduler, planner, coordinator, publisher, metrics, rollouts)

    def _announce(self, rt: Runtime, pool: _Pool) -> None:
        self.on_event(
            "start",
            address=rt.address,
            run_dir=str(self.run_dir),
            resume=self.resume,
            seeds=self.cfg.trainer.seeds,
            spot=pool.enabled,
            spot_pool=("external" if pool.external else "trace") if pool.enabled else None,
            ondemand_gpus=self.cfg.spot.ondemand_gpus,
            attach=f"spotlight monitor --attach {rt.address}",
        )

    def _start_pool(self, rt: Runtime, pool: _Pool) -> None:
        """The simulated spot pool: the trace replayed onto one node process per trace node."""
        # Imported here, not at the top: scripts/bench_e2e.py swaps the launcher classes.
        from spotlight.actors.spot.replay import ProcessNodeLauncher, TraceReplayer
        from spotlight.actors.spot.restart_pool import RestartPoolLauncher
        from spotlight.actors.spot.trace import load_trace, synthesize_notices
        from spotlight.actors.weights.share import remove_published_by

        spot = self.cfg.spot
        trace = load_trace(spot.trace_path())
        if spot.notice_s > 0:
            trace = synthesize_notices(trace, spot.notice_s)
        pool.trace = trace
        pool.log = (self.run_dir / "nodes.log").open("ab")
        # restart: the TorchElastic-style baseline (any notice or loss restarts the whole
        # pool); elastic: a noticed node drains and leaves, the rest go on.
        launcher_cls = RestartPoolLauncher if spot.fault_mode == "restart" else ProcessNodeLauncher
        pool.launcher = launcher_cls(
            node_command(self.cfg, rt.address),
            stdout=pool.log.fileno(),
            stderr=pool.log.fileno(),
            on_reaped=remove_published_by,
        )
        pool.replayer = TraceReplayer(trace, pool.launcher, time_scale=spot.time_scale)
        pool.task = rt.create_task(pool.replayer.run(), name="spot replay")

    async def _stop_workers(
        self, pool: _Pool, rewards: RunRewards | None, metrics: Any
    ) -> dict[str, Any] | None:
        """After the trainer: ready file gone, replay cancelled, spot processes and reward
        workers stopped and reaped by PID; the reward workers' statistics."""
        if self.serving.ready_file is not None:
            with contextlib.suppress(OSError):
                self.serving.ready_file.unlink()
        if pool.task is not None:
            pool.task.cancel("the trainer finished")
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pool.task
        if pool.launcher is not None:
            await asyncio.shield(_stop_pool(pool.launcher))
        if pool.log is not None:
            pool.log.close()
        if rewards is None:
            return None
        return await asyncio.shield(rewards.stop(metrics))

    async def _close(
        self, rt: Runtime, actors: _Actors, view: asyncio.Task[Any] | None
    ) -> dict[str, Any]:
        """The actors' statistics, then weight streams and metrics flushed, the view ended."""
        stats = await _gather_stats(actors)
        if actors.relay is not None:  # one last scheduler record was published this period
            actors.relay.cancel("run finished")
            with contextlib.suppress(asyncio.CancelledError):
                await actors.relay
        stats["rollouts"] = await rollout_stats(actors.rollouts)
        # How long this process's event loop could not run (the heartbeat's own lag): a
        # stall here is why nodes re-join; see Transport._credit_own_stall.
        stats["event_loop"] = {
            k: rt.transport.stats[k] for k in ("loop_stalls", "loop_lag_max_ms", "peers_lost")
        }
        with contextlib.suppress(Exception):
            await asyncio.wait_for(actors.publisher.flush(FLUSH_TIMEOUT_S), FLUSH_TIMEOUT_S + 1)
        await actors.publisher.close()
        await actors.metrics.flush(FLUSH_TIMEOUT_S)
        await actors.metrics.close()
        if view is not None:
            view.cancel("run finished")
            with contextlib.suppress(asyncio.CancelledError):
                await view
        return stats


async def _stop_pool(launcher: Any, timeout_s: float = NODE_EXIT_TIMEOUT_S) -> None:
    """End of run: SIGINT every live node (a clean leave, not a preemption), give them
    ``timeout_s`` to exit, then kill and reap whatever is left, by PID (launcher.close)."""
    try:
        procs = [p for p in launcher.procs.values() if p.running]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.popen.wait, max(0.0, deadline - time.monotonic()))
    finally:
        await launcher.close()


def _on_interrupts(first: Callable[[], None]) -> list[int]:
    """SIGINT/SIGTERM on the running loop: the first calls ``first``, a second cancels the
    current task (stop now). Returns the signals received, appended as they come."""
    main_task = asyncio.current_task()
    assert main_task is not None
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            first()
        else:
            main_task.cancel("second interrupt")

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    return received


def _remove_interrupt_handlers() -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signum)


async def _gather_stats(actors: _Actors) -> dict[str, Any]:
    from spotlight.actors.monitor.metrics import plain
    from spotlight.runtime.errors import SpotlightError

    out: dict[str, Any] = {"weights": plain(actors.publisher.statistics())}
    for name, ref in (
        ("scheduler", actors.scheduler),
        ("planner", actors.planner),
        ("coordinator", actors.coordinator),
    ):
        try:
            out[name] = plain(await ref.statistics.ask(timeout=SETUP_TIMEOUT_S))
        except (SpotlightError, TimeoutError, ValueError) as exc:
            out[name] = {"error": repr(exc)}
    return out
