"""Append-only, crash-safe journal of the lease table, so a restarted scheduler loses no
committed work.

File layout::

    b"SPLJRNL" + version byte                      file header (8 bytes)
    repeated:  <u32 body_len> <u32 crc32(len bytes)> <u32 crc32(body)> <body: msgpack>

The body is a msgpack array ``[kind, ...fields]``; payloads (snapshots, results) are the
frame list of an injected payload encoder, stored as msgpack ``bin`` items. The default
encoder is the wire codec (``spotlight.runtime.codec``: torch tensors incl. bf16, numpy
arrays, no pickle), so a journal holds exactly what would cross the wire.

Recovery on open, and why the two failure kinds differ:

* **Torn tail** (a crash in the middle of the last append): a short header, a length that
  runs past the end of file, or a bad CRC on a record that ends at end of file or is
  followed only by zeros (a file extended but never written). That record was never
  acknowledged, so it is cut off (truncate + fsync) with one warning in the log.
* **Corruption in the middle** (a bad header CRC or body CRC with valid-looking data after
  it): acknowledged records may be damaged; silently dropping them could lose committed
  work or resurrect finished requests, so :class:`JournalCorruptError` names the file and
  byte offset and a human decides.

Which mutations are journaled: submit, commit (also the snapshots of a release),
complete, group delivery, and an epoch record per process. Pulls, renewals, expiries and
releases are not: leases are not restored on restart anyway (they are treated as expired,
the request resumes from its last snapshot), so logging them would change nothing in the
replayed state and would put an fsync on the hottest path. Fencing survives without them:
each incarnation writes (and always fsyncs) a new epoch, and tokens are ``epoch << 32 | n``.

Only one process may hold a journal open (an exclusive ``flock``); a second scheduler on
the same file fails at once instead of interleaving records.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgpack

from spotlight.actors.scheduling.work import SampleRequest, Snapshot

__all__ = [
    "FSYNC_POLICIES",
    "Committed",
    "Completed",
    "Delivered",
    "EpochStarted",
    "Forgotten",
    "Journal",
    "JournalConfig",
    "JournalCorruptError",
    "JournalRecord",
    "JournalStats",
    "Submitted",
    "codec_decode_payload",
    "codec_encode_payload",
]

log = logging.getLogger(__name__)

MAGIC = b"SPLJRNL\x01"
_HEADER = struct.Struct("<III")  # body_len, crc32(body_len as 4 bytes), crc32(body)
_LEN = struct.Struct("<I")
FSYNC_POLICIES: tuple[str, ...] = ("always", "interval", "never")

PayloadEncoder = Callable[[Any], Sequence[bytes | memoryview]]
PayloadDecoder = Callable[[list[bytes]], Any]


class JournalCorruptError(Exception):
    """The journal is damaged before its tail; recovery needs a human (see module doc)."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"journal {path} is corrupt at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset


@dataclass(frozen=True, kw_only=True)
class JournalConfig:
    """How hard the journal pushes records to the disk, and when it compacts itself.

    The default fsync policy is ``"always"`` because a commit or a result is a promise:
    once the table accepts it, the worker drops its copy (its latent, its finished
    trajectory). If the record were lost in a power cut the work would be lost too
    (commit) or, worse, the request would run again after its result was acknowledged
    (complete), which breaks exactly-once. Commits arrive at step boundaries, so an
    fsync each (~0.1-10 ms; ~5 ms on our CI VM) is cheap next to a denoising step. When
    many workers commit at once, :meth:`Journal.batch` shares one fsync among them.
    """

    fsync: Literal["always", "interval", "never"] = "always"
    """``always``: fsync every record; nothing acknowledged is lost even on power loss.
    ``interval``: fsync when ``fsync_interval_ms`` has passed since the last one (on an
    append or a ``sync_if_due()`` call from the owner's timer); an OS crash or power loss
    may lose the records of the last interval. ``never``: records are handed to the OS
    on every append (a process crash, kill -9 included, loses nothing) but never fsynced;
    an OS crash may lose anything not yet written back."""
    fsync_interval_ms: float = 50.0
    """Only for ``fsync="interval"``."""
    compact_above_bytes: int | None = 64 << 20
    """Compact (rewrite the live state, atomic rename) when the file grows past this and
    past twice its size after the last compaction. None: only on explicit request."""

    def __post_init__(self) -> None:
        if self.fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {self.fsync!r}")
        if not self.fsync_interval_ms > 0:
            raise ValueError(f"fsync_interval_ms must be > 0, got {self.fsync_interval_ms}")
        if self.compact_above_bytes is not None and self.compact_above_bytes <= 0:
            raise ValueError(
                f"compact_above_bytes must be > 0 or None, got {self.compact_above_bytes}"
            )


