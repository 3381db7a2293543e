"""A spot node process: joins the coordinator, explores seeds, leaves cleanly on a notice.

    python -m spotlight.nodes.spot --coordinator tcp://H:P --node-id N \\
        [--platform P] [--notice-grace S] [--ready-file F] [--gpus G] [--sp-degree D]

(also what ``scripts/launch_spot.sh`` runs). Map of one process::

    main ──register_node(N, "spot", G, None, address)──► coordinator
      │      (answer: scheduler ref, the trainer's model config (a dict; a name from an
      │       older coordinator), the trainer's sampler, weight version)
      ├─ --sp-degree D > 1: start G member processes (sp_worker, tracked by PID) and the
      │    "sp_group" SPGroupScheduler; the explorer samples through it (exploration/sp_backend.py)
      ├─ NodeBase(spec): the node's frozen base, loaded once (weights/node_base.py); the
      │    explorer's and the rollout worker's policies sit on it, adapters of their own
      ├─ spawn "explorer" (ExplorerActor of that model config: pulls from the scheduler)
      ├─ register_node(N, "spot", G, explorer) ─► coordinator subscribes it to the weights
      │                                           and registers it with the planner
      ├─ the answer offers rollouts (``rollouts``: the trainer's rollout scheduler): spawn
      │    "rollout" (RolloutWorker: pulls the trainer's on-policy requests, weights from the
      │    publisher) and register_rollout_worker(N, it) so weights flow to it too
      ├─ spawn "node" (NodeAgent) and "preemption" (PreemptionHandler: SIGTERM and the
      │    --platform's metadata notices, leads per runtime/notice/platforms.py)
      ├─ write --ready-file (runtime address), then wait for one of:
      │    * the handler's on_exit: node_left(N, report) ask, exit 0 before the deadline
      │    * SIGINT (or SIGTERM with no notice flags): node_left(N, None), exit 0
      │    * the coordinator lost: re-register for --coordinator-lost-s, else exit 0
      ├─ SP group stopped (members stand by, SIGTERM, SIGKILL after 1 s, reaped by PID)
    ▼
    os._exit(code): a sampling batch abandoned in its thread cannot hold the process.

SP degree (``--sp-degree``): 1 (the default) samples in a worker thread of this process, as
explorers always did. D > 1 hosts an elastic SP group of ``--gpus`` member processes at
degree D (D <= G; members beyond D are spares): each explore batch is one SP request, the
explorer decodes and rewards the final latents here. A member SIGKILLed (one GPU lost) makes
the group re-form at the largest valid smaller degree and resume the batch from its last
step boundary; the node keeps exploring. Members die with this process (PR_SET_PDEATHSIG).

On a notice the handler asks ``node.drain(deadline)``: the agent tells the coordinator
``node_notice`` (so the planner stops counting this node's GPUs and weights stop flowing),
then drains the explorer (finish its batch if it fits, release its leases) and the rollout
worker (finish the running step if it fits, commit every in-flight trajectory at its last
step boundary with the release) side by side. SIGKILL runs nothing: the coordinator sees the
peer loss (a silent preemption); lease expiry re-queues the explorer's seeds and resumes the
rollouts from their last commits.

The rollout worker and the explorer share the node's cores: while the rollout worker holds
requests (the trainer waits on them) the explorer pulls nothing new, and explores again once
they are done, i.e. while the trainer trains (the paper's schedule). The rollout worker
samples at SP degree 1 in this process, whatever ``--sp-degree`` says.

Every wait is bounded: registration by ``--register-timeout-s``, each coordinator call by
``--call-timeout-s`` (and by the notice deadline on the way out).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import uuid
from typing import Any

from spotlight.actors.exploration.backends import BackendFactory, ExploreSettings
from spotlight.actors.exploration.explorer import ExplorerActor
from spotlight.actors.exploration.sp_backend import NodeSPConfig, SPBackend
from spotlight.actors.rollout.worker import Occupancy, RolloutWorker
from spotlight.actors.scheduling.preemption import PreemptionHandler, PreemptionReport
from spotlight.actors.scheduling.work import DrainReport, sampler_from_dict
from spotlight.actors.weights.node_base import NodeBase, NodeBaseStats
from spotlight.actors.weights.policy_spec import PolicySpec
from spotlight.nodes.notice_args import add_notice_arguments, check_notice_arguments, notice_setup
from spotlight.nodes.process import add_join_arguments, unreachable_message, write_atomic
from spotlight.runtime import Actor, ActorRef, Runtime, RuntimeConfig, endpoint
from spotlight.runtime.config import TOKEN_ENV
from spotlight.runtime.errors import SpotlightError
from spotlight.runtime.peers import PeerEvents

INCARNATION = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
"""Drawn once per process and sent with every ``register_node``: when the coordinator found
this node gone (its own stall, a network hiccup) and we register again, it can tell the same
process coming back (no preemption) from a restart under the same id and address."""

__all__ = ["NodeAgent", "build_parser", "main"]

log = logging.getLogger("spotlight.nodes.spot")


_EXIT_MARGIN_S = 0.3
"""Kept free before the notice deadline for the runtime shutdown and the exit itself."""


class NodeAgent(Actor):
    """The preemption handler's worker: announce the notice, then drain the explorer."""

    def __init__(
        self,
        *,
        node_id: str,
        explorer: ActorRef,
        coordinator: ActorRef,
        call_timeout_s: float,
        rollout: ActorRef | None = None,
        base: NodeBase | None = None,
    ) -> None:
        self.node_id = node_id
        self.base = base
        self.explorer = explorer
        self.rollout = rollout
        self.coordinator = coordinator
        self.call_timeout_s = call_timeout_s

    @endpoint
    async def base_statistics(self) -> NodeBaseStats | None:
        """What the node's roles hold in memory (one frozen base under LoRA); None: unknown."""
        return None if self.base is None else self.base.statistics()

    @endpoint
    async def drain(self, deadline: float) -> DrainReport:
        try:
            await self.coordinator.node_notice.tell(
                self.node_id, deadline, timeout=min(self.call_timeout_s, _left(deadline))
            )
        except (SpotlightError, TimeoutError) as exc:
            log.warning("could not tell the coordinator about the notice: %r", exc)
        workers = [w for w in (self.explorer, self.rollout) if w is not None]
        answers = await asyncio.gather(
            *(w.drain.ask(deadline, timeout=_left(deadline)) for w in workers),
            return_exceptions=True,
        )
        reports: list[DrainReport] = []
        for worker, answer in zip(workers, answers, strict=True):
            if isinstance(answer, DrainReport):
                reports.append(answer)
            elif isinstance(answer, SpotlightError | TimeoutError):
                log.warning("drain of %s failed: %r", worker.name, answer)
            else:  # a bug, not a lost worker: let the preemption handler see it
                raise answer
        if not reports:
            raise SpotlightError(f"no worker of node {self.node_id} drained")
        return merge_drain_reports(self.node_id, reports)


