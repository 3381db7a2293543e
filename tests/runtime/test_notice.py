"""Preemption notice sources against loopback mock metadata servers, a real signal,
a real file; combining sources; the background watcher.

Every wait is on an event or a condition (the mock saw N requests, the source
counted N errors) under a timeout; poll intervals are shrunk to tens of ms.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

import spotlight.runtime.notice as notice_pkg
from spotlight.runtime.notice import (
    SOURCE_NAMES,
    AwsSpotNotice,
    AzureNotice,
    FileNotice,
    GcpNotice,
    NoticeConfig,
    NoticeWatcher,
    PreemptionNotice,
    SignalNotice,
    SourceStatistics,
    build_sources,
    first_notice,
)
from spotlight.runtime.notice._core import PollingSource
from tests.runtime._mock_metadata import (
    FAULTS,
    MockAws,
    MockAzure,
    MockGcp,
    MockHttpServer,
    refused_url,
)

pytestmark = pytest.mark.timeout(60)

POLL = 0.02  # seconds between polls in tests
HTTP_OK_TIMEOUT = 5.0  # generous: happy paths must not see spurious timeouts on a busy box
HTTP_FAULT_TIMEOUT = 0.15  # short: the "slow" faults must time out quickly
LOOPS = ["asyncio", "uvloop"]


def run(main: Callable[[], Coroutine[Any, Any, Any]], loop: str = "asyncio") -> Any:
    """Run ``main()`` in a fresh loop in debug mode (reports a blocked loop)."""
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(debug=True, loop_factory=factory) as runner:
        return runner.run(main())


async def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Wait for a condition that has no event of its own (source counters)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - counters have no event; re-check briefly
            await asyncio.sleep(0.005)


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def leftover_tasks(*servers: MockHttpServer) -> set[asyncio.Task[Any]]:
    mine = set().union(*(s.handler_tasks() for s in servers)) if servers else set()
    return asyncio.all_tasks() - {asyncio.current_task()} - mine


# --------------------------------------------------------------------------- cloud helpers

MOCKS: dict[str, type[MockHttpServer]] = {"aws": MockAws, "gcp": MockGcp, "azure": MockAzure}


def make_source(cloud: str, url: str, *, http_timeout_s: float = HTTP_OK_TIMEOUT) -> PollingSource:
    cls = {"aws": AwsSpotNotice, "gcp": GcpNotice, "azure": AzureNotice}[cloud]
    return cls(base_url=url, poll_interval_s=POLL, http_timeout_s=http_timeout_s)


def preempt_event(vm: str, not_before: float | str, event_id: str = "E-1") -> dict[str, object]:
    nb = not_before if isinstance(not_before, str) else formatdate(not_before, usegmt=True)
    return {
        "EventId": event_id,
        "EventType": "Preempt",
        "ResourceType": "VirtualMachine",
        "Resources": [vm],
        "EventStatus": "Scheduled",
        "NotBefore": nb,
        "Description": "",
        "EventSource": "Platform",
        "DurationInSeconds": -1,
    }


async def arm(cloud: str, server: MockHttpServer) -> Callable[[PreemptionNotice], float]:
    """Make the mock announce a preemption; return how to compute the expected deadline."""
    t = float(int(time.time()) + 120)
    if isinstance(server, MockAws):
        server.action = {"action": "terminate", "time": iso(t)}
        return lambda n: t
    if isinstance(server, MockGcp):
        await server.set_preempted(True)
        return lambda n: n.received_at + 30.0
    assert isinstance(server, MockAzure)
    server.set_events([preempt_event("vm-a", t)])
    return lambda n: t


# --------------------------------------------------------------------------- config


def test_config_unknown_source_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'ibm'.*valid sources: signal, file, aws, gcp, azure"):
        NoticeConfig(sources=("signal", "ibm"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"poll_interval_s": 0}, "poll_interval_s=0"),
        ({"http_timeout_s": -1.0}, "http_timeout_s=-1.0"),
        ({"grace_s": -5}, "grace_s=-5"),
        ({"sources": ("file",)}, "file_path"),
        ({"sources": ("aws", "aws")}, "twice"),
        ({"signals": ("SIGNOPE",)}, "SIGNOPE.*valid names:.*SIGTERM"),
        ({"aws_base_url": "https://169.254.169.254"}, "aws_base_url"),
        ({"gcp_base_url": "metadata.google.internal"}, "gcp_base_url"),
        ({"aws_token_ttl_s": 0}, "aws_token_ttl_s"),
        ({"aws_token_ttl_s": 21601}, "aws_token_ttl_s"),
        ({"azure_event_types": ()}, "azure_event_types"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NoticeConfig(**kwargs)


def test_build_sources_in_order_with_settings(tmp_path: Any) -> None:
    config = NoticeConfig(
        sources=("azure", "signal", "file", "aws", "gcp"),
        poll_interval_s=0.5,
        http_timeout_s=0.7,
        grace_s=11,
        file_path=str(tmp_path / "n"),
        signals=("TERM", "SIGUSR1"),
        aws_base_url="http://127.0.0.1:1",
        gcp_wait_for_change=True,
        azure_vm_name="me",
    )
    sources = build_sources(config)
    assert [s.name for s in sources] == ["azure", "signal", "file", "aws", "gcp"]
    assert set(SOURCE_NAMES) == {s.name for s in sources}
    azure, sig, file, aws, gcp = sources
    assert isinstance(sig, SignalNotice) and sig.signals == (signal.SIGTERM, signal.SIGUSR1)
    assert sig.grace_s == 11
    assert isinstance(file, FileNotice) and file.default_lead_s == 11
    assert isinstance(aws, AwsSpotNotice) and aws.base_url == "http://127.0.0.1:1"
    assert aws.http_timeout_s == 0.7 and aws.poll_interval_s == 0.5
    assert isinstance(gcp, GcpNotice) and gcp.wait_for_change
    assert isinstance(azure, AzureNotice) and azure.vm_name == "me"
    assert NoticeConfig().build()[0].name == "signal"


def test_notice_package_imports_only_the_stdlib() -> None:
    """The notice package itself pulls in nothing but the stdlib (no torch, no aiohttp).

    Checked on the source, not with sys.modules: the parent ``spotlight.runtime``
    package may import other things (its codec knows tensors), which is not ours.
    """
    package = Path(notice_pkg.__file__).parent
    outside = set()
    for file in package.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if (
                    top != "__future__"
                    and top not in sys.stdlib_module_names
                    and not name.startswith("spotlight.runtime.notice")
                ):
                    outside.add(f"{file.name}: {name}")
    assert not outside


# --------------------------------------------------------------------------- AWS


@pytest.mark.parametrize("loop", LOOPS)
def test_aws_no_notice_then_notice(loop: str) -> None:
    async def main() -> None:
        async with MockAws() as aws:
            src = make_source("aws", aws.url)
            task = asyncio.create_task(src.wait())
            await aws.wait_requests(3)  # three 404s: no notice
            await wait_until(lambda: src.statistics().polls >= 3)
            assert not task.done()
            t = int(time.time()) + 120
            aws.action = {"action": "stop", "time": iso(t)}
            notice = await asyncio.wait_for(task, 10)
            assert notice.source == "aws"
            assert notice.deadline == t
            assert "'stop'" in notice.detail
            assert notice.received_at <= time.time()
            stats = src.statistics()
            assert stats.errors == 0 and stats.last_error is None
            assert aws.issued == 1  # one token served every poll
            assert aws.count(aws.token_path) == 1

    run(main, loop)


def test_aws_renews_token_on_401() -> None:
    async def main() -> None:
        async with MockAws() as aws:
            src = make_source("aws", aws.url)
            assert isinstance(src, AwsSpotNotice)
            task = asyncio.create_task(src.wait())
            await aws.wait_requests(2)
            aws.expire_tokens()  # as if the TTL ran out on the server's side
            await aws.wait_for(lambda: aws.unauthorized >= 1 and aws.issued >= 2)
            await aws.wait_requests(2)  # polling goes on with the new token
            assert not task.done()
            expected = await arm("aws", aws)
            notice = await asyncio.wait_for(task, 10)
            assert notice.deadline == expected(notice)
            assert src.statistics().errors == 0  # a 401 is handled, not an error
            assert src.tokens_fetched == aws.issued == 2

    run(main)


def test_aws_renews_token_before_it_expires() -> None:
    async def main() -> None:
        # Tokens never expire on this server, so nothing but the TTL can cause a renewal
        # (and a loaded machine cannot make a late GET meet an expired token).
        async with MockAws(enforce_ttl=False) as aws:
            src = AwsSpotNotice(
                base_url=aws.url,
                poll_interval_s=POLL,
                http_timeout_s=HTTP_OK_TIMEOUT,
                token_ttl_s=1,
            )
            task = asyncio.create_task(src.wait())
            await aws.wait_for(lambda: aws.issued >= 2, within=10)
            assert aws.unauthorized == 0  # renewed ahead of the server-side expiry
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run(main)


@pytest.mark.parametrize("status", [403, 500])
def test_aws_token_failures_are_retried(status: int, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with MockAws() as aws:
            aws.token_fault = status
            src = make_source("aws", aws.url)
            task = asyncio.create_task(src.wait())
            await wait_until(lambda: src.statistics().errors >= 3)
            assert aws.count() == 0  # never asked for instance-action without a token
            assert src.statistics().errors_by_kind == {f"http {status}": src.statistics().errors}
            aws.token_fault = None
            expected = await arm("aws", aws)
            notice = await asyncio.wait_for(task, 10)
            assert notice.deadline == expected(notice)

    with caplog.at_level(logging.INFO, "spotlight.runtime.notice"):
        run(main)
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 1
    assert sum("answering again after" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    ("action", "deadline", "detail"),
    [
        ({"action": "terminate", "time": "2020-01-01T00:00:00Z"}, "clamped", "already passed"),
        ({"action": "hibernate", "time": "soon"}, None, "unparsable time"),
        ({"action": "terminate"}, None, "unparsable time"),
    ],
)
def test_aws_odd_times_still_notice(action: dict[str, str], deadline: Any, detail: str) -> None:
    async def main() -> None:
        async with MockAws() as aws:
            aws.action = action
            notice = await asyncio.wait_for(make_source("aws", aws.url).wait(), 10)
            if deadline == "clamped":
                assert notice.deadline == notice.received_at
                assert notice.time_left() == 0.0
            else:
                assert notice.deadline is None and notice.time_left() is None
            assert detail in notice.detail

    run(main)


# --------------------------------------------------------------------------- GCP


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("chunked", [False, True])
def test_gcp_no_notice_then_notice(loop: str, chunked: bool) -> None:
    async def main() -> None:
        async with MockGcp(chunked=chunked) as gcp:
            src = GcpNotice(
                base_url=gcp.url, poll_interval_s=POLL, http_timeout_s=HTTP_OK_TIMEOUT, lead_s=25
            )
            task = asyncio.create_task(src.wait())
            await gcp.wait_requests(3)
            await wait_until(lambda: src.statistics().polls >= 3)
            assert not task.done()
            assert all(r.headers["metadata-flavor"] == "Google" for r in gcp.requests)
            await gcp.set_preempted(True)
            notice = await asyncio.wait_for(task, 10)
            assert notice.source == "gcp"
            assert notice.deadline == notice.received_at + 25
            assert src.statistics().errors == 0

    run(main, loop)


def test_gcp_wait_for_change_answers_without_polling_delay() -> None:
    async def main() -> None:
        async with MockGcp() as gcp:
            # A poll interval far beyond the test's patience: only the hanging GET can
            # deliver the notice in time.
            src = GcpNotice(
                base_url=gcp.url,
                poll_interval_s=30.0,
                http_timeout_s=HTTP_OK_TIMEOUT,
                wait_for_change=True,
                wait_timeout_s=60,
            )
            task = asyncio.create_task(src.wait())
            await gcp.wait_for(lambda: gcp.hanging == 1)
            hanging = gcp.requests[-1]
            assert hanging.query["wait_for_change"] == "true"
            assert hanging.query["last_etag"] == gcp._etag()
            await gcp.set_preempted(True)
            notice = await asyncio.wait_for(task, 5)
            assert notice.deadline == notice.received_at + 30
            assert gcp.count() == 2  # one plain GET for the ETag, one hanging GET

    run(main)


# --------------------------------------------------------------------------- Azure


@pytest.mark.parametrize("loop", LOOPS)
def test_azure_only_our_preempt_event_is_a_notice(loop: str) -> None:
    async def main() -> None:
        async with MockAzure(vm_name="vm-a") as az:
            src = make_source("azure", az.url)
            assert isinstance(src, AzureNotice)
            task = asyncio.create_task(src.wait())
            await az.wait_requests(2)
            assert src.vm_name == "vm-a"  # read from instance/compute/name
            t = int(time.time()) + 45
            freeze = {**preempt_event("vm-a", t, "E-0"), "EventType": "Freeze"}
            az.set_events([freeze, preempt_event("vm-b", t, "E-1")])  # not ours
            await az.wait_requests(3)
            await wait_until(lambda: src.statistics().polls >= 5)
            assert not task.done()
            az.set_events(
                [freeze, preempt_event("vm-b", t, "E-1"), preempt_event("vm-a", t, "E-2")]
            )
            notice = await asyncio.wait_for(task, 10)
            assert notice.source == "azure"
            assert notice.deadline == t
            assert notice.event_id == "E-2"
            assert src.statistics().errors == 0
            assert az.acked == []
            await src.acknowledge(notice)  # optional: let Azure go ahead
            assert az.acked == ["E-2"]

    run(main, loop)


def test_azure_started_event_without_not_before_means_now() -> None:
    async def main() -> None:
        async with MockAzure(vm_name=None) as az:  # name unknown: any Preempt counts
            az.set_events([{**preempt_event("vm-x", ""), "EventStatus": "Started"}])
            notice = await asyncio.wait_for(make_source("azure", az.url).wait(), 10)
            assert notice.deadline == notice.received_at
            assert "Started" in notice.detail

    run(main)


def test_azure_acknowledge_rejects_foreign_notice() -> None:
    src = AzureNotice(base_url="http://127.0.0.1:9")
    notice = PreemptionNotice(source="gcp", received_at=0.0, deadline=None, detail="x")
    with pytest.raises(ValueError, match="not an Azure"):
        asyncio.run(src.acknowledge(notice))


# --------------------------------------------------------------------------- faults, all clouds

EXPECTED_KIND: dict[str, str | dict[str, str]] = {
    "malformed": {"aws": "malformed json", "gcp": "malformed preempted", "azure": "malformed json"},
    "wrong-shape": {
        "aws": "malformed instance-action",
        "gcp": "malformed preempted",
        "azure": "malformed scheduledevents",
    },
    "http500": "http 500",
    "slow": "timeout",
    "slow-body": "timeout",
    "garbage": "malformed http",
    "close": "connection closed",
    "huge-length": "malformed http",
}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_faults_never_notice_nor_crash_then_real_notice_fires(
    cloud: str, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    polls_in_fault = 2 if fault.startswith("slow") else 3  # each slow poll costs a timeout

    async def main() -> None:
        async with MOCKS[cloud]() as server:
            server.fault = fault
            src = make_source(cloud, server.url, http_timeout_s=HTTP_FAULT_TIMEOUT)
            task = asyncio.create_task(src.wait())
            await wait_until(lambda: src.statistics().errors >= polls_in_fault)
            assert not task.done(), "a faulty answer was taken for a notice"
            stats = src.statistics()
            kind = EXPECTED_KIND[fault]
            kind = kind if isinstance(kind, str) else kind[cloud]
            assert stats.errors_by_kind.get(kind, 0) >= 1, stats
            assert stats.last_error is not None
            server.fault = None
            expected = await arm(cloud, server)
            notice = await asyncio.wait_for(task, 10)
            assert notice.source == cloud
            assert notice.deadline == expected(notice)
            # One warning per kind of error, not one per poll.
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            retry_lines = [r for r in warnings if "retrying" in r.getMessage()]
            assert len(retry_lines) == len(src.statistics().errors_by_kind)
            assert src.statistics().errors > len(retry_lines)

    with caplog.at_level(logging.WARNING, "spotlight.runtime.notice"):
        run(main)


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_absent_metadata_server_is_logged_once_and_never_notices(
    cloud: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        src = make_source(cloud, refused_url())
        task = asyncio.create_task(src.wait())
        await wait_until(lambda: src.statistics().errors >= 5)
        assert not task.done()
        assert src.statistics().errors_by_kind == {"connection refused": src.statistics().errors}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, "spotlight.runtime.notice"):
        run(main)
    # Only the notice source's own lines: on a loaded box asyncio's debug mode adds "slow
    # callback" warnings of its own to the capture.
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("spotlight.runtime")]
    assert len(lines) == 1 and "connection refused" in lines[0], lines


# --------------------------------------------------------------------------- signal

SIGNAL_CHILD = r"""
import asyncio, json, signal, sys
import uvloop
from spotlight.runtime.notice import SignalNotice

