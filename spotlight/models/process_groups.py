"""Process groups built from a store prefix, one per SP-group epoch.

Why not ``torch.distributed.init_process_group`` / ``new_group``: those bind to
one global world that every process must join through a barrier, and
``new_group`` must be called by *every* member of that world. An elastic SP
group re-forms among survivors only (a dead member cannot take part in any
barrier), so each epoch gets its own process group, created from a
``PrefixStore(prefix, store)`` by exactly the ranks of that epoch. Processes of
earlier epochs that are not members of the new one do nothing.

Every collective on the returned group inherits ``timeout`` (gloo applies it to
each operation; NCCL's watchdog aborts the communicator when it expires), so a
member that dies mid-collective makes the survivors raise instead of hang.

Known torch 2.13 issue (measured here, CPU/gloo): a process that used gloo
groups aborts at interpreter exit ~5-10% of the time with "terminate called
without an active exception" (whether or not groups were shut down, with
either TCPStore server). Processes that must exit with status 0 should flush
their results and leave with ``os._exit``.

Use a fresh prefix per epoch (e.g. ``f"sp/{job}/epoch{n}"``): stores are
append-only and keys of an old epoch would otherwise satisfy the new
rendezvous with stale addresses.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, cast

import torch
import torch.distributed as dist
from torch.distributed import PrefixStore, ProcessGroup, Store

__all__ = ["GroupInfo", "new_group_from_store", "shutdown_group", "timed_new_group_from_store"]

Backend = Literal["gloo", "nccl"]
_BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True, kw_only=True)
class GroupInfo:
    """What the creator of a group may want to log (monitor metrics)."""

    prefix: str
    """The store prefix the group was created under."""
    rank: int
    """This process's rank within the group."""
    world_size: int
    """Number of members."""
    backend: str
    """``"gloo"`` or ``"nccl"``."""
    create_s: float
    """Wall time spent connecting the group (rendezvous + connection set-up)."""


def _validate(prefix: str, rank: int, world_size: int, backend: str, timeout: timedelta) -> None:
    if not prefix:
        raise ValueError("prefix must be a non-empty string (one fresh prefix per group epoch)")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(
            f"rank {rank} is out of range for world_size {world_size}: valid ranks 0..{world_size - 1}"
        )
    if backend not in _BACKENDS:
        raise ValueError(
            f"backend {backend!r} is not supported; valid backends: {', '.join(_BACKENDS)}"
        )
    if timeout.total_seconds() <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")


def _gloo_backend(
    store: Store, rank: int, world_size: int, timeout: timedelta, hostname: str | None
) -> Any:
    """A gloo backend; the constructor connects the full mesh (bounded by ``timeout``)."""
    if hostname is None:
        # Same device choice as torch's own constructor (honours GLOO_SOCKET_IFNAME).
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
    gloo: Any = dist.ProcessGroupGloo  # private option fields are not in the stubs
    opts = gloo._Options()
    opts._timeout = timeout
    opts._devices = [gloo.create_device(hostname=hostname)]
    return gloo(store, rank, world_size, opts)


def _nccl_backend(
    store: Store,
    prefix: str,
    rank: int,
    world_size: int,
    timeout: timedelta,
    device: torch.device | None,
) -> tuple[Any, torch.device]:
    """An NCCL backend bound to one GPU, connected eagerly.

    Cannot be exercised on the CPU test machines; written after torch's own
    ``_new_process_group_helper``. Notes:

    - One GPU per rank: ``device`` defaults to ``cuda:$LOCAL_RANK`` (or the
      current device) and is made current, because NCCL binds a communicator
      to the device current at creation.
    - ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` defaults here to 2 ("clean up only"):
      when a collective times out, the watchdog aborts the communicator and
      ``wait()`` raises, but the process is *not* torn down (the default, 3 in
      recent torch / 1 in older, would kill the survivor we want to keep). The
      variable is read when the backend is constructed, so set it before the
      first group if you want something else.
    - Eager connect (``eager_connect_single_device``) so that the epoch switch
      pays the communicator set-up now, under ``timeout``, instead of inside
      the first denoising step.
    """
    if not dist.is_nccl_available():
        raise ValueError(
            "backend 'nccl' requested but this torch build has no NCCL; valid backends here: gloo"
        )
    if device is None:
        index = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
        device = torch.device("cuda", index)
    if device.type != "cuda" or device.index is None:
        raise ValueError(f"NCCL needs a CUDA device with an index (e.g. cuda:0), got {device}")
    torch.cuda.set_device(device)
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
    opts: Any = dist.ProcessGroupNCCL.Options()
    opts._timeout = timeout
    opts.is_high_priority_stream = False
    opts.group_name = prefix
    backend = dist.ProcessGroupNCCL(store, rank, world_size, opts)
    backend.eager_connect_single_device(device)
    return backend, device