def merge_drain_reports(node_id: str, reports: list[DrainReport]) -> DrainReport:
    """One report for the node: releases, snapshots and abandoned sample-steps added up."""
    if len(reports) == 1:
        return reports[0]
    return DrainReport(
        worker_id=node_id,
        released=sum(r.released for r in reports) if all(r.released >= 0 for r in reports) else -1,
        snapshots={k: v for r in reports for k, v in r.snapshots.items()},
        finished_inflight=all(r.finished_inflight for r in reports),
        abandoned_steps=sum(r.abandoned_steps for r in reports),
        seconds=max(r.seconds for r in reports),
    )


def _left(deadline: float) -> float:
    """Seconds we may still wait before ``deadline`` (``time.time()``), at least 0.1."""
    return max(0.1, deadline - time.time() - _EXIT_MARGIN_S)


async def _register(
    coordinator: ActorRef,
    args: argparse.Namespace,
    explorer: ActorRef | None,
    address: str,
    *,
    within_s: float,
) -> dict[str, Any] | None:
    """``register_node`` retried until ``within_s`` runs out (the coordinator may be starting)."""
    give_up = time.monotonic() + within_s
    while True:
        left = give_up - time.monotonic()
        try:
            answer: dict[str, Any] = await coordinator.register_node.ask(
                args.node_id,
                "spot",
                args.gpus,
                explorer,
                address,
                incarnation=INCARNATION,
                timeout=max(0.1, min(left, 5.0)),
            )
            return answer
        except (SpotlightError, TimeoutError) as exc:
            if time.monotonic() + 0.5 >= give_up:
                log.error(unreachable_message(args.coordinator, within_s, exc))
                return None
            log.info("register_node failed (%r); retrying", exc)
            await asyncio.sleep(0.5)  # a retry pace, not synchronisation