def before(signum, frame):
    pass

async def watch(names):
    watched = [getattr(signal, s) for s in names]
    task = asyncio.create_task(SignalNotice(names, grace_s=7.0).wait())
    while any(signal.getsignal(s) is before for s in watched):
        await asyncio.sleep(0.005)   # until the handlers are installed
    print("READY", flush=True)
    n = await asyncio.wait_for(task, 30)
    restored = all(signal.getsignal(s) is before for s in watched)
    print(json.dumps({"source": n.source, "received_at": n.received_at,
                      "deadline": n.deadline, "detail": n.detail, "restored": restored}),
          flush=True)

for s in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(s, before)
# The parent sends SIGUSR1 (a configured signal) to an asyncio loop, then SIGTERM to uvloop.
asyncio.run(watch(["SIGTERM", "SIGUSR1"]))
uvloop.run(watch(["SIGTERM"]))
"""


def _read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    assert ready, "child said nothing within 30 s"
    return proc.stdout.readline().strip()


def test_signal_notice_in_subprocess() -> None:
    """A real SIGUSR1 then a real SIGTERM, sent by PID, each become one notice
    (on asyncio's loop, then on uvloop's), and the earlier handlers come back."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_CHILD],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for send in (signal.SIGUSR1, signal.SIGTERM):
            assert _read_line(proc) == "READY"
            os.kill(proc.pid, send)
            result = json.loads(_read_line(proc))
            assert result["source"] == "signal"
            assert result["deadline"] == result["received_at"] + 7.0
            assert send.name in result["detail"]
            assert result["restored"], "the previous handlers were not put back"
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


