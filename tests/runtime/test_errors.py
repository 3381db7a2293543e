"""The error contract of actor.py, one test per cell, plus supervision."""

from __future__ import annotations

import asyncio
import logging

import pytest

from spotlight.runtime import Actor, ActorRef, RestartPolicy, Runtime, endpoint
from spotlight.runtime.errors import ActorStopped, RemoteError, StaleGeneration, Timeout
from tests.runtime.helpers import FAST, Adder, arun


def test_ask_handler_error_goes_to_caller_and_actor_lives() -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = await rt.spawn(Adder, 1)
            with pytest.raises(RemoteError) as info:
                await ref.boom.ask("bad input 42")
            err = info.value
            assert err.type_name == "ValueError"
            assert err.message == "bad input 42"
            assert "in boom" in err.traceback_text and "raise ValueError" in err.traceback_text
            assert await ref.add.ask(1) == 2  # same incarnation keeps serving
            assert rt.statistics()["actors"][0]["generation"] == 1

    arun(main())


def test_stream_handler_error_goes_to_consumer() -> None:
    class Bad(Actor):
        @endpoint
        async def items(self):  # type: ignore[no-untyped-def]
            yield 1
            raise KeyError("gone")

    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = await rt.spawn(Bad)
            got = []
            with pytest.raises(RemoteError, match="KeyError"):
                async for x in ref.items.stream():
                    got.append(x)
            assert got == [1]

    arun(main())


class Fragile(Actor):
    @endpoint
    async def crash(self) -> None:
        raise RuntimeError("tell failed")

    @endpoint
    async def gen(self) -> int:
        return self.generation


class Parent(Actor):
    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy

    @endpoint
    async def make(self) -> ActorRef:
        return await self.spawn_child(Fragile, name="child", restart=self.policy)


async def _restarted(rt: Runtime, name: str, generation: int) -> None:
    """Poll the actor until it answers from ``generation`` (bounded by the test timeout).

    Messages queued behind the failing one fail with ActorStopped (the incarnation died).
    """
    while True:
        try:
            gen = await rt.ref(rt.address, name).gen.ask()
        except ActorStopped:
            gen = 0
        if gen >= generation:
            break
        await asyncio.sleep(0.01)
    assert gen == generation


def test_tell_failure_without_parent_is_logged_counted_and_actor_lives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = await rt.spawn(Fragile, name="lonely")
            with caplog.at_level(logging.ERROR, logger="spotlight.runtime"):
                await ref.crash.tell()
                assert await ref.gen.ask() == 1  # mailbox order: crash ran before this
            (stats,) = rt.statistics()["actors"]
            assert stats["tell_failures"] == 1 and stats["restarts"] == 0
            lines = [r for r in caplog.records if "tell crash raised RuntimeError" in r.message]
            assert len(lines) == 1

    arun(main())


def test_tell_failure_restarts_child_with_new_generation_and_fences_old_refs() -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt:
            parent = await rt.spawn(Parent, RestartPolicy.on_failure(max_restarts=3), name="p")
            child = await parent.make.ask()
            assert child.generation == 1 and child.name == "child"
            await child.crash.tell()
            await _restarted(rt, "child", 2)
            with pytest.raises(StaleGeneration, match="generation 2"):
                await child.gen.ask()  # fenced to generation 1
            await child.gen.tell()  # stale tell: dropped and counted, not raised
            fresh = await rt.lookup(rt.address, "child")
            assert fresh.generation == 2 and await fresh.gen.ask() == 2
            stats = {a["name"]: a for a in rt.statistics()["actors"]}
            assert stats["child"]["restarts"] == 1
            assert stats["child"]["stale_dropped"] == 1
            assert stats["child"]["parent"] == "p"

    arun(main())


def test_restart_budget_exhausted_leaves_child_stopped() -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt:
            parent = await rt.spawn(Parent, RestartPolicy.on_failure(max_restarts=1), name="p")
            child = (await parent.make.ask()).any_generation()
            await child.crash.tell()
            await _restarted(rt, "child", 2)
            await child.crash.tell()
            while rt.cells["child"].state != "stopped":  # noqa: ASYNC110 (polls state; test timeout bounds it)
                await asyncio.sleep(0.01)
            with pytest.raises(ActorStopped):
                await child.gen.ask()

    arun(main())


def test_policy_never_stops_child() -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt:
            parent = await rt.spawn(Parent, RestartPolicy.never(), name="p")
            child = (await parent.make.ask()).any_generation()
            await child.crash.tell()
            while rt.cells["child"].state != "stopped":  # noqa: ASYNC110 (polls state; test timeout bounds it)
                await asyncio.sleep(0.01)
            with pytest.raises(ActorStopped):
                await child.gen.ask()

    arun(main())


def test_stopping_an_actor_fails_pending_asks_at_once() -> None:
    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = await rt.spawn(Adder, name="a")
            running = asyncio.ensure_future(ref.hang.ask(timeout=30.0))
            queued = asyncio.ensure_future(ref.add.ask(1, timeout=30.0))
            await asyncio.sleep(0)  # let both reach the mailbox
            await rt.stop_actor("a", reason="test says stop")
            for fut in (running, queued):
                with pytest.raises(ActorStopped, match="test says stop"):
                    await fut

    arun(main())


def test_cancelled_ask_leaves_no_state_and_cancels_handler() -> None:
    cancelled = asyncio.Event()

    class Waits(Actor):
        @endpoint
        async def wait(self) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        @endpoint
        async def ping(self) -> str:
            return "pong"

    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = await rt.spawn(Waits, name="w")
            with pytest.raises(Timeout):
                await ref.wait.ask(timeout=0.2)
            await asyncio.wait_for(cancelled.wait(), 5.0)
            assert await ref.ping.ask() == "pong"  # the mailbox moved on
            stats = rt.statistics()
            assert stats["local_credits"]["w"]["available"] == FAST.credit_window
            assert stats["actors"][0]["running"] == 0

    arun(main())


def test_restart_policy_validates() -> None:
    with pytest.raises(ValueError, match="max_restarts"):
        RestartPolicy.on_failure(max_restarts=-1)
    with pytest.raises(ValueError, match="valid"):
        RestartPolicy(kind="sometimes")  # type: ignore[arg-type]


def test_handler_that_swallows_its_cancel_does_not_poison_the_actor() -> None:
    class Stubborn(Actor):
        @endpoint
        async def stubborn(self) -> str:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                return "swallowed"  # bad manners, but the actor must survive it
            return "unreachable"

        @endpoint
        async def with_deadline(self) -> str:
            try:
                async with asyncio.timeout(0.05):
                    await asyncio.Event().wait()
            except TimeoutError:
                return "deadline worked"
            return "unreachable"

    async def main() -> None:
        async with Runtime(FAST) as rt:
            ref = await rt.spawn(Stubborn)
            with pytest.raises(Timeout):
                await ref.stubborn.ask(timeout=0.2)
            # a leftover cancel request would turn this timeout into a CancelledError
            assert await ref.with_deadline.ask() == "deadline worked"

    arun(main())
