"""Data-parallel Flow-GRPO update over the on-demand trainer ranks (torch.distributed).

Every rank holds the same policy and optimizer state. One iteration (``dp_iteration``)::

    rank 0 (orchestrator)           every rank r of the DP world
    plan_k = prompts, seeds ──broadcast_object──▶ same GLOBAL lists (groups contiguous)
                                    shard_groups → whole groups [g0, g1) of the batch
                                    rollout of its shard with θ_k (no collective)
                                    ① all_gather rewards ──▶ global rewards on every rank
                                    advantages + reward stats on the GLOBAL batch (as 1 rank)
                                    per inner epoch: backward over the local shard,
                                      ② grad check + ③ all_reduce(SUM) of grad·n_local/n_global
                                      clip + optimizer.step on identical gradients → θ_{k+1}
                                    ④ all_reduce(SUM/MAX) of loss diagnostics and timings

Why whole groups: GRPO advantages are per group (prompt), so a rank never needs another
rank's samples for its advantages. They are still computed on the gathered global rewards
(①, a few bytes), so that a prompt that appears in two groups is treated exactly as the
1-rank path treats it, and reward statistics are global and identical on every rank.

Why the gradient weighting: ``train_on_rollout`` accumulates each update as the MEAN over the
update's samples (and trained steps). With one update per inner epoch covering the local
shard, rank r's gradient is mean_r; Σ_r mean_r · n_r / n equals the mean over the global
batch, i.e. the gradient the 1-rank path computes. Clipping and the optimizer step run after
the all-reduce on bit-identical gradients (a ring/tree all-reduce delivers the same sum to
every rank), so all ranks take the same step and stay equal without re-broadcasting weights.

Equality with the 1-rank path needs the 1-rank path to also make ONE update per inner epoch
(``chunks_per_update`` covering the global batch): with more, its updates would span samples
of several ranks. With ``world > 1`` other configs are refused (ValueError naming the value to
set); with ``world == 1`` ``dp_iteration`` is exactly ``flow_grpo_iteration``.

Who waits on what: every collective (①–④, ``broadcast_object``, ``broadcast_parameters``)
is entered by all ranks in the same order; the process group's ``timeout_s`` (given to
``init_process_group``) bounds each one, so a rank that died or raised never leaves the
others hanging: under gloo they raise at once when the peer's connection closes, after at
most ``timeout_s`` otherwise; under NCCL the watchdog aborts the communicator (and, with
torch's default async error handling, the process). Input errors are checked before the
first collective, on arguments every rank has, so they raise on every rank alike.

Validation and checkpoints run on rank 0 only (the weights are identical on every rank);
the other ranks go straight to the next ``broadcast_object`` of the next plan and wait there
(bounded by ``timeout_s``: keep validation shorter than that, or give a larger timeout).

Usage (every rank runs the same loop; rank 0 decides, the others follow)::

    ctx = init_data_parallel()                      # world 1 without torchrun's env
    policy = ...; broadcast_parameters(policy, ctx) # or load the same checkpoint everywhere
    optimizer = AdamW(policy.parameters(), ...)     # same state on every rank
    while True:
        plan = broadcast_object(next_plan() if ctx.is_main else None, ctx)
        if plan is None:                            # rank 0's way to say "stop"
            break
        stats = dp_iteration(policy, optimizer, plan.prompts, plan.seeds, reward_fn,
                             config, ctx, shuffle_seed=k)
        if ctx.is_main: publish / validate / checkpoint
    shutdown_data_parallel(ctx)

Backends: gloo on CPU; NCCL on GPU, with ``cuda:LOCAL_RANK`` as this rank's device (set
before the group is created, and given as ``device_id`` so the communicator binds to it).
Collective tensors live on ``DPContext.device``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed import ProcessGroup

from spotlight.models.dit import DiTPolicy, VelocityModel
from spotlight.models.flow_grpo import (
    FlowGrpoConfig,
    GradSync,
    IterationStats,
    RewardFn,
    flow_grpo_iteration,
    rollout,
    train_on_rollout,
)
from spotlight.models.grpo import LossDiagnostics, group_advantages, reward_stats
from spotlight.models.sampler import TrajectoryState

__all__ = [
    "DPContext",
    "broadcast_object",
    "broadcast_parameters",
    "dp_iteration",
    "init_data_parallel",
    "make_grad_sync",
    "shard_groups",
    "shutdown_data_parallel",
]

_BACKENDS = ("gloo", "nccl")
_BUCKET_BYTES = 32 << 20
"""Gradients are all-reduced in flat buckets of about this size: few collectives for the
tiny model, bounded extra memory for a large one."""


@dataclass(frozen=True)
class DPContext:
    """This process's place in the data-parallel world."""

    rank: int
    world: int
    group: ProcessGroup | None
    """``None`` when ``world == 1`` (no process group, no collective)."""
    backend: str
    """``"gloo"`` on CPU, ``"nccl"`` on GPU."""
    local_rank: int = 0
    """This rank's CUDA device index under NCCL (torchrun's ``LOCAL_RANK``). Kept here, not
    read from ``torch.cuda.current_device()``: the current device is per thread, and the
    trainer loop runs iterations in worker threads."""

    @property
    def device(self) -> torch.device:
        """Where this rank's collective tensors live: its CUDA device under NCCL, else CPU."""
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def device_scope(self) -> AbstractContextManager[Any]:
        """Makes ``device`` the thread's current CUDA device under NCCL (no-op on gloo)."""
        if self.backend == "nccl":
            return torch.cuda.device(self.local_rank)
        return nullcontext()

    @property
    def is_main(self) -> bool:
        """Rank 0: the rank that orchestrates, validates and checkpoints."""
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set (torchrun sets it)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def init_data_parallel(backend: str | None = None, timeout_s: float = 60.0) -> DPContext:
    """Join the data-parallel world described by torchrun's environment.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` (env://
    rendezvous; under torchrun the agent hosts the store). Without ``WORLD_SIZE`` (or with 1)
    there is no process group. ``backend=None`` picks NCCL when CUDA is available, else gloo.
    ``timeout_s`` bounds the rendezvous and every later collective of the group. If the
    default group already exists (the caller initialised it), it is reused as is.
    """
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in _BACKENDS:
        raise ValueError(f"backend {backend!r} is not supported; valid: {', '.join(_BACKENDS)}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend 'nccl' needs CUDA, which is not available; use 'gloo'")
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        used = str(dist.get_backend())
        return DPContext(
            rank=dist.get_rank(),
            world=world,
            group=dist.group.WORLD if world > 1 else None,
            backend=used,
            local_rank=_env_int("LOCAL_RANK", torch.cuda.current_device()) if used == "nccl" else 0,
        )
    world = _env_int("WORLD_SIZE", 1)
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world}")
    if world == 1:
        return DPContext(rank=0, world=1, group=None, backend=backend)
    rank = _env_int("RANK")
    if not 0 <= rank < world:
        raise ValueError(f"RANK {rank} is out of range for WORLD_SIZE {world}: 0..{world - 1}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set (torchrun sets it)")
    device_id, local_rank = None, 0
    if backend == "nccl":
        local_rank = _env_int("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1))
        if not 0 <= local_rank < torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank} has no CUDA device; this node has "
                f"{torch.cuda.device_count()}: 0..{torch.cuda.device_count() - 1}"
            )
        device_id = torch.device("cuda", local_rank)
        torch.cuda.set_device(device_id)  # before the communicator exists (it binds to it)
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
        device_id=device_id,
    )
    return DPContext(
        rank=rank, world=world, group=dist.group.WORLD, backend=backend, local_rank=local_rank
    )


