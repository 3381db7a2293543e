"""Weight copy for joiners: /dev/shm snapshot (same node) and chunked runtime stream (other node).

Copies are exact (bytes moved, no arithmetic), so every comparison is ``torch.equal``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from spotlight.actors.sp.member import SPMember, SPMemberConfig
from spotlight.actors.weights.share import (
    ChunkAssembler,
    WeightManifest,
    flat_bytes,
    iter_chunks,
    load_flat,
    load_from_shm,
    manifest_of,
    publish_to_shm,
)
from spotlight.runtime import Runtime
from tests.runtime.helpers import FAST, arun


def model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(7, 13), nn.LayerNorm(13), nn.Linear(13, 3, bias=False))
    m.register_buffer("steps", torch.tensor([seed], dtype=torch.int64))
    return m.to(torch.float32)


def same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_manifest_layout_is_aligned_and_round_trips() -> None:
    man = manifest_of(model(0), node="n1", version=3)
    assert all(e.offset % 64 == 0 for e in man.entries)
    assert man.total_bytes >= sum(e.nbytes for e in man.entries)
    assert WeightManifest.from_dict(man.to_dict()) == man


def test_shm_publish_and_copy_into_other_weights(tmp_path: Path) -> None:
    src, dst = model(0), model(1)
    assert not same(src, dst)
    shared = publish_to_shm(src, node="n0", shm_dir=tmp_path)
    try:
        stats = load_from_shm(dst, shared.manifest)
    finally:
        shared.close()
    assert same(src, dst)
    assert stats.path == "shm" and stats.bytes == sum(e.nbytes for e in shared.manifest.entries)
    assert not Path(shared.manifest.path).exists()


def test_chunked_stream_reassembles_exactly() -> None:
    src, dst = model(0), model(2)
    man, buf = flat_bytes(src)
    asm = ChunkAssembler(man)
    for off, chunk in reversed(list(iter_chunks(buf, 100))):  # any order works
        asm.add(off, chunk.clone())
    assert asm.done
    load_flat(dst, man, asm.buf)
    assert same(src, dst)


def test_mismatched_model_is_refused_with_names() -> None:
    man, buf = flat_bytes(model(0))
    other = nn.Sequential(nn.Linear(7, 14))
    with pytest.raises(ValueError, match="does not match the model"):
        load_flat(other, man, buf)
    with pytest.raises(ValueError, match="not on this node"):
        load_from_shm(model(1), WeightManifest(entries=man.entries, total_bytes=1, path=""))
    with pytest.raises(ValueError, match="outside the"):
        ChunkAssembler(man).add(man.total_bytes, torch.zeros(4, dtype=torch.uint8))


@pytest.mark.timeout(60)
def test_member_fetches_weights_over_shm_and_runtime() -> None:
    """Two runtimes (two 'nodes'): a joiner built from another seed copies the donor's weights."""
    store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=timedelta(seconds=10))

    def cfg(node: str, seed: int) -> SPMemberConfig:
        return SPMemberConfig(store_host="127.0.0.1", store_port=store.port, node=node, seed=seed)

    async def main() -> None:
        async with Runtime(FAST) as rt_a, Runtime(FAST) as rt_b:
            donor = await rt_a.spawn(SPMember, cfg("n0", 0), name="donor")
            want = await donor.weights_digest.ask()
            for same_node, seed in ((False, 5), (True, 6)):
                joiner = await rt_b.spawn(SPMember, cfg("n1", seed), name=f"joiner{seed}")
                assert await joiner.weights_digest.ask() != want
                remote_donor = rt_b.ref(rt_a.address, donor.name)
                info = await joiner.fetch_weights.ask(remote_donor, same_node, 1 << 20)
                assert info["path"] == ("shm" if same_node else "runtime")
                assert info["bytes"] > 1_000_000
                assert await joiner.weights_digest.ask() == want
            await rt_a.stop_actor("donor")  # removes its /dev/shm snapshot

    arun(main())
