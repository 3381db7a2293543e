"""Notices from inside the node: a POSIX signal, or a file that appears.

``SignalNotice`` covers every launcher that says "leave" with SIGTERM: Kubernetes
(then SIGKILL after ``terminationGracePeriodSeconds``), systemd on a GCP instance
being preempted (the ACPI shutdown reaches the processes as SIGTERM), SLURM,
torchrun forwarding, our own spot simulator.

``FileNotice`` serves setups where some other agent learns of the preemption
(a node daemon, a sidecar, an operator) and can only touch a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any

from spotlight.runtime.notice._core import (
    PollingSource,
    PreemptionNotice,
    SourceStatistics,
    make_notice,
    parse_timestamp,
)
from spotlight.runtime.notice._http import MetadataError

__all__ = ["FileNotice", "SignalNotice", "parse_signal"]

_MAX_FILE_BYTES = 4096


def parse_signal(name: str | int | signal.Signals) -> signal.Signals:
    """``"SIGTERM"``, ``"TERM"``, ``15`` or ``signal.SIGTERM`` -> ``signal.SIGTERM``.

    Raises ``ValueError`` naming the valid signal names.
    """
    if isinstance(name, signal.Signals):
        return name
    try:
        if isinstance(name, int):
            return signal.Signals(name)
        upper = name.strip().upper()
        return signal.Signals[upper if upper.startswith("SIG") else "SIG" + upper]
    except (KeyError, ValueError):
        valid = ", ".join(s.name for s in signal.Signals if not s.name.startswith("SIG_"))
        raise ValueError(f"unknown signal {name!r}; valid names: {valid}") from None


class SignalNotice:
    """A notice when the process receives one of ``signals`` (default SIGTERM).

    The handler is installed with ``loop.add_signal_handler`` when :meth:`wait`
    starts (so only from the main thread, on a Unix loop: asyncio's or uvloop's)
    and removed when it returns or is cancelled; the handler that was there
    before (a Python callable or ``SIG_IGN``) is then put back, otherwise the
    default action returns. So a *second* SIGTERM after the notice has been
    taken kills the process as usual: that is the operator's "I mean it now".

    The signal carries no deadline; ``deadline = received + grace_s``, where
    ``grace_s`` should match the launcher's grace period (Kubernetes 30 s by
    default, GCP preemption 30 s).
    """

    name = "signal"

    def __init__(
        self,
        signals: Iterable[str | int | signal.Signals] = ("SIGTERM",),
        *,
        grace_s: float = 30.0,
    ) -> None:
        self.signals = tuple(dict.fromkeys(parse_signal(s) for s in signals))
        if not self.signals:
            raise ValueError("SignalNotice needs at least one signal, e.g. ('SIGTERM',)")
        if not grace_s >= 0:
            raise ValueError(f"grace_s={grace_s!r} must be >= 0")
        self.grace_s = grace_s
        self._stats = SourceStatistics()

    def statistics(self) -> SourceStatistics:
        return self._stats.copy()

    async def wait(self) -> PreemptionNotice:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[signal.Signals] = loop.create_future()

        def on_signal(sig: signal.Signals) -> None:
            if not got.done():
                got.set_result(sig)

        previous: dict[signal.Signals, Any] = {}
        try:
            for sig in self.signals:
                previous[sig] = signal.getsignal(sig)
                try:
                    loop.add_signal_handler(sig, on_signal, sig)
                except (ValueError, RuntimeError, NotImplementedError) as exc:
                    del previous[sig]
                    raise RuntimeError(
                        f"cannot watch {sig.name}: {exc} (signal notices need the main "
                        "thread's event loop on a Unix system; use a file or cloud source "
                        "elsewhere)"
                    ) from exc
            sig = await got
        finally:
            for sig_, before in previous.items():
                loop.remove_signal_handler(sig_)
                if callable(before) or before == signal.SIG_IGN:
                    with contextlib.suppress(ValueError, OSError):
                        signal.signal(sig_, before)
        now = time.time()
        return make_notice(
            source=self.name,
            received_at=now,
            deadline=now + self.grace_s,
            detail=f"received {sig.name}; deadline assumed {self.grace_s:g} s later",
        )


class FileNotice(PollingSource):
    """A notice when ``path`` exists; checked every ``poll_interval_s`` seconds.

    File format (UTF-8 text, surrounding whitespace ignored):

    - empty: no deadline given; ``deadline = seen + default_lead_s``
      (``None`` = unknown when ``default_lead_s`` is ``None``);
    - a number, e.g. ``120`` or ``42.5``: seconds of notice counted from the
      file's modification time (so polling latency does not eat into it);
    - an ISO 8601 time, e.g. ``2026-11-23T13:20:00Z`` (no zone = UTC): the
      absolute deadline.

    Anything else still counts as a notice (the file's existence is the
    message) with the default deadline, and ``detail`` quotes the content.
    Write the file atomically (write a temporary file in the same directory,
    then ``os.replace``); otherwise a poll may see it before its content and
    take the default deadline. A file left over from an earlier run fires at
    once: remove it when the node starts.
    """

    name = "file"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval_s: float = 1.0,
        default_lead_s: float | None = 30.0,
        log_repeat_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(poll_interval_s=poll_interval_s, log_repeat_s=log_repeat_s)
        self.path = os.fspath(path)
        if default_lead_s is not None and not default_lead_s >= 0:
            raise ValueError(f"default_lead_s={default_lead_s!r} must be >= 0 or None")
        self.default_lead_s = default_lead_s
        self._clock = clock

    async def poll(self) -> PreemptionNotice | None:
        # In a thread: a stat on a stalled network filesystem must not block the loop.
        found = await asyncio.to_thread(_stat_and_read, self.path)
        if found is None:
            return None
        mtime, text, read_error = found
        now = self._clock()
        deadline, detail = self._deadline_from(text, mtime, now)
        if read_error is not None:
            detail = (
                f"notice file {self.path} exists but could not be read ({read_error}); {detail}"
            )
        return make_notice(source=self.name, received_at=now, deadline=deadline, detail=detail)

    def _deadline_from(
        self, text: str | None, mtime: float, now: float
    ) -> tuple[float | None, str]:
        default = None if self.default_lead_s is None else now + self.default_lead_s
        assumed = (
            "deadline unknown"
            if self.default_lead_s is None
            else f"deadline assumed {self.default_lead_s:g} s later"
        )
        if text is None:
            return default, assumed
        if not text:
            return default, f"notice file {self.path} appeared (empty); {assumed}"
        try:
            seconds = float(text)
        except ValueError:
            pass
        else:
            if seconds == seconds and abs(seconds) != float("inf"):  # not NaN/inf
                return (
                    mtime + seconds,
                    f"notice file {self.path} appeared: {seconds:g} s of notice from its mtime",
                )
        try:
            deadline = parse_timestamp(text)
        except ValueError:
            return default, (
                f"notice file {self.path} appeared with unparsable content {text[:80]!r}; {assumed}"
            )
        return deadline, f"notice file {self.path} appeared: deadline {text[:80]}"


def _stat_and_read(path: str) -> tuple[float, str | None, str | None] | None:
    """``None`` if absent, else ``(mtime, stripped text or None, read error or None)``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:  # e.g. a parent directory we may not search
        raise MetadataError(f"stat {type(exc).__name__}", f"cannot stat {path}: {exc}") from None
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_FILE_BYTES)
    except OSError as exc:  # it exists: still a notice, just without its content
        return st.st_mtime, None, str(exc)
    return st.st_mtime, raw.decode("utf-8", errors="replace").strip(), None