@pytest.mark.parametrize("loop", LOOPS)
def test_signal_handler_restored_on_cancel(loop: str) -> None:
    def before(signum: int, frame: object) -> None:
        pass

    async def main() -> None:
        task = asyncio.create_task(SignalNotice(["SIGUSR2", "SIGWINCH"]).wait())
        await wait_until(lambda: signal.getsignal(signal.SIGUSR2) is not before)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert signal.getsignal(signal.SIGUSR2) is before
        assert signal.getsignal(signal.SIGWINCH) == signal.SIG_DFL

    signal.signal(signal.SIGUSR2, before)
    try:
        run(main, loop)
    finally:
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)


def test_signal_notice_outside_main_thread_fails_loudly() -> None:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            asyncio.run(SignalNotice().wait())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(30)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert "main thread" in str(errors[0])


# --------------------------------------------------------------------------- file


def _write_atomically(path: Any, text: str) -> float:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return os.stat(path).st_mtime


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ("", "grace"),
        ("  12.5\n", "mtime+12.5"),
        ("FUTURE", "iso"),
        ("2020-01-01T00:00:00Z", "clamped"),
        ("preempt me please", "grace"),
    ],
)
def test_file_notice(tmp_path: Any, content: str, expect: str) -> None:
    path = tmp_path / "preempt"
    t = float(int(time.time()) + 90)
    content = content.replace("FUTURE", iso(t))

    async def main() -> None:
        src = FileNotice(path, poll_interval_s=POLL, default_lead_s=9.0)
        task = asyncio.create_task(src.wait())
        await wait_until(lambda: src.statistics().polls >= 3)
        assert not task.done()
        mtime = _write_atomically(path, content)
        notice = await asyncio.wait_for(task, 10)
        assert notice.source == "file"
        if expect == "grace":
            assert notice.deadline == notice.received_at + 9.0
        elif expect == "mtime+12.5":
            assert notice.deadline == mtime + 12.5
        elif expect == "iso":
            assert notice.deadline == t
        else:
            assert notice.deadline == notice.received_at and "clamped" in notice.detail
        if content.strip() and expect == "grace":
            assert repr(content) in notice.detail
        assert src.statistics().errors == 0

    run(main)