def shutdown_data_parallel(ctx: DPContext) -> None:
    """Destroy the process group ``init_data_parallel`` made (no-op for world 1)."""
    if ctx.group is not None and dist.is_initialized():
        dist.destroy_process_group()


def shard_groups(num_groups: int, ctx: DPContext) -> range:
    """This rank's contiguous whole groups: sizes differ by at most one, earlier ranks larger.

    A rank gets an empty range when there are fewer groups than ranks.
    """
    if not isinstance(num_groups, int) or num_groups < 0:
        raise ValueError(f"num_groups must be an integer >= 0, got {num_groups!r}")
    base, extra = divmod(num_groups, ctx.world)
    start = ctx.rank * base + min(ctx.rank, extra)
    return range(start, start + base + (1 if ctx.rank < extra else 0))


def broadcast_object(obj: Any, ctx: DPContext, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (what the other ranks pass is ignored).

    Pickled by torch.distributed: only between the ranks of one trainer job, which trust each
    other as much as they trust the store they rendezvoused through.
    """
    if not 0 <= src < ctx.world:
        raise ValueError(f"src {src} is out of range for world {ctx.world}: 0..{ctx.world - 1}")
    if ctx.group is None:
        return obj
    box = [obj if ctx.rank == src else None]
    with ctx.device_scope():
        dist.broadcast_object_list(box, src=src, group=ctx.group, device=ctx.device)
    return box[0]


def broadcast_parameters(module: nn.Module, ctx: DPContext, src: int = 0) -> None:
    """Make every rank's parameters and buffers equal to rank ``src``'s (start or resume).

    The optimizer state must match too: build it after this call, or load the same
    checkpoint on every rank.
    """
    if ctx.group is None:
        return
    with torch.no_grad(), ctx.device_scope():
        for t in [*module.parameters(), *module.buffers()]:
            if t.device == ctx.device:
                dist.broadcast(t.detach(), src=src, group=ctx.group)  # shares t's storage
            else:
                buf = t.detach().to(ctx.device)
                dist.broadcast(buf, src=src, group=ctx.group)
                t.copy_(buf)


def _buckets(grads: Sequence[Tensor], cap_bytes: int) -> list[list[Tensor]]:
    """Consecutive gradients of one dtype and device, about ``cap_bytes`` per bucket."""
    out: list[list[Tensor]] = []
    size = 0
    for g in grads:
        if (
            not out
            or size >= cap_bytes
            or out[-1][0].dtype != g.dtype
            or out[-1][0].device != g.device
        ):
            out.append([])
            size = 0
        out[-1].append(g)
        size += g.numel() * g.element_size()
    return out


def make_grad_sync(ctx: DPContext, scale: float) -> GradSync:
    """The ``grad_sync`` for ``train_on_rollout``: grads ← all_reduce(SUM)(grads · scale).

    ``scale`` is this rank's share of the global batch (n_local / n_global). Before reducing,
    the ranks compare how many gradients and elements they hold (one small all_gather): a
    mismatch (a parameter with a gradient on one rank only) would sum unrelated numbers, so
    it raises instead.
    """
    if ctx.group is None:
        raise ValueError("make_grad_sync needs a process group (world > 1)")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be > 0, got {scale!r}")
    group, device = ctx.group, ctx.device

    def sync(grads: list[Tensor]) -> None:
        with ctx.device_scope():
            _sync(grads)

    def _sync(grads: list[Tensor]) -> None:
        shape = torch.tensor([len(grads), sum(g.numel() for g in grads)], device=device)
        shapes = [torch.empty_like(shape) for _ in range(ctx.world)]
        dist.all_gather(shapes, shape, group=group)
        seen = [tuple(int(v) for v in s.tolist()) for s in shapes]
        if len(set(seen)) != 1:
            raise RuntimeError(
                f"ranks hold different gradients (count, elements) per rank: {seen}; every "
                "rank must run the same model code so the same parameters get gradients"
            )
        for bucket in _buckets(grads, _BUCKET_BYTES):
            flat = torch.cat([g.reshape(-1) for g in bucket]).to(device)
            flat.mul_(scale)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            offset = 0
            for g in bucket:
                n = g.numel()
                g.copy_(flat[offset : offset + n].view_as(g))
                offset += n

    return sync


def _gather_rewards(local_B: Tensor, sizes: Sequence[int], ctx: DPContext) -> Tensor:
    """Concatenation of every rank's rewards (rank order), padded for the all_gather."""
    assert ctx.group is not None and local_B.shape[0] == sizes[ctx.rank]
    width = max(sizes)
    padded = torch.zeros(width, dtype=torch.float32, device=ctx.device)
    padded[: local_B.shape[0]] = local_B.to(device=ctx.device, dtype=torch.float32)
    parts = [torch.empty_like(padded) for _ in range(ctx.world)]
    dist.all_gather(parts, padded, group=ctx.group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]).cpu()


