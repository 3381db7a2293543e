"""Reads back what W&B wrote offline (``wandb/offline-run-*/run-<id>.wandb``), for tests.

wandb 0.31 ships no Python reader; the file is a LevelDB-style log (blocks of 32 KiB,
each chunk ``crc32 u32 | length u16 | type u8 | payload``; types full=1, first=2,
middle=3, last=4) after a 7-byte header, and each record a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

HEADER = 7
BLOCK = 32 * 1024


def _chunks(data: bytes) -> list[bytes]:
    records, pending, pos = [], b"", HEADER
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(payload)
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            records.append(pending + payload)
    return records


def read_offline_run(path: Path) -> dict[str, Any]:
    """``{"run_id", "project", "history": [{key: value}, ...]}`` of one ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out: dict[str, Any] = {"run_id": None, "project": None, "history": []}
    for payload in _chunks(data):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run_id"], out["project"] = record.run.run_id, record.run.project
        elif kind == "history":
            out["history"].append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return out