def test_file_notice_without_default_lead_has_unknown_deadline(tmp_path: Any) -> None:
    path = tmp_path / "preempt"
    path.write_text("")
    notice = run(lambda: FileNotice(path, poll_interval_s=POLL, default_lead_s=None).wait())
    assert notice.deadline is None and "deadline unknown" in notice.detail


# --------------------------------------------------------------------------- combining


class Boom:
    """A source that fails (as a misconfigured one would) once ``go`` is set."""

    name = "boom"

    def __init__(self, go: asyncio.Event) -> None:
        self.go = go

    async def wait(self) -> PreemptionNotice:
        await self.go.wait()
        raise RuntimeError("misconfigured")

    def statistics(self) -> SourceStatistics:
        return SourceStatistics()


def test_first_notice_first_wins_and_the_rest_are_cancelled(tmp_path: Any) -> None:
    async def main() -> None:
        async with MockAws() as aws, MockGcp() as gcp:
            file = FileNotice(tmp_path / "absent", poll_interval_s=POLL)
            sources = [file, make_source("aws", aws.url), make_source("gcp", gcp.url)]
            racing = asyncio.create_task(first_notice(sources))
            await aws.wait_requests(2)
            await gcp.wait_requests(2)
            assert not racing.done()
            await gcp.set_preempted(True)
            notice = await asyncio.wait_for(racing, 10)
            assert notice is not None and notice.source == "gcp"
            assert not leftover_tasks(aws, gcp)
            aws_polls = aws.count()
            await asyncio.sleep(5 * POLL)  # cancelled sources stay quiet (an absence: needs time)
            assert aws.count() == aws_polls

    run(main)