async def _node_body(args: argparse.Namespace, config: RuntimeConfig) -> int:
    loop = asyncio.get_running_loop()
    leave: asyncio.Future[tuple[str, PreemptionReport | None]] = loop.create_future()

    def on_exit(report: PreemptionReport) -> None:
        if not leave.done():
            leave.set_result(("notice", report))

    def on_signal(name: str) -> None:
        if not leave.done():
            leave.set_result((name, None))

    async with Runtime(config) as rt, contextlib.AsyncExitStack() as stack:
        peers = rt.peer_events()
        coordinator = rt.ref(args.coordinator, args.coordinator_name)
        answer = await _register(
            coordinator, args, None, rt.address, within_s=args.register_timeout_s
        )
        if answer is None:
            return 1
        if answer.get("scheduler") is None:
            log.error("the coordinator named no explore scheduler: nothing to do")
            return 1
        try:
            model = PolicySpec.from_answer(
                answer.get("model", "tiny"), answer.get("lora"), base_override=args.base
            )
        except ValueError as exc:
            log.error("the coordinator's model config is unusable: %s", exc)
            return 1
        settings = ExploreSettings(
            trainer_sampler=sampler_from_dict(answer["sampler"]),
            pull_batch=args.pull_batch,
            micro_batch=args.micro_batch,
            mode=args.mode,
            idle_pull_s=0.1,
        )
        backend: BackendFactory | None = None
        if args.sp_degree > 1:
            try:
                sp = await _start_sp_group(rt, args, model)
            except (ValueError, RuntimeError, TimeoutError, SpotlightError) as exc:
                log.error("cannot start the SP group: %s", exc)
                return 1
            stack.callback(sp.close)  # runs last (LIFO), even after an error: kill by PID
            stack.push_async_callback(sp.stop)  # first: stand by, SIGTERM, reap
            backend = sp.factory
            print(
                f"spot node {args.node_id}: SP group of {args.gpus} members (degree "
                f"{args.sp_degree}) ready: pids {sp.member_pids}",
                flush=True,
            )
        occupancy = Occupancy()  # the explorer steps aside while rollouts are held
        node_base = NodeBase(model)  # one frozen base for the explorer and the rollout worker
        explorer = await rt.spawn(
            ExplorerActor,
            name="explorer",
            pause_while=occupancy.busy,
            scheduler=answer["scheduler"],
            worker_id=args.node_id,
            model=model,
            settings=settings,
            backend=backend,
            base=node_base,
        )
        if (
            await _register(coordinator, args, explorer, rt.address, within_s=args.call_timeout_s)
            is None
        ):
            return 1
        rollout = await _start_rollout_worker(
            rt, args, node_base, answer.get("rollouts"), occupancy
        )
        if rollout is not None:
            await _register_rollout(coordinator, args, rollout)
        agent = await rt.spawn(
            NodeAgent,
            name="node",
            node_id=args.node_id,
            explorer=explorer,
            rollout=rollout,
            coordinator=coordinator,
            call_timeout_s=args.call_timeout_s,
            base=node_base,
        )
        notice = notice_setup(args)
        if notice is not None:
            await rt.spawn(
                PreemptionHandler,
                name="preemption",
                worker=agent,
                worker_id=args.node_id,
                sources=notice[0],
                default_lead_s=notice[1],
                on_exit=on_exit,
            )
        else:
            loop.add_signal_handler(signal.SIGTERM, on_signal, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, on_signal, "SIGINT")
        if args.ready_file:
            write_atomic(args.ready_file, rt.address)
        print(f"spot node {args.node_id} at {rt.address}", flush=True)

        watcher: asyncio.Future[Any] = asyncio.ensure_future(
            _coordinator_lost(peers, coordinator, explorer, args, rollout)
        )
        waiting: set[asyncio.Future[Any]] = {leave, watcher}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if watcher in done:
            log.error("coordinator gone; spot node %s exits", args.node_id)
            return 0
        watcher.cancel("leaving")
        why, report = leave.result()
        deadline = report.deadline if report is not None else time.time() + args.call_timeout_s
        try:
            await coordinator.node_left.ask(args.node_id, report, timeout=_left(deadline))
        except (SpotlightError, TimeoutError) as exc:
            log.warning("node_left not acknowledged: %r", exc)
        log.warning("spot node %s leaves (%s)", args.node_id, why)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(stack.aclose(), timeout=_left(deadline))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(rt.shutdown(f"leaving: {why}"), timeout=_left(deadline))
    return 0