def _check_batch(
    prompts: Sequence[str], seeds: Sequence[int], config: FlowGrpoConfig, world: int
) -> None:
    if len(prompts) != config.batch_size or len(seeds) != config.batch_size:
        raise ValueError(
            f"expected {config.batch_size} (prompt, seed) pairs "
            f"({config.prompts_per_iter} prompts × {config.group_size}), got "
            f"{len(prompts)} prompts and {len(seeds)} seeds"
        )
    g = config.group_size
    for i in range(config.prompts_per_iter):
        group = set(prompts[i * g : (i + 1) * g])
        if len(group) != 1:
            raise ValueError(
                f"group {i} (samples {i * g}..{(i + 1) * g - 1}) mixes prompts {sorted(group)}: "
                f"data parallelism shards whole groups, each {g} contiguous samples of one prompt"
            )
    if config.prompts_per_iter < world:
        raise ValueError(
            f"{config.prompts_per_iter} groups cannot be shared by {world} data-parallel ranks: "
            f"every rank needs at least one whole group; use prompts_per_iter >= {world}"
        )
    needed = math.ceil(config.batch_size / config.micro_batch)
    if config.chunks_per_update < needed:
        raise ValueError(
            f"chunks_per_update={config.chunks_per_update} makes "
            f"{math.ceil(needed / config.chunks_per_update)} optimizer steps per inner epoch on "
            f"one rank, but the data-parallel update makes one over the global batch; set "
            f"chunks_per_update >= {needed} (= ceil({config.batch_size} samples / micro_batch "
            f"{config.micro_batch})) so both paths agree"
        )


