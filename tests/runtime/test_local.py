"""In-process ask/tell/stream, mailbox order, concurrency, and API guard rails."""

from __future__ import annotations

import asyncio

import pytest

from spotlight.runtime import Actor, ActorRef, Runtime, RuntimeConfig, endpoint
from spotlight.runtime.errors import (
    ActorNotFound,
    BadMessage,
    EndpointNotFound,
    NotAnEndpoint,
    Timeout,
)
from tests.runtime.helpers import FAST, Adder, arun


def test_ask_tell_stream_in_process() -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = await rt.spawn(Adder, 1, name="adder")
            assert ref.generation == 1
            assert await ref.add.ask(2, timeout=5.0) == 3
            for i in range(5):
                await ref.record.tell(i)
            assert await ref.history.ask() == [0, 1, 2, 3, 4]  # mailbox order
            assert [x async for x in ref.count.stream(4, timeout=5.0)] == [0, 1, 2, 3]
            # a ref built from the address goes the same way
            same = rt.ref(rt.address, "adder")
            assert await same.add.ask(a=10) == 11

    arun(main())


def test_mailbox_order_is_kept_between_tells_and_asks() -> None:
    class Log(Actor):
        def __init__(self) -> None:
            self.items: list[int] = []

        @endpoint
        async def put(self, x: int) -> None:
            await asyncio.sleep(0)  # yield: a later message must still wait its turn
            self.items.append(x)

        @endpoint
        async def get(self) -> list[int]:
            return list(self.items)

    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = await rt.spawn(Log)
            for i in range(200):
                await ref.put.tell(i)
            assert await ref.get.ask() == list(range(200))

    arun(main())


def test_concurrent_endpoint_runs_alongside_others() -> None:
    class Gate(Actor):
        def __init__(self) -> None:
            self.opened = asyncio.Event()
            self.all_in = asyncio.Event()
            self.inside = 0
            self.max_inside = 0

        @endpoint(concurrent=True)
        async def wait(self) -> int:
            self.inside += 1
            self.max_inside = max(self.max_inside, self.inside)
            if self.inside == 3:
                self.all_in.set()
            await self.opened.wait()
            self.inside -= 1
            return self.max_inside

        @endpoint
        async def open(self) -> None:
            await self.all_in.wait()  # only reachable if the three waits run at once
            self.opened.set()

        @endpoint
        async def serial(self) -> None:
            await self.opened.wait()

    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = await rt.spawn(Gate)
            # gather starts the calls in order: three waits, then open. open can only
            # finish once all three waits are inside at the same time.
            results = await asyncio.gather(*[ref.wait.ask() for _ in range(3)], ref.open.ask())
            assert results == [3, 3, 3, None]
            # a non-concurrent endpoint blocks the mailbox while it runs
            ref2 = await rt.spawn(Gate)
            blocked = asyncio.ensure_future(ref2.serial.ask())
            with pytest.raises(Timeout):
                await ref2.open.ask(timeout=0.3)
            blocked.cancel()

    arun(main())


def test_bad_calls_get_typed_errors() -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = await rt.spawn(Adder, name="adder")
            with pytest.raises(NotAnEndpoint, match="decorate it with @endpoint"):
                ref.helper  # noqa: B018
            with pytest.raises(NotAnEndpoint, match=r"no endpoint 'nope'.*add"):
                ref.nope  # noqa: B018
            unchecked = rt.ref("tcp://127.0.0.1:1", "x")
            assert unchecked.anything is not None  # no class known: checked remotely
            with pytest.raises(BadMessage, match=r"wrong arguments for Adder\.add"):
                await ref.add.ask(1, 2)
            with pytest.raises(BadMessage, match="is a stream"):
                await ref.count.ask(3)
            with pytest.raises(EndpointNotFound, match="no endpoint 'nope'"):
                await ActorRef(rt.address, "adder", runtime=rt).nope.ask()
            with pytest.raises(ActorNotFound):
                await rt.ref(rt.address, "ghost").add.ask(1)
            with pytest.raises(ActorNotFound):
                await rt.lookup(rt.address, "ghost", timeout=5.0)
            found = await rt.lookup(rt.address, "adder", timeout=5.0)
            assert found.generation == 1
            with pytest.raises(ValueError, match="already runs"):
                await rt.spawn(Adder, name="adder")
            assert await ref.add.ask(1) == 1  # still serving

    arun(main())