async def _start_sp_group(rt: Runtime, args: argparse.Namespace, model: PolicySpec) -> SPBackend:
    """The node's SP group (``--gpus`` members at ``--sp-degree``); metrics go to the run's
    monitor (actor ``monitor`` beside the coordinator) when there is one."""
    config = NodeSPConfig(
        node=args.node_id,
        members=args.gpus,
        degree=args.sp_degree,
        threads=args.threads,
        heartbeat_s=args.heartbeat_s,
    )
    monitor: ActorRef | None = None
    try:
        monitor = await rt.lookup(args.coordinator, "monitor", timeout=args.call_timeout_s)
    except (SpotlightError, TimeoutError):
        log.info("no monitor beside the coordinator: SP group metrics are not published")
    return await SPBackend.start(rt, config, model, monitor=monitor)


async def _start_rollout_worker(
    rt: Runtime,
    args: argparse.Namespace,
    base: NodeBase,
    offer: dict[str, Any] | None,
    occupancy: Occupancy,
) -> ActorRef | None:
    """The node's rollout worker when the coordinator offers rollouts, else None. Its policy
    sits on the node's frozen base (LoRA: the explorer's, no second load)."""
    if not offer or offer.get("scheduler") is None:
        return None
    policy = await asyncio.to_thread(base.policy_for, "rollout")  # versions: the publisher
    policy.train()  # the trainer's sampling mode (flow_grpo.py): its log-probs must match
    return await rt.spawn(
        RolloutWorker,
        name="rollout",
        scheduler=offer["scheduler"],
        worker_id=f"{args.node_id}/rollout",
        model=policy,
        timing=offer["timing"],
        settings=offer["settings"],
        wait_for_weights=True,
        occupancy=occupancy,
    )


async def _register_rollout(
    coordinator: ActorRef, args: argparse.Namespace, rollout: ActorRef
) -> None:
    """Subscribe the rollout worker to the weights; a refusal only costs its rollouts."""
    try:
        if not await coordinator.register_rollout_worker.ask(
            args.node_id, rollout, timeout=args.call_timeout_s
        ):
            log.warning("coordinator refused the rollout worker of %s", args.node_id)
    except (SpotlightError, TimeoutError) as exc:
        log.warning("register_rollout_worker failed (%r): this node explores only", exc)


