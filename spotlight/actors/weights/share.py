"""Weights for a joining SP member: from a peer's memory, never from storage when a copy is nearby.

Two paths, chosen by the group scheduler from the members' node ids:

- **Same node: shared memory.** A member *publishes* its weights once: one flat byte buffer in
  ``/dev/shm`` (``torch.from_file(..., shared=True)``) plus a :class:`WeightManifest` (key,
  dtype, shape, byte offset per tensor). A joiner on that node maps the file and copies each
  tensor into its own parameters: one memcpy per tensor, no serialisation, no socket.
- **Another node: over the runtime.** The donor streams the same flat layout in chunks
  (:func:`iter_chunks`); the joiner writes each chunk at its offset (:class:`ChunkAssembler`)
  and loads the result with :func:`load_flat`.

Why one flat buffer and a manifest: the layout is computed once and both paths (and any
transport) move raw bytes; the joiner checks the manifest against its own model (same keys,
dtypes and shapes) before copying, so a mismatch is a clear ``ValueError`` instead of silent
garbage. The donor's buffer is a snapshot: publish again after the weights change (the
manifest carries a ``version`` the joiner can compare).

Lifetime: the publisher owns the file and removes it with :meth:`SharedWeights.close`; a crashed
publisher leaves it in ``/dev/shm`` (tmpfs, gone at reboot), and the next publish with the same
name replaces it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from spotlight.runtime.codec import register_extension, register_wire_type

__all__ = [
    "ChunkAssembler",
    "CopyStats",
    "SharedWeights",
    "TensorEntry",
    "WeightManifest",
    "flat_bytes",
    "iter_chunks",
    "load_flat",
    "load_from_shm",
    "manifest_of",
    "publish_to_shm",
    "remove_published_by",
    "state_from_flat",
]

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "spotlight-w-"
"""Published files are ``<SHM_PREFIX><pid>-<random>`` unless named: a supervisor that saw a
publisher die removes ``<SHM_PREFIX><pid>-*`` (see :func:`remove_published_by`)."""
_ALIGN = 64  # bytes: every tensor starts on a cache line, so views are aligned for any dtype

_DTYPES: dict[str, torch.dtype] = {
    str(d): d
    for d in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}


@register_wire_type(name="spotlight.TensorEntry")
@dataclass(frozen=True, kw_only=True)
class TensorEntry:
    """Where one tensor lives in the flat buffer."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True, kw_only=True)
class WeightManifest:
    """Layout of a flat weight buffer; plain values so it travels as a message (a codec
    extension over :meth:`to_dict`, see ``_manifest_to_wire``)."""

    entries: tuple[TensorEntry, ...]
    total_bytes: int
    path: str = ""
    """``/dev/shm`` file holding the buffer ('' when not published to shared memory)."""
    node: str = ""
    """Node id of the publisher (a joiner on another node must use the runtime path)."""
    version: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "entries": [[e.key, e.dtype, list(e.shape), e.offset, e.nbytes] for e in self.entries],
            "total_bytes": self.total_bytes,
            "path": self.path,
            "node": self.node,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WeightManifest:
        entries = tuple(
            TensorEntry(key=k, dtype=d, shape=tuple(int(s) for s in shape), offset=o, nbytes=n)
            for k, d, shape, o, n in data["entries"]
        )
        return cls(
            entries=entries,
            total_bytes=int(data["total_bytes"]),
            path=str(data["path"]),
            node=str(data["node"]),
            version=int(data["version"]),
        )


_WIRE_CACHE: dict[int, tuple[WeightManifest, dict[str, Any]]] = {}
_WIRE_CACHE_SIZE = 8


def _manifest_to_wire(manifest: WeightManifest) -> dict[str, Any]:
    """The manifest as plain lists (msgpack packs them in C), cached per object.

    Why not ``register_wire_type``: a streamed version sends the same manifest with every
    chunk, and encoding it entry by entry as nested dataclasses costs ~1.9 ms per chunk for
    the tiny policy's 155 tensors (measured), growing with the tensor count; the cached plain
    form costs ~0.08 ms. The cache holds the object, so an ``id`` is never reused while cached.
    """
    hit = _WIRE_CACHE.get(id(manifest))
    if hit is not None and hit[0] is manifest:
        return hit[1]
    wire = manifest.to_dict()
    _WIRE_CACHE[id(manifest)] = (manifest, wire)
    while len(_WIRE_CACHE) > _WIRE_CACHE_SIZE:
        del _WIRE_CACHE[next(iter(_WIRE_CACHE))]
    return wire


register_extension(
    WeightManifest, "spotlight.WeightManifest", _manifest_to_wire, WeightManifest.from_dict
)


@dataclass(frozen=True)
class CopyStats:
    """How a weight copy went (the benchmark's GiB/s)."""

    bytes: int
    seconds: float
    path: str
    """``"shm"`` or ``"runtime"``."""

    @property
    def gib_s(self) -> float:
        return self.bytes / 2**30 / max(self.seconds, 1e-9)