def dp_iteration(
    policy: DiTPolicy,
    optimizer: torch.optim.Optimizer,
    prompts: list[str],
    seeds: list[int],
    reward_fn: RewardFn,
    config: FlowGrpoConfig,
    ctx: DPContext,
    *,
    shuffle_seed: int = 0,
    ref_policy: VelocityModel | None = None,
    trajectories: Sequence[TrajectoryState] | None = None,
) -> IterationStats:
    """One Flow-GRPO iteration on the GLOBAL batch, each rank rolling out its whole groups.

    ``trajectories``: the global batch's samples, drawn by rollout workers (one rank only:
    with several, each rank samples its own shard).

    ``prompts``/``seeds`` are the global batch (identical on every rank; one entry per sample,
    each group ``group_size`` contiguous samples of one prompt). The update, reward stats and
    loss diagnostics equal the 1-rank ``flow_grpo_iteration`` on the same batch (within float
    rounding) and are identical on every rank; timings are the slowest rank's.
    """
    if ctx.world == 1:
        stats, _ = flow_grpo_iteration(
            policy,
            optimizer,
            prompts,
            seeds,
            reward_fn,
            config,
            shuffle_seed=shuffle_seed,
            ref_policy=ref_policy,
            trajectories=trajectories,
        )
        return stats
    if trajectories is not None:
        raise ValueError(
            f"pre-sampled trajectories need a single trainer rank, this run has {ctx.world}; "
            "set rollout.workers=trainer (each rank samples its own shard)"
        )
    _check_batch(prompts, seeds, config, ctx.world)
    if ctx.backend == "nccl" and policy.device != ctx.device:
        raise ValueError(
            f"the policy is on {policy.device} but this NCCL rank's device is {ctx.device}; "
            f"move it there (policy.to(ctx.device)) before the first iteration"
        )
    with ctx.device_scope():  # this thread's current CUDA device (see DPContext.local_rank)
        return _sharded_iteration(
            policy, optimizer, prompts, seeds, reward_fn, config, ctx, shuffle_seed, ref_policy
        )