async def _coordinator_lost(
    peers: PeerEvents,
    coordinator: ActorRef,
    explorer: ActorRef,
    args: argparse.Namespace,
    rollout: ActorRef | None = None,
) -> None:
    """Returns when the coordinator is lost and cannot be re-joined within the timeout."""
    async for event in peers:
        if event.kind != "peer_lost" or event.address != coordinator.address:
            continue
        log.warning("coordinator lost (%s); trying to re-join", event.reason)
        again = await _register(
            coordinator, args, explorer, explorer.address, within_s=args.coordinator_lost_s
        )
        if again is None:
            return
        if rollout is not None:
            await _register_rollout(coordinator, args, rollout)
    return


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m spotlight.nodes.spot",
        description="A Spotlight spot node: an explorer that joins the coordinator and "
        "leaves cleanly on a preemption notice (SIGTERM).",
    )
    p.add_argument("--coordinator", required=True, help="coordinator runtime address tcp://H:P")
    p.add_argument("--coordinator-name", default="coordinator", help="the coordinator actor")
    p.add_argument("--node-id", required=True, help="this node's id (unique in the run)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs billed for this node")
    add_notice_arguments(p)
    p.add_argument(
        "--bind-host",
        default="127.0.0.1",
        help=f"interface to serve on; beyond loopback the shared secret in ${TOKEN_ENV} is "
        "required (the coordinator's)",
    )
    p.add_argument("--advertise-host", default=None, help="host others dial (with 0.0.0.0)")
    p.add_argument(
        "--sp-degree",
        type=int,
        default=1,
        help="sequence-parallel degree of the node's explorer: 1 samples in this process; "
        "D > 1 runs an elastic SP group of --gpus member processes (D <= --gpus, and D must "
        "divide the model's attention heads and image tokens)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (per SP member too)")
    p.add_argument(
        "--base",
        default=None,
        help="this node's copy of the trainer's base checkpoint (LoRA runs; default: the "
        "trainer's path, which must then exist here)",
    )
    p.add_argument("--mode", default="sde", choices=("sde", "ode"), help="exploration sampler")
    p.add_argument("--pull-batch", type=int, default=8, help="requests sampled together")
    p.add_argument("--micro-batch", type=int, default=16, help="samples per forward pass")
    add_join_arguments(p, peer="coordinator")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    for name in ("register_timeout_s", "coordinator_lost_s"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 0 seconds, got {value}")
    for name in ("heartbeat_s", "call_timeout_s"):
        value = getattr(args, name)
        if not value > 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be > 0 seconds, got {value}")
    if args.gpus < 0:
        raise SystemExit(f"--gpus must be >= 0, got {args.gpus}")
    check_notice_arguments(args)
    if args.sp_degree < 1:
        raise SystemExit(f"--sp-degree must be >= 1, got {args.sp_degree}")
    if args.sp_degree > max(args.gpus, 1):
        raise SystemExit(
            f"--sp-degree {args.sp_degree} needs as many GPUs (member processes); --gpus is "
            f"{args.gpus}: valid degrees 1..{max(args.gpus, 1)}"
        )
    logging.basicConfig(
        level=args.log_level, format=f"%(asctime)s spot {args.node_id} %(levelname)s %(message)s"
    )
    try:
        config = RuntimeConfig(
            bind_host=args.bind_host,
            advertise_host=args.advertise_host,
            cluster_token=os.environ.get(TOKEN_ENV) or None,
            heartbeat_s=args.heartbeat_s,
            missed_heartbeats=4,
            ask_timeout_s=args.call_timeout_s,
            stop_timeout_s=1.0,
        )
    except ValueError as exc:
        raise SystemExit(f"spot node: {exc}") from None
    import torch
    import uvloop

    torch.set_num_threads(args.threads)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        code = runner.run(_node_body(args, config))
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
