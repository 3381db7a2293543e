"""``run(main)``: a runtime on uvloop with graceful Ctrl-C / SIGTERM handling.

First signal: cancel ``main`` with a reason naming the signal, shut the runtime down
(actors stopped, sockets closed, context destroyed), raise ``SystemExit(128+signum)``.
Second signal while that is in progress: ``os._exit(128+signum)`` at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from spotlight.runtime.config import RuntimeConfig
from spotlight.runtime.runtime import Runtime

__all__ = ["run", "run_with_signals"]

log = logging.getLogger("spotlight.runtime")
T = TypeVar("T")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # uvloop is not built for this platform (Windows): stock asyncio
        return None
    return uvloop.new_event_loop


def run(main: Callable[[Runtime], Awaitable[T]], config: RuntimeConfig | None = None) -> T:
    """Run ``main(runtime)`` on uvloop inside a fresh runtime, then shut down cleanly.

    The first SIGINT/SIGTERM cancels ``main`` (the cancel carries the signal name) and
    shuts the runtime down gracefully, then raises ``SystemExit(128 + signum)``; a
    second signal exits at once (``os._exit``).
    """
    return run_with_signals(main, config)


def run_with_signals(
    main: Callable[[Runtime], Awaitable[T]], config: RuntimeConfig | None = None
) -> T:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_supervised_main(main, config))


async def _supervised_main(
    main: Callable[[Runtime], Awaitable[T]], config: RuntimeConfig | None
) -> T:
    loop = asyncio.get_running_loop()
    received: list[int] = []
    main_task: list[asyncio.Future[Any]] = []

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if received:
            log.error("second %s: exiting now without cleanup", name)
            os._exit(128 + signum)
        received.append(signum)
        log.warning("%s: shutting down gracefully (send it again to exit at once)", name)
        for task in main_task:
            task.cancel(msg=f"{name}: graceful shutdown")

    for sig in _SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with Runtime(config) as rt:
            task = asyncio.ensure_future(main(rt))
            main_task.append(task)
            if received:
                task.cancel(msg="signal before start: graceful shutdown")
            try:
                return await task
            except asyncio.CancelledError:
                if not received:
                    raise
    finally:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)
    raise SystemExit(128 + received[0])