def _sharded_iteration(
    policy: DiTPolicy,
    optimizer: torch.optim.Optimizer,
    prompts: list[str],
    seeds: list[int],
    reward_fn: RewardFn,
    config: FlowGrpoConfig,
    ctx: DPContext,
    shuffle_seed: int,
    ref_policy: VelocityModel | None,
) -> IterationStats:
    """``dp_iteration`` for world > 1, on checked arguments."""
    g = config.group_size
    shards = [
        shard_groups(config.prompts_per_iter, dataclasses.replace(ctx, rank=r))
        for r in range(ctx.world)
    ]
    sizes = [len(s) * g for s in shards]
    mine = shards[ctx.rank]
    lo, hi = mine.start * g, mine.stop * g
    n_local, n_global = hi - lo, config.batch_size

    batch = rollout(policy, prompts[lo:hi], seeds[lo:hi], reward_fn, config)
    rewards_B = _gather_rewards(batch.rewards_B, sizes, ctx)
    advantages_B = group_advantages(
        rewards_B, prompts, std_eps=config.grpo.std_eps, clip=None, norm=config.grpo.adv_norm
    )

    # One optimizer step per inner epoch over the local shard (see module docstring).
    local_config = dataclasses.replace(config, chunks_per_update=len(batch.chunks))
    t_train = time.perf_counter()
    diag, first_dev, grad_norm, n_opt = train_on_rollout(
        policy,
        optimizer,
        batch,
        advantages_B[lo:hi],
        local_config,
        shuffle_seed=shuffle_seed,
        ref_policy=ref_policy,
        grad_sync=make_grad_sync(ctx, n_local / n_global),
    )
    train_s = time.perf_counter() - t_train
    assert n_opt == config.inner_epochs

    # ④ diagnostics: the 1-rank value is a plain mean over (chunk, step, epoch) evaluations.
    evals = len(batch.chunks) * len(config.sampler.sde_steps()) * config.inner_epochs
    mean_names = [f.name for f in fields(LossDiagnostics) if f.name != "ratio_max"]
    sums = torch.tensor(
        [getattr(diag, n) * evals for n in mean_names] + [float(evals)],
        dtype=torch.float64,
        device=ctx.device,
    )
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=ctx.group)
    maxes = torch.tensor(
        [diag.ratio_max, first_dev, batch.sample_s, batch.reward_s, train_s],
        dtype=torch.float64,
        device=ctx.device,
    )
    dist.all_reduce(maxes, op=dist.ReduceOp.MAX, group=ctx.group)
    s, m = sums.cpu().tolist(), maxes.cpu().tolist()
    loss = LossDiagnostics(
        **{n: v / s[-1] for n, v in zip(mean_names, s[:-1], strict=True)}, ratio_max=m[0]
    )
    return IterationStats(
        reward=reward_stats(rewards_B, prompts),
        loss=loss,
        first_ratio_dev=m[1],
        grad_norm=grad_norm,  # computed on the all-reduced gradient: the same on every rank
        optimizer_steps=n_opt,
        rollout_s=m[2],
        reward_s=m[3],
        train_s=m[4],
    )