@dataclass(frozen=True, kw_only=True)
class JournalStats:
    path: str
    size_bytes: int
    records_written: int
    fsyncs: int
    compactions: int
    truncated_tail_bytes: int
    """Bytes of torn tail cut off when this journal was opened."""


# ---------------------------------------------------------------- records


@dataclass(frozen=True, kw_only=True)
class EpochStarted:
    epoch: int


@dataclass(frozen=True, kw_only=True)
class Submitted:
    requests: list[SampleRequest]


@dataclass(frozen=True, kw_only=True)
class Committed:
    request_id: str
    token: int
    snapshot: Snapshot


@dataclass(frozen=True, kw_only=True)
class Completed:
    request_id: str
    token: int
    worker_id: str
    result: Any


@dataclass(frozen=True, kw_only=True)
class Delivered:
    group_ids: list[str]


@dataclass(frozen=True, kw_only=True)
class Forgotten:
    """Ids delivered before a compaction: still never reusable, results still stale."""

    request_ids: list[str]
    group_ids: list[str]


JournalRecord = EpochStarted | Submitted | Committed | Completed | Delivered | Forgotten

_REQUEST_FIELDS = ("request_id", "prompt", "seed", "num_steps", "priority", "deadline", "kind")
# Appended after the group id, so a journal written before the field existed still replays.
_REQUEST_EXTRA_FIELDS = ("weight_version",)


def codec_encode_payload(payload: Any) -> list[bytes | memoryview]:
    """Default payload encoder: the wire codec's frames (header, body, raw buffers)."""
    from spotlight.runtime import codec

    return codec.encode({}, payload)


def codec_decode_payload(frames: list[bytes]) -> Any:
    """Inverse of :func:`codec_encode_payload`; checks the codec's wire version first."""
    from spotlight.runtime import codec

    if not frames:
        raise ValueError("payload has no frames")
    codec.decode_header(frames[0])
    return codec.decode_body(frames[1:])


