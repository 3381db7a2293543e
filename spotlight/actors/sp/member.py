"""One SP group member: an actor per process (per GPU) that runs its shard of each step.

The member is passive: the group scheduler (``sp_group.py``) tells it which epoch to form
(``form``), which step to run (``step``), when to stand by (``stand_by``), and where to copy
weights from when it joins (``fetch_weights``). It keeps no trajectory state between steps:
every ``step`` carries the latent of the step boundary, so a failed step is simply asked
again of the next epoch's members.

Who waits on what (inside one member process):

- ``step`` holds ``_busy`` while the forward runs in a worker thread (the event loop stays free
  for heartbeats, pings and ``form``); its collectives are bounded by the epoch's timeout. On a
  collective error it aborts the group at once, so peers blocked on it fail fast too.
- ``form`` (concurrent) records the newest epoch, waits for ``_busy`` (a running step ends or
  fails within the collective timeout), aborts the old group, then connects the new one in a
  thread *without* the lock. If a newer ``form`` arrived meanwhile the result is discarded, so a
  rendezvous stuck on a dead member never blocks the next re-form beyond its own timeout.
- ``ping`` never waits on anything (the scheduler's probe for who is alive).

Shutdown: the scheduler sends ``stand_by`` (group aborted); the process then leaves with
``os._exit`` after flushing (torch 2.13 + gloo may abort at interpreter exit).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, cast

import torch
import torch.distributed as dist
from torch import Tensor

from spotlight.actors.weights.share import (
    ChunkAssembler,
    CopyStats,
    SharedWeights,
    WeightManifest,
    flat_bytes,
    iter_chunks,
    load_flat,
    load_from_shm,
    publish_to_shm,
)
from spotlight.models.dit import DiTConfig, DiTPolicy, TextEmbedding, build_policy
from spotlight.models.lora import tunable_state
from spotlight.models.process_groups import shutdown_group, timed_new_group_from_store
from spotlight.models.sampler import SamplerConfig, TrajectoryState, advance
from spotlight.models.ulysses import ulysses_forward, validate_degree
from spotlight.runtime import Actor, ActorRef, endpoint

__all__ = ["SPMember", "SPMemberConfig", "StaleEpoch", "StaleWeights"]


class StaleEpoch(RuntimeError):
    """A call named an epoch this member is not (or no longer) in."""


class StaleWeights(RuntimeError):
    """A step named a weight version this member does not hold (never sample mixed weights)."""


@dataclass(frozen=True, kw_only=True)
class SPMemberConfig:
    """How a member process builds its model and reaches the group's store."""

    store_host: str
    """Host of the TCPStore shared by every epoch (hosted by the coordinator)."""
    store_port: int
    """Port of that store."""
    node: str
    """Node id (hostname in production): joiners on the same node copy weights via /dev/shm."""
    model: str | DiTConfig = "tiny"
    """DiT config (or its name) for :func:`~spotlight.models.dit.build_policy`: a spot node
    passes the trainer's full config, which may be one no name stands for."""
    seed: int = 0
    """Initialisation seed when no checkpoint is given (tests: every member the same)."""
    checkpoint: str | None = None
    """Load weights from this checkpoint directory instead (the restart baseline's path); with
    ``lora``, the base (a checkpoint or a pipeline directory) the adapters sit on."""
    lora: dict[str, Any] | None = None
    """LoRA settings (``LoraSettings.to_dict()``): the member loads ``checkpoint`` as its base
    and attaches these adapters, and weight versions carry the adapters only."""
    backend: Literal["gloo", "nccl"] = "gloo"
    """Collective backend: gloo on CPU, nccl on GPU."""
    gloo_hostname: str | None = "127.0.0.1"
    """Address gloo binds (loopback in tests; None = torch's choice)."""
    store_timeout_s: float = 30.0
    """Deadline for connecting to the store."""

    def __post_init__(self) -> None:
        if not 0 < self.store_port < 65536:
            raise ValueError(f"store_port {self.store_port} is not a TCP port (1..65535)")
        if self.backend not in ("gloo", "nccl"):
            raise ValueError(f"backend {self.backend!r} unknown; valid: gloo, nccl")
        if self.store_timeout_s <= 0:
            raise ValueError(f"store_timeout_s must be > 0, got {self.store_timeout_s}")


