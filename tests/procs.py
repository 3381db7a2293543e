"""Process checks shared by the multi-process tests (every child is checked by PID)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def wait_for(cond: Callable[[], bool], what: str, limit_s: float = 30.0) -> None:
    """Poll ``cond`` every 20 ms; AssertionError naming ``what`` after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
