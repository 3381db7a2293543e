"""Bootstrap (torchrun env, TCPStore address book) and membership events."""

from __future__ import annotations

import asyncio
import socket

import pytest

from spotlight.runtime import Runtime
from spotlight.runtime.cluster import AddressBook, ClusterInfo, MemberInfo, Membership, join
from tests.runtime.helpers import FAST, Adder, arun


def test_cluster_info_from_env() -> None:
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1",
           "MASTER_PORT": "29500"}  # fmt: skip
    info = ClusterInfo.from_env(env)
    assert (info.rank, info.world_size, info.master_port) == (1, 4, 29500)
    with pytest.raises(ValueError, match="MASTER_PORT unset"):
        ClusterInfo.from_env({k: v for k, v in env.items() if k != "MASTER_PORT"})
    with pytest.raises(ValueError, match=r"RANK=4 must be in 0\.\.3"):
        ClusterInfo.from_env({**env, "RANK": "4"})
    with pytest.raises(ValueError, match="not an integer"):
        ClusterInfo.from_env({**env, "WORLD_SIZE": "four"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_address_book_through_tcpstore() -> None:
    port = _free_port()

    async def main() -> None:
        master = AddressBook(ClusterInfo(rank=0, world_size=2, local_rank=0,
                                         master_addr="127.0.0.1", master_port=port), timeout_s=10)  # fmt: skip
        worker = AddressBook(ClusterInfo(rank=1, world_size=2, local_rank=1,
                                         master_addr="127.0.0.1", master_port=port), timeout_s=10)  # fmt: skip
        async with Runtime(FAST) as rt0, Runtime(FAST) as rt1:
            await rt0.spawn(Adder, 7, name="adder")
            await master.publish("0", rt0.address)
            await worker.publish("1", rt1.address)
            found = await worker.lookup("0", timeout_s=10)
            assert found == rt0.address
            assert await rt1.ref(found, "adder").add.ask(1) == 8
            assert await master.lookup("1") == rt1.address

    arun(main())


def test_membership_join_leave_never_restarts_others() -> None:
    async def main() -> None:
        async with Runtime(FAST) as coord, Runtime(FAST) as a, Runtime(FAST) as watcher:
            await coord.spawn(Membership, name="membership")
            worker = await a.spawn(Adder, name="worker")
            await join(a, coord.address, node_id="n0", role="trainer")
            stream = watcher.ref(coord.address, "membership", cls=Membership).watch.stream()
            async with stream:
                first = await anext(stream)
                assert first.kind == "member_joined" and first.member.role == "trainer"
                spot = Runtime(FAST)
                await spot.start()
                members = await join(spot, coord.address, node_id="n1", role="explorer",
                                     capacity="spot")  # fmt: skip
                assert {m.capacity for m in members} == {"spot", "on-demand"}
                joined = await anext(stream)
                assert (joined.kind, joined.member.address) == ("member_joined", spot.address)
                await spot.shutdown()  # silent departure: found by heartbeats
                left = await asyncio.wait_for(anext(stream), 10.0)
                assert (left.kind, left.member.address) == ("member_left", spot.address)
            # the other member was not touched: same incarnation, still serving
            assert await worker.add.ask(1) == 1 and worker.generation == 1
            remaining = await coord.ref(coord.address, "membership").members_list.ask()
            assert [m.address for m in remaining] == [a.address]
            with pytest.raises(ValueError, match="capacity"):
                MemberInfo(address="x", node_id="n", role="r", capacity="cheap")

    arun(main())