class Journal:
    """Writes and recovers the journal file at ``path`` (created if missing)."""

    def __init__(
        self,
        path: str | Path,
        *,
        config: JournalConfig | None = None,
        encode_payload: PayloadEncoder = codec_encode_payload,
        decode_payload: PayloadDecoder = codec_decode_payload,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.config = config or JournalConfig()
        self._encode = encode_payload
        self._decode = decode_payload
        self._monotonic = monotonic
        self._records_written = 0
        self._fsyncs = 0
        self._compactions = 0
        self._dirty = False
        self._batch_depth = 0
        self._file = open(self.path, "a+b")  # noqa: SIM115 - owned until close()
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise RuntimeError(
                f"journal {self.path} is open in another process (another scheduler?)"
            ) from None
        try:
            self._recovered, self._truncated = self._recover()
        except BaseException:
            self._file.close()
            raise
        self._size = self._file.seek(0, os.SEEK_END)
        self._size_after_compaction = self._size
        self._last_sync = self._monotonic()

    # ---------------------------------------------------------------- reading

    def recovered(self) -> list[JournalRecord]:
        """The records found on open (torn tail already cut), oldest first."""
        return list(self._recovered)

    def _recover(self) -> tuple[list[JournalRecord], int]:
        f = self._file
        f.seek(0)
        data = f.read()
        if len(data) < len(MAGIC):
            if MAGIC.startswith(data):  # new file, or a crash while creating it
                self._reset_to_header(len(data))
                return [], len(data)
            raise JournalCorruptError(self.path, 0, "not a Spotlight journal (bad magic)")
        if not data.startswith(MAGIC):
            raise JournalCorruptError(self.path, 0, "not a Spotlight journal (bad magic)")
        records: list[JournalRecord] = []
        offset = len(MAGIC)
        end = len(data)
        while offset < end:
            torn = self._torn_reason(data, offset)
            if torn is not None:
                log.warning(
                    "journal %s: cut %d bytes of torn tail at offset %d (%s; a crash during "
                    "the last append)",
                    self.path,
                    end - offset,
                    offset,
                    torn,
                )
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
                return records, end - offset
            body_len = _HEADER.unpack_from(data, offset)[0]
            body = data[offset + _HEADER.size : offset + _HEADER.size + body_len]
            try:
                records.append(self._parse(body))
            except JournalCorruptError:
                raise
            except Exception as exc:
                raise JournalCorruptError(
                    self.path, offset, f"record passes its CRC but does not parse: {exc!r}"
                ) from exc
            offset += _HEADER.size + body_len
        return records, 0

    def _torn_reason(self, data: bytes, offset: int) -> str | None:
        """Why the record at ``offset`` is a torn tail; None if it is whole; raises if the
        damage is followed by data (corruption in the middle)."""
        end = len(data)
        if end - offset < _HEADER.size:
            return "short record header"
        body_len, len_crc, body_crc = _HEADER.unpack_from(data, offset)
        if zlib.crc32(_LEN.pack(body_len)) != len_crc:
            if data.count(0, offset) == end - offset:
                return "zero-filled tail"
            raise JournalCorruptError(self.path, offset, "record header CRC mismatch")
        record_end = offset + _HEADER.size + body_len
        if record_end > end:
            return f"record of {body_len} bytes runs past the end of file"
        if zlib.crc32(memoryview(data)[offset + _HEADER.size : record_end]) != body_crc:
            if data.count(0, record_end) == end - record_end:
                return "last record fails its CRC"
            raise JournalCorruptError(self.path, offset, "record body CRC mismatch")
        return None

    def _parse(self, body: bytes) -> JournalRecord:
        item = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
        kind, *fields = item
        if kind == "E":
            return EpochStarted(epoch=fields[0])
        if kind == "S":
            base = len(_REQUEST_FIELDS)
            requests = [
                SampleRequest(
                    **dict(zip(_REQUEST_FIELDS, r[:base], strict=True)),
                    group_id=r[base],
                    **dict(zip(_REQUEST_EXTRA_FIELDS, r[base + 1 :], strict=False)),
                )
                for r in fields[0]
            ]
            return Submitted(requests=requests)
        if kind == "C":
            rid, token, step, frames = fields
            snapshot = Snapshot(step=step, payload=self._decode(frames))
            return Committed(request_id=rid, token=token, snapshot=snapshot)
        if kind == "D":
            rid, token, worker, frames = fields
            return Completed(
                request_id=rid, token=token, worker_id=worker, result=self._decode(frames)
            )
        if kind == "G":
            return Delivered(group_ids=fields[0])
        if kind == "F":
            return Forgotten(request_ids=fields[0], group_ids=fields[1])
        raise ValueError(f"unknown record kind {kind!r}")

    # ---------------------------------------------------------------- writing

    def log_epoch(self, epoch: int) -> None:
        """Always fsynced, whatever the policy: fencing depends on it (module doc)."""
        self._append(self._pack(EpochStarted(epoch=epoch)), force_sync=True)

    def log_submit(self, requests: Sequence[SampleRequest]) -> None:
        self._append(self._pack(Submitted(requests=list(requests))))

    def log_commit(self, request_id: str, token: int, snapshot: Snapshot) -> None:
        self._append(self._pack(Committed(request_id=request_id, token=token, snapshot=snapshot)))

    def log_complete(self, request_id: str, token: int, worker_id: str, result: Any) -> None:
        record = Completed(request_id=request_id, token=token, worker_id=worker_id, result=result)
        self._append(self._pack(record))

    def log_delivered(self, group_ids: Sequence[str]) -> None:
        self._append(self._pack(Delivered(group_ids=list(group_ids))))

    def _pack(self, record: JournalRecord) -> bytes:
        item: list[Any]
        match record:
            case EpochStarted(epoch=epoch):
                item = ["E", epoch]
            case Submitted(requests=requests):
                rows = [
                    [
                        *(getattr(r, f) for f in _REQUEST_FIELDS),
                        r.group_id,
                        *(getattr(r, f) for f in _REQUEST_EXTRA_FIELDS),
                    ]
                    for r in requests
                ]
                item = ["S", rows]
            case Committed(request_id=rid, token=token, snapshot=snap):
                item = ["C", rid, token, snap.step, list(self._encode(snap.payload))]
            case Completed(request_id=rid, token=token, worker_id=worker, result=result):
                item = ["D", rid, token, worker, list(self._encode(result))]
            case Delivered(group_ids=gids):
                item = ["G", gids]
            case Forgotten(request_ids=rids, group_ids=gids):
                item = ["F", rids, gids]
        body = msgpack.packb(item, use_bin_type=True)
        return _HEADER.pack(len(body), zlib.crc32(_LEN.pack(len(body))), zlib.crc32(body)) + body

    def _append(self, blob: bytes, *, force_sync: bool = False) -> None:
        if self._file.closed:
            raise RuntimeError(f"journal {self.path} is closed")
        try:
            self._file.write(blob)
            self._file.flush()  # to the OS now: a process crash loses nothing
        except BaseException:
            # Disk full or similar: cut the partial record, or the next append would sit
            # behind garbage and turn a failed write into mid-file corruption.
            self._file.truncate(self._size)
            raise
        self._size += len(blob)
        self._records_written += 1
        self._dirty = True
        policy = self.config.fsync
        if force_sync or (policy == "always" and not self._batch_depth):
            self.sync()
        elif policy == "interval" and not self._batch_depth:
            self.sync_if_due()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: inside, appends are not fsynced one by one; one fsync at the end
        covers them all (under ``always``; ``interval`` checks its timer at the end).

        For an owner that handles a burst of commits at once (an actor draining its
        mailbox): it must not acknowledge any of them until the block has exited, which is
        what keeps ``always`` honest at a fraction of the fsyncs. Nesting is allowed.
        """
        self._batch_depth += 1
        try:
            yield
        finally:
            self._batch_depth -= 1
            if self._batch_depth == 0 and self._dirty and not self._file.closed:
                if self.config.fsync == "always":
                    self.sync()
                elif self.config.fsync == "interval":
                    self.sync_if_due()

    def sync(self) -> None:
        """fsync now (also under ``never``: an explicit request is honoured)."""
        os.fsync(self._file.fileno())
        self._fsyncs += 1
        self._dirty = False
        self._last_sync = self._monotonic()

    def sync_if_due(self) -> None:
        """For ``interval``: fsync if records are pending and the interval has passed.
        The owner calls this from a timer so a quiet journal is still synced in time."""
        if (
            self.config.fsync == "interval"
            and self._dirty
            and (self._monotonic() - self._last_sync) * 1000.0 >= self.config.fsync_interval_ms
        ):
            self.sync()

    # ---------------------------------------------------------------- compaction

    def compaction_due(self) -> bool:
        limit = self.config.compact_above_bytes
        return limit is not None and self._size > max(limit, 2 * self._size_after_compaction)

    def rewrite(self, records: Iterable[JournalRecord]) -> None:
        """Replace the file by ``records`` atomically: write a temp file, fsync it, rename
        it over the journal, fsync the directory. A crash at any point leaves either the
        old file or the new one, both complete."""
        tmp = self.path.with_name(self.path.name + ".compact")
        new = open(tmp, "a+b")  # noqa: SIM115 - becomes self._file
        try:
            # Lock the new inode before it takes the journal's name, so no other process
            # can slip in between the rename and our lock.
            fcntl.flock(new.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            new.truncate(0)
            new.write(MAGIC)
            for record in records:
                new.write(self._pack(record))
            new.flush()
            os.fsync(new.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            new.close()
            raise
        _fsync_dir(self.path.parent)
        self._file.close()
        self._file = new
        self._size = self._file.seek(0, os.SEEK_END)
        self._size_after_compaction = self._size
        self._compactions += 1
        self._dirty = False

    # ---------------------------------------------------------------- lifecycle

    def statistics(self) -> JournalStats:
        return JournalStats(
            path=str(self.path),
            size_bytes=self._size,
            records_written=self._records_written,
            fsyncs=self._fsyncs,
            compactions=self._compactions,
            truncated_tail_bytes=self._truncated,
        )

    def close(self) -> None:
        """Flush (and fsync unless the policy is ``never``), then release the file."""
        if self._file.closed:
            return
        try:
            self._file.flush()
            if self.config.fsync != "never" and self._dirty:
                self.sync()
        finally:
            self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reset_to_header(self, old_len: int) -> None:
        f = self._file
        f.truncate(0)
        f.seek(0)
        f.write(MAGIC)
        f.flush()
        os.fsync(f.fileno())
        _fsync_dir(self.path.parent)
        if old_len:
            log.warning(
                "journal %s: re-created after a torn header of %d bytes", self.path, old_len
            )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