def test_first_notice_stop_returns_none_and_leaves_no_tasks(tmp_path: Any) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        file = FileNotice(tmp_path / "absent", poll_interval_s=POLL)
        racing = asyncio.create_task(first_notice([file, SignalNotice(["SIGUSR2"])], stop=stop))
        await wait_until(lambda: file.statistics().polls >= 2)
        stop.set()
        assert await asyncio.wait_for(racing, 10) is None
        assert not leftover_tasks()
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL

    run(main)


def test_first_notice_cancelled_leaves_no_tasks(tmp_path: Any) -> None:
    async def main() -> None:
        file = FileNotice(tmp_path / "absent", poll_interval_s=POLL)
        racing = asyncio.create_task(first_notice([file]))
        await wait_until(lambda: file.statistics().polls >= 2)
        racing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await racing
        assert not leftover_tasks()

    run(main)


def test_first_notice_raises_a_broken_source_after_cancelling_others(tmp_path: Any) -> None:
    async def main() -> None:
        go = asyncio.Event()
        file = FileNotice(tmp_path / "absent", poll_interval_s=POLL)
        racing = asyncio.create_task(first_notice([file, Boom(go)]))
        await wait_until(lambda: file.statistics().polls >= 2)
        go.set()
        with pytest.raises(RuntimeError, match="misconfigured"):
            await asyncio.wait_for(racing, 10)
        assert not leftover_tasks()

    run(main)