def new_group_from_store(
    store: Store,
    prefix: str,
    rank: int,
    world_size: int,
    *,
    backend: Backend = "gloo",
    timeout: timedelta,
    device: torch.device | None = None,
    gloo_hostname: str | None = None,
) -> ProcessGroup:
    """Create a process group among ``world_size`` processes, without a global barrier.

    Every member calls this with the same ``store`` (e.g. one ``TCPStore`` that
    outlives epochs), the same fresh ``prefix`` and its own ``rank``. It
    returns once all members have connected; a member that never arrives makes
    it raise after ``timeout`` (the same timeout then bounds every collective).

    Args:
        store: shared key-value store (kept across epochs).
        prefix: unique per group epoch; keys live under ``prefix/``.
        rank, world_size: this member's rank and the group size.
        backend: ``"gloo"`` (CPU tensors) or ``"nccl"`` (CUDA tensors).
        timeout: bounds the rendezvous and each collective.
        device: NCCL only: this rank's GPU (default ``cuda:$LOCAL_RANK``).
        gloo_hostname: gloo only: address to bind (e.g. ``"127.0.0.1"`` in
            tests); default: torch's choice (``GLOO_SOCKET_IFNAME`` or the
            hostname's address).

    The result is a ``torch.distributed.ProcessGroup`` not registered with the
    default world, so use its methods (``allreduce``, ``alltoall_base``, ...)
    or the helpers in :mod:`spotlight.models.ulysses`, not ``dist.all_reduce``
    (which would look it up in the global registry). Call
    :func:`shutdown_group` when the epoch ends.
    """
    _validate(prefix, rank, world_size, backend, timeout)
    prefix_store = PrefixStore(prefix, store)
    pg = ProcessGroup(prefix_store, rank, world_size)
    if backend == "gloo":
        gloo = _gloo_backend(
            PrefixStore("gloo", prefix_store), rank, world_size, timeout, gloo_hostname
        )
        pg._set_default_backend(ProcessGroup.BackendType.GLOO)
        pg._register_backend(torch.device("cpu"), ProcessGroup.BackendType.GLOO, gloo)
    else:
        nccl, dev = _nccl_backend(
            PrefixStore("nccl", prefix_store), prefix, rank, world_size, timeout, device
        )
        pg._set_default_backend(ProcessGroup.BackendType.NCCL)
        pg._register_backend(torch.device("cuda"), ProcessGroup.BackendType.NCCL, nccl)
        pg.bound_device_id = dev
    cast(Any, pg)._set_group_name(prefix)  # for logs and flight recorder dumps
    return pg


def timed_new_group_from_store(
    store: Store,
    prefix: str,
    rank: int,
    world_size: int,
    *,
    backend: Backend = "gloo",
    timeout: timedelta,
    device: torch.device | None = None,
    gloo_hostname: str | None = None,
) -> tuple[ProcessGroup, GroupInfo]:
    """:func:`new_group_from_store` plus the creation time, for re-form metrics."""
    t0 = time.perf_counter()
    pg = new_group_from_store(
        store,
        prefix,
        rank,
        world_size,
        backend=backend,
        timeout=timeout,
        device=device,
        gloo_hostname=gloo_hostname,
    )
    info = GroupInfo(
        prefix=prefix,
        rank=rank,
        world_size=world_size,
        backend=backend,
        create_s=time.perf_counter() - t0,
    )
    return pg, info


def shutdown_group(group: ProcessGroup | None) -> None:
    """Release a group's connections at the end of its epoch.

    For NCCL this frees the communicator (GPU memory, proxy threads); for gloo
    it closes the sockets. After a member died the group may be broken, so
    ``abort`` is used: it never waits for peers.
    """
    if group is None:
        return
    group.abort()