def _tensors(module_or_state: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(module_or_state, nn.Module):
        return dict(module_or_state.state_dict())
    return dict(module_or_state)


def manifest_of(
    module_or_state: nn.Module | Mapping[str, Tensor], *, node: str = "", version: int = 0
) -> WeightManifest:
    """The flat layout of a module's ``state_dict`` (or of a tensor mapping)."""
    entries = []
    offset = 0
    for key, t in _tensors(module_or_state).items():
        dtype = str(t.dtype)
        if dtype not in _DTYPES:
            raise ValueError(f"tensor {key!r} has dtype {dtype}; supported: {sorted(_DTYPES)}")
        nbytes = t.numel() * t.element_size()
        entries.append(
            TensorEntry(key=key, dtype=dtype, shape=tuple(t.shape), offset=offset, nbytes=nbytes)
        )
        offset += -(-nbytes // _ALIGN) * _ALIGN
    return WeightManifest(entries=tuple(entries), total_bytes=offset, node=node, version=version)


def _check_compatible(manifest: WeightManifest, target: dict[str, Tensor]) -> None:
    keys = [e.key for e in manifest.entries]
    if set(keys) != set(target):
        missing = sorted(set(target) - set(keys))[:5]
        extra = sorted(set(keys) - set(target))[:5]
        raise ValueError(
            f"weight manifest does not match the model: missing {missing}, unexpected {extra}"
        )
    for e in manifest.entries:
        t = target[e.key]
        if str(t.dtype) != e.dtype or tuple(t.shape) != e.shape:
            raise ValueError(
                f"weight {e.key!r}: donor has {e.dtype}{list(e.shape)}, "
                f"this model {t.dtype}{list(t.shape)}"
            )


def _view(buf_U8: Tensor, e: TensorEntry) -> Tensor:
    return buf_U8[e.offset : e.offset + e.nbytes].view(_DTYPES[e.dtype]).view(e.shape)


def _fill(
    buf_U8: Tensor, manifest: WeightManifest, tensors: dict[str, Tensor], *, zero_gaps: bool
) -> None:
    """Copy ``tensors`` into their places in ``buf_U8`` (and zero the alignment padding
    when asked, so the bytes, and a digest of them, are deterministic).

    Contiguous CPU tensors go through numpy: one single-threaded memcpy each. torch's
    ``copy_`` splits a large copy over its intra-op threads, which only contend on a busy
    host (measured on the shared 2-core box: 100 MB in 0.13 s this way, 0.5-0.6 s with
    ``copy_``). Anything else (GPU, strided) uses ``copy_``.
    """
    flat = buf_U8.numpy()
    end = 0
    with torch.no_grad():
        for e in manifest.entries:
            if zero_gaps and e.offset > end:
                flat[end : e.offset] = 0
            src = tensors[e.key].detach()
            if src.device.type == "cpu" and src.is_contiguous() and e.nbytes:
                flat[e.offset : e.offset + e.nbytes] = src.reshape(-1).view(torch.uint8).numpy()
            else:
                _view(buf_U8, e).copy_(src.reshape(e.shape))
            end = e.offset + e.nbytes
        if zero_gaps:
            flat[end:] = 0


def flat_bytes(module_or_state: nn.Module | Mapping[str, Tensor]) -> tuple[WeightManifest, Tensor]:
    """The manifest and a new flat uint8 buffer holding the tensors (for the runtime path)."""
    tensors = _tensors(module_or_state)
    manifest = manifest_of(tensors)
    buf = torch.empty(manifest.total_bytes, dtype=torch.uint8)
    _fill(buf, manifest, tensors, zero_gaps=True)
    return manifest, buf


def state_from_flat(manifest: WeightManifest, buf_U8: Tensor) -> dict[str, Tensor]:
    """The tensors of a flat buffer as a ``state_dict`` of views into it (no copy).

    The views share ``buf_U8``'s memory: hand the buffer over (do not reuse it) or clone.
    """
    if buf_U8.dtype != torch.uint8 or buf_U8.numel() < manifest.total_bytes:
        raise ValueError(
            f"flat buffer must be uint8 with at least {manifest.total_bytes} bytes, got "
            f"{buf_U8.dtype} with {buf_U8.numel()}"
        )
    return {e.key: _view(buf_U8, e) for e in manifest.entries}


def load_flat(
    module: nn.Module | Mapping[str, Tensor], manifest: WeightManifest, buf_U8: Tensor
) -> int:
    """Copy every tensor from a flat buffer into ``module``'s state (or into the given
    tensors, in place); returns bytes copied."""
    if buf_U8.dtype != torch.uint8 or buf_U8.numel() < manifest.total_bytes:
        raise ValueError(
            f"flat buffer must be uint8 with at least {manifest.total_bytes} bytes, got "
            f"{buf_U8.dtype} with {buf_U8.numel()}"
        )
    target = (
        dict(module.state_dict(keep_vars=True)) if isinstance(module, nn.Module) else dict(module)
    )
    _check_compatible(manifest, target)
    copied = 0
    with torch.no_grad():
        for e in manifest.entries:
            target[e.key].copy_(_view(buf_U8, e))
            copied += e.nbytes
    return copied


class SharedWeights:
    """A published weight snapshot in ``/dev/shm`` (owned by the publisher)."""

    def __init__(self, manifest: WeightManifest, buf_U8: Tensor) -> None:
        self.manifest = manifest
        self._buf = buf_U8

    def close(self) -> None:
        """Remove the file (joiners that already mapped it keep their mapping)."""
        if self.manifest.path:
            Path(self.manifest.path).unlink(missing_ok=True)


def publish_to_shm(
    module_or_state: nn.Module | Mapping[str, Tensor],
    *,
    name: str | None = None,
    node: str = "",
    version: int = 0,
    shm_dir: Path = SHM_DIR,
) -> SharedWeights:
    """Write a snapshot of the weights to one shared-memory file; returns its handle.

    ``name`` defaults to ``<pid>-<random>``; the file is ``shm_dir/spotlight-w-<name>``.
    """
    if not shm_dir.is_dir():
        raise ValueError(f"shared-memory directory {shm_dir} does not exist (Linux: /dev/shm)")
    tensors = _tensors(module_or_state)
    layout = manifest_of(tensors, node=node, version=version)
    path = shm_dir / f"{SHM_PREFIX}{name or f'{os.getpid()}-{uuid.uuid4().hex[:12]}'}"
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    size = max(layout.total_bytes, 1)
    buf = torch.from_file(str(tmp), shared=True, size=size, dtype=torch.uint8)
    _fill(buf, layout, tensors, zero_gaps=False)  # a new file reads as zeros
    os.replace(tmp, path)  # joiners never see a half-written file
    manifest = WeightManifest(
        entries=layout.entries,
        total_bytes=layout.total_bytes,
        path=str(path),
        node=node,
        version=version,
    )
    return SharedWeights(manifest, buf)


def load_from_shm(module: nn.Module | Mapping[str, Tensor], manifest: WeightManifest) -> CopyStats:
    """Copy a published snapshot into ``module`` (same node); raises ValueError if unusable."""
    if not manifest.path or not Path(manifest.path).exists():
        raise ValueError(
            f"shared weights {manifest.path!r} are not on this node; use the runtime path "
            "(iter_chunks / ChunkAssembler)"
        )
    t0 = time.perf_counter()
    target = (
        dict(module.state_dict(keep_vars=True)) if isinstance(module, nn.Module) else dict(module)
    )
    _check_compatible(manifest, target)
    copied = 0
    mapped: Tensor | None = None
    # Contiguous CPU destinations: read() from tmpfs straight into the tensor's memory, one
    # kernel memcpy per tensor (no page faults on a mapping, no torch intra-op threads, which
    # only contend on a busy host). Anything else (GPU, strided): map the file and copy_.
    with open(manifest.path, "rb", buffering=0) as f, torch.no_grad():
        for e in manifest.entries:
            t = target[e.key].detach()
            if t.device.type == "cpu" and t.is_contiguous() and e.nbytes:
                _read_exact(
                    f, e.offset, memoryview(cast(Any, t.reshape(-1).view(torch.uint8).numpy()))
                )
            else:
                if mapped is None:
                    mapped = torch.from_file(
                        manifest.path,
                        shared=True,
                        size=max(manifest.total_bytes, 1),
                        dtype=torch.uint8,
                    )
                t.copy_(_view(mapped, e))
            copied += e.nbytes
    return CopyStats(copied, time.perf_counter() - t0, "shm")


def _read_exact(f: Any, offset: int, out: memoryview) -> None:
    f.seek(offset)
    got = 0
    while got < len(out):
        n = f.readinto(out[got:])
        if not n:
            raise ValueError(f"shared weight file ended early at byte {offset + got}")
        got += n


def remove_published_by(pid: int, shm_dir: Path = SHM_DIR) -> int:
    """Remove the snapshots a (dead) process published; returns how many were removed."""
    n = 0
    for p in shm_dir.glob(f"{SHM_PREFIX}{pid}-*"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def iter_chunks(buf_U8: Tensor, chunk_bytes: int) -> Iterator[tuple[int, Tensor]]:
    """``(offset, chunk)`` slices of a flat buffer (views, no copy) for streaming."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
    for off in range(0, buf_U8.numel(), chunk_bytes):
        yield off, buf_U8[off : off + chunk_bytes]


class ChunkAssembler:
    """Receives streamed chunks into one flat buffer; ``done`` once every byte arrived."""

    def __init__(self, manifest: WeightManifest) -> None:
        self.manifest = manifest
        self.buf = torch.empty(manifest.total_bytes, dtype=torch.uint8)
        self.received = 0

    def add(self, offset: int, chunk_U8: Tensor) -> None:
        end = offset + chunk_U8.numel()
        if offset < 0 or end > self.buf.numel():
            raise ValueError(
                f"chunk [{offset}, {end}) is outside the {self.buf.numel()}-byte weight buffer"
            )
        self.buf[offset:end].copy_(chunk_U8.view(torch.uint8).reshape(-1))
        self.received += chunk_U8.numel()

    @property
    def done(self) -> bool:
        return self.received >= self.manifest.total_bytes