def _lora_policy(config: SPMemberConfig) -> DiTPolicy:
    """The base from disk with the run's adapters (what every LoRA receiver builds)."""
    from spotlight.actors.weights.policy_spec import PolicySpec, model_config
    from spotlight.models.lora_settings import LoraSettings

    if config.lora is None or config.checkpoint is None:
        raise ValueError("an SP member with LoRA needs the base checkpoint (--checkpoint)")
    spec = PolicySpec(
        config=model_config(config.model),
        lora=LoraSettings.from_dict(config.lora),
        base=config.checkpoint,
    )
    return spec.build(device="cpu")


def sampler_config_from(data: dict[str, Any]) -> SamplerConfig:
    window = data.get("sde_window")
    return SamplerConfig(
        num_steps=int(data["num_steps"]),
        noise_level=float(data["noise_level"]),
        sde_window=None if window is None else (int(window[0]), int(window[1])),
        shift=float(data["shift"]),
    )


MEMBER_NAME = "sp_member"
"""The member actor's name in each member process (nodes/sp_member.py)."""


class SPMember(Actor):
    """Holds the model and this process's membership of the current SP epoch."""

    def __init__(self, config: SPMemberConfig) -> None:
        self.config = config
        t0 = time.perf_counter()
        if config.lora is not None:
            self.policy = _lora_policy(config)
        elif config.checkpoint is not None:
            from spotlight.models.bases import load_checkpoint

            self.policy, _card = load_checkpoint(config.checkpoint, config=config.model)
        else:
            self.policy = build_policy(config.model, seed=config.seed)
        self.policy.eval()
        self.load_s = time.perf_counter() - t0
        self._store: dist.TCPStore | None = None
        self._group: dist.ProcessGroup | None = None
        self._epoch = -1
        self._rank = -1
        self._target_epoch = -1
        self._owner = ""  # group id of the scheduler whose epochs we follow
        self._busy = asyncio.Lock()
        self._shared: SharedWeights | None = None
        self._flat: tuple[WeightManifest, Tensor] | None = None
        self._text_cache: dict[tuple[str, ...], TextEmbedding] = {}
        self.steps_run = 0
        self.weights_version: int | None = None
        """Version loaded by :meth:`load_shared` (None: the initial weights)."""

    async def on_start(self) -> None:
        cfg = self.config
        self._store = await asyncio.to_thread(
            dist.TCPStore,
            cfg.store_host,
            cfg.store_port,
            None,
            False,
            timeout=timedelta(seconds=cfg.store_timeout_s),
            use_libuv=False,
        )

    async def on_stop(self) -> None:
        shutdown_group(self._group)
        self._group = None
        if self._shared is not None:
            self._shared.close()

    # -- liveness and description ----------------------------------------------------

    @endpoint(concurrent=True)
    async def ping(self) -> int:
        """The current epoch (-1 before the first); answers even while a step runs."""
        return self._epoch

    @endpoint(concurrent=True)
    async def describe(self) -> dict[str, Any]:
        cfg = self.policy.config
        return {
            "node": self.config.node,
            "num_heads": cfg.num_attention_heads,
            "num_tokens": cfg.num_tokens,
            "token_dim": cfg.token_dim,
            "load_s": self.load_s,
            "epoch": self._epoch,
            "steps_run": self.steps_run,
            "weights_version": self.weights_version,
        }

    # -- epochs ----------------------------------------------------------------------

    @endpoint(concurrent=True)
    async def form(
        self, group_id: str, epoch: int, rank: int, world_size: int, timeout_s: float
    ) -> float:
        """Join epoch ``epoch`` of ``group_id`` as ``rank`` of ``world_size`` (store prefix
        ``sp/<group_id>/<epoch>``); returns seconds spent connecting.

        Epochs only move forward for one scheduler; a scheduler with another ``group_id``
        (a new incarnation) takes the member over.
        """
        if group_id == self._owner and epoch <= self._target_epoch:
            raise StaleEpoch(f"form for epoch {epoch}, but epoch {self._target_epoch} was asked")
        validate_degree(world_size, self.policy.config.num_attention_heads)
        self._owner, self._target_epoch = group_id, epoch
        async with self._busy:
            old, self._group, self._epoch = self._group, None, -1
            shutdown_group(old)
        t0 = time.perf_counter()
        group: dist.ProcessGroup | None = None
        if world_size > 1:
            assert self._store is not None
            # A connection of its own per epoch: a store client serialises its calls, so a
            # rendezvous stuck on a dead member (until its timeout) would otherwise block the
            # next epoch's rendezvous behind it.
            store = await asyncio.to_thread(cast(Any, self._store).clone)
            group, _info = await asyncio.to_thread(
                timed_new_group_from_store,
                store,
                f"sp/{group_id}/{epoch}",
                rank,
                world_size,
                backend=self.config.backend,
                timeout=timedelta(seconds=timeout_s),
                gloo_hostname=self.config.gloo_hostname,
            )
        if (group_id, epoch) != (self._owner, self._target_epoch):  # overtaken
            shutdown_group(group)
            raise StaleEpoch(f"epoch {epoch} was superseded by epoch {self._target_epoch}")
        self._group, self._epoch, self._rank = group, epoch, rank
        return time.perf_counter() - t0

    @endpoint(concurrent=True)
    async def stand_by(self, group_id: str, epoch: int) -> None:
        """Leave any group (spare, or leaving after a notice) as of ``epoch`` of ``group_id``."""
        if group_id != self._owner or epoch > self._target_epoch:
            self._owner, self._target_epoch = group_id, epoch
        async with self._busy:
            old, self._group, self._epoch = self._group, None, -1
            shutdown_group(old)

    # -- stepping --------------------------------------------------------------------

    @endpoint
    async def step(
        self, group_id: str, epoch: int, request: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Run one denoising step of ``request`` on this member's shard.

        ``request``: ``seeds``, ``step``, ``x_BNC`` (the full latent at the step boundary),
        ``prompts``, ``sampler`` (SamplerConfig fields), ``mode``, optionally
        ``weights_version`` (refused with :class:`StaleWeights` unless it is the version this
        member holds, so one request never mixes versions across ranks). Rank 0 returns the
        new boundary (``x_BNC``, ``log_prob_B``, ``sigma``); the others return None.
        """
        if (group_id, epoch) != (self._owner, self._epoch) or epoch != self._target_epoch:
            raise StaleEpoch(f"step for epoch {epoch}, but this member is in epoch {self._epoch}")
        wanted = request.get("weights_version")
        if wanted is not None and wanted != self.weights_version:
            raise StaleWeights(
                f"step wants weight version {wanted}, this member holds {self.weights_version}"
            )
        async with self._busy:
            group, rank = self._group, self._rank
            try:
                out = await asyncio.to_thread(self._run_step, group, request)
            except Exception:
                # Unblock peers still inside a collective with us, then report.
                if self._group is group:
                    self._group, self._epoch = None, -1
                shutdown_group(group)
                raise
        self.steps_run += 1
        return out if rank == 0 else None

    def _text(self, prompts: tuple[str, ...]) -> TextEmbedding:
        text = self._text_cache.get(prompts)
        if text is None:
            with torch.no_grad():
                text = self.policy.encode_prompts(list(prompts))
            self._text_cache = {prompts: text}
        return text

    def _run_step(self, group: dist.ProcessGroup | None, request: dict[str, Any]) -> dict[str, Any]:
        text = self._text(tuple(request["prompts"]))
        config = sampler_config_from(request["sampler"])

        def velocity(x_BNC: Tensor, sigma_B: Tensor) -> Tensor:
            kwargs = self.policy.transformer_kwargs(x_BNC, sigma_B, text)
            return ulysses_forward(cast(Any, self.policy.transformer), group, **kwargs).float()

        state = TrajectoryState(
            seeds=tuple(int(s) for s in request["seeds"]),
            step=int(request["step"]),
            x_BNC=request["x_BNC"],
        )
        nxt = advance(velocity, state, config, mode=request["mode"])
        return {"x_BNC": nxt.x_BNC, "log_prob_B": nxt.log_probs[-1], "sigma": nxt.timesteps[-1]}

    # -- weights ---------------------------------------------------------------------

    def _versioned(self) -> dict[str, Tensor]:
        """The tensors a weight version sets (views, so copies land in the model): all of
        them, or with LoRA the adapters only (every member loaded the same base itself)."""
        return tunable_state(self.policy)

    @endpoint
    async def publish_weights(self) -> dict[str, Any]:
        """Publish (once) a /dev/shm snapshot of the weights; returns its manifest."""
        if self._shared is None:
            self._shared = await asyncio.to_thread(
                publish_to_shm, self._versioned(), node=self.config.node
            )
        return self._shared.manifest.to_dict()

    @endpoint
    async def load_shared(self, manifest: dict[str, Any], version: int) -> dict[str, Any]:
        """Load weights ``version`` from a /dev/shm snapshot another process of this node
        published (:func:`~spotlight.actors.weights.share.publish_to_shm`).

        Waits for a running step to end (``_busy``), so a step never sees half-copied
        weights; the caller applies a version only between requests. Returns copy stats.
        """
        async with self._busy:
            stats = await asyncio.to_thread(
                load_from_shm, self._versioned(), WeightManifest.from_dict(manifest)
            )
            self.weights_version = int(version)
            self._text_cache = {}  # the text encoder's weights changed too
            self._flat = None
            if self._shared is not None:  # a joiner's donor snapshot is now stale
                self._shared.close()
                self._shared = None
        return {"bytes": stats.bytes, "seconds": stats.seconds, "version": version}

    @endpoint
    async def weights_digest(self) -> str:
        """blake2b of the weights' flat bytes: a joiner and its donor must agree exactly."""

        def digest() -> str:
            _manifest, buf = flat_bytes(self._versioned())
            return hashlib.blake2b(buf.numpy().tobytes(), digest_size=16).hexdigest()

        return await asyncio.to_thread(digest)

    @endpoint
    async def weight_chunks(self, chunk_bytes: int) -> AsyncIterator[Any]:
        """Stream ``(offset, uint8 chunk)``; the first item is the manifest (runtime path)."""
        if self._flat is None:
            self._flat = await asyncio.to_thread(flat_bytes, self._versioned())
        manifest, buf = self._flat
        yield manifest.to_dict()
        for offset, chunk in iter_chunks(buf, chunk_bytes):
            yield [offset, chunk]

    @endpoint
    async def fetch_weights(
        self, donor: ActorRef, same_node: bool, chunk_bytes: int = 16 << 20
    ) -> dict[str, Any]:
        """Copy the weights from ``donor``: /dev/shm when on its node, else over the runtime."""
        if same_node:
            manifest = WeightManifest.from_dict(await donor.publish_weights.ask())
            stats = await asyncio.to_thread(load_from_shm, self._versioned(), manifest)
        else:
            t0 = time.perf_counter()
            asm: ChunkAssembler | None = None
            async for item in donor.weight_chunks.stream(chunk_bytes):
                if asm is None:
                    asm = ChunkAssembler(WeightManifest.from_dict(item))
                else:
                    asm.add(int(item[0]), item[1])
            if asm is None or not asm.done:
                raise RuntimeError("weight stream from the donor ended early")
            copied = await asyncio.to_thread(load_flat, self._versioned(), asm.manifest, asm.buf)
            stats = CopyStats(copied, time.perf_counter() - t0, "runtime")
        self._text_cache = {}
        return {"bytes": stats.bytes, "seconds": stats.seconds, "path": stats.path}