# --------------------------------------------------------------------------- watcher


def _collector() -> tuple[list[PreemptionNotice], Callable[[PreemptionNotice], Awaitable[None]]]:
    seen: list[PreemptionNotice] = []

    async def on_notice(notice: PreemptionNotice) -> None:
        seen.append(notice)

    return seen, on_notice


def test_watcher_calls_back_once_and_reports_statistics(tmp_path: Any) -> None:
    path = tmp_path / "preempt"

    async def main() -> None:
        seen, on_notice = _collector()
        file = FileNotice(path, poll_interval_s=POLL)
        aws = AwsSpotNotice(base_url=refused_url(), poll_interval_s=POLL, http_timeout_s=1.0)
        async with NoticeWatcher([file, aws], on_notice) as watcher:
            await wait_until(lambda: watcher.statistics().errors >= 2)
            stats = watcher.statistics()
            assert stats.running and stats.notice is None
            assert stats.polls >= stats.errors >= 2
            assert stats.last_error is not None and stats.last_error.startswith("aws: ")
            assert set(stats.sources) == {"file", "aws"}
            _write_atomically(path, "60")
            notice = await asyncio.wait_for(watcher.wait(), 10)
            assert notice is not None and notice.source == "file"
            assert seen == [notice]
            stats = watcher.statistics()
            assert not stats.running and stats.notice == notice
            assert stats.callback_error is None
        assert not leftover_tasks()

    run(main)