def test_hooks_and_actor_context() -> None:
    events: list[str] = []

    class Hooked(Actor):
        def __init__(self) -> None:
            events.append(f"init {self.name}@{self.generation}")

        async def on_start(self) -> None:
            events.append("start")

        async def on_stop(self) -> None:
            events.append("stop")

        @endpoint
        async def me(self) -> str:
            return repr(self.ref)

    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = await rt.spawn(Hooked, name="h")
            assert await ref.me.ask() == repr(ref)

    arun(main())
    assert events == ["init h@1", "start", "stop"]


def test_endpoint_must_be_async() -> None:
    with pytest.raises(TypeError, match="must be 'async def'"):

        class Bad(Actor):
            @endpoint
            def sync(self) -> None:  # type: ignore[misc]
                pass


def test_config_refuses_open_bind_without_token() -> None:
    with pytest.raises(ValueError, match="cluster_token"):
        RuntimeConfig(bind_host="0.0.0.0")
    assert RuntimeConfig(bind_host="0.0.0.0", cluster_token="s3cret").cluster_token
    with pytest.raises(ValueError, match="heartbeat_s"):
        RuntimeConfig(heartbeat_s=0)
    with pytest.raises(ValueError, match="credit_window"):
        RuntimeConfig(credit_window=0)


def test_local_back_pressure_blocks_the_teller() -> None:
    release = asyncio.Event()

    class Slow(Actor):
        @endpoint
        async def work(self, i: int) -> None:
            await release.wait()

    async def main() -> None:
        cfg = RuntimeConfig(credit_window=8, ask_timeout_s=10.0)
        async with Runtime(cfg) as rt:
            ref = await rt.spawn(Slow, name="slow")
            for i in range(8):
                await ref.work.tell(i)
            with pytest.raises(Timeout, match="no send credit"):
                await ref.work.tell(99, timeout=0.2)
            stats = rt.statistics()
            (actor,) = stats["actors"]
            assert actor["mailbox"] + actor["running"] <= 8
            assert stats["local_credits"]["slow"]["available"] == 0
            release.set()  # credits are per (peer, actor): even an ask would wait now
            await ref.work.tell(100, timeout=5.0)  # credit came back

    arun(main())


def test_stream_item_deadline() -> None:
    class Stalls(Actor):
        @endpoint
        async def items(self):  # type: ignore[no-untyped-def]
            yield 1
            await asyncio.Event().wait()
            yield 2

    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = await rt.spawn(Stalls, name="s")
            got = []
            with pytest.raises(Timeout, match=r"no item within 0\.3s"):
                async for x in ref.items.stream(timeout=0.3):
                    got.append(x)
            assert got == [1]
            # the generator gets cancelled (it runs its cancellation on the next steps)
            while rt.statistics()["actors"][0]["running"]:  # noqa: ASYNC110 (polls state; test timeout bounds it)
                await asyncio.sleep(0.01)
            assert rt.statistics()["local_credits"]["s"]["available"] == FAST.credit_window

    arun(main())


def test_public_surface_is_frozen() -> None:
    import spotlight.runtime as rt_pkg
    import spotlight.runtime.errors as errors

    assert sorted(rt_pkg.__all__) == [
        "Actor", "ActorRef", "PeerEvent", "RestartPolicy", "Runtime", "RuntimeConfig",
        "endpoint", "run",
    ]  # fmt: skip
    assert sorted(errors.__all__) == [
        "ActorNotFound", "ActorStopped", "BadMessage", "EndpointNotFound", "HandshakeRejected",
        "MessageTooLarge", "NotAnEndpoint", "PeerLost", "RemoteError", "SpotlightError",
        "StaleGeneration", "Timeout",
    ]  # fmt: skip
    assert all(issubclass(getattr(errors, n), errors.SpotlightError) for n in errors.__all__)


class _TakesReservedNames(Actor):
    def __init__(self, policy: str, parent: str, cls: str) -> None:
        self.values = (policy, parent, cls)

    @endpoint
    async def values_(self) -> tuple[str, str, str]:
        return self.values


def test_actor_keywords_may_reuse_the_runtimes_parameter_names() -> None:
    async def main() -> None:
        async with Runtime(RuntimeConfig()) as rt:
            ref = await rt.spawn(_TakesReservedNames, policy="p", parent="q", cls="c")
            assert await ref.values_.ask(timeout=5) == ("p", "q", "c")

    arun(main())