def test_watcher_closed_before_notice_never_calls_back(tmp_path: Any) -> None:
    async def main() -> None:
        seen, on_notice = _collector()
        file = FileNotice(tmp_path / "absent", poll_interval_s=POLL)
        watcher = NoticeWatcher([file], on_notice)
        watcher.start()
        await wait_until(lambda: watcher.statistics().polls >= 2)
        await watcher.close()
        await watcher.close()  # idempotent
        assert await watcher.wait() is None
        assert seen == [] and not watcher.statistics().running
        assert not leftover_tasks()

    run(main)


def test_watcher_survives_a_failing_callback(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "preempt"
    path.write_text("")

    async def on_notice(notice: PreemptionNotice) -> None:
        raise ValueError("handler bug")

    async def main() -> None:
        async with NoticeWatcher([FileNotice(path, poll_interval_s=POLL)], on_notice) as watcher:
            notice = await asyncio.wait_for(watcher.wait(), 10)
            assert notice is not None
            assert watcher.statistics().callback_error == "ValueError('handler bug')"

    with caplog.at_level(logging.ERROR, "spotlight.runtime.notice"):
        run(main)
    assert any("notice callback failed" in r.getMessage() for r in caplog.records)


def test_watcher_acknowledges_azure_event() -> None:
    async def main() -> None:
        async with MockAzure() as az:
            az.set_events([preempt_event("vm-a", time.time() + 30, "E-9")])
            seen, on_notice = _collector()
            async with NoticeWatcher([make_source("azure", az.url)], on_notice) as watcher:
                assert await watcher.acknowledge() is False  # nothing to acknowledge yet
                await asyncio.wait_for(watcher.wait(), 10)
                assert await watcher.acknowledge() is True
            assert az.acked == ["E-9"] and len(seen) == 1

    run(main)
