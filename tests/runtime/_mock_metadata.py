"""Loopback mock metadata servers for AWS (IMDSv2), GCP and Azure, with fault injection.

Each mock is a minimal HTTP/1.1 server (asyncio ``start_server``) on 127.0.0.1
and a port the OS picks. It speaks enough of the real protocol to be strict
about what the client must send (the IMDSv2 token and its TTL header,
``Metadata-Flavor: Google``, ``Metadata: true`` and the api-version) and
records every request, so tests wait on "the server saw N polls" instead of
sleeping. ``fault`` makes the notice endpoint misbehave:

=============  =============================================================
fault          answer
=============  =============================================================
malformed      200 with a body that is not valid JSON / not TRUE or FALSE
wrong-shape    200 with valid JSON of the wrong shape / a wrong value
http500        500 Internal Server Error
slow           nothing at all until the server closes (client must time out)
slow-body      headers and half the body, then nothing
garbage        bytes that are not HTTP, then close
close          close the connection without a word
huge-length    a Content-Length of 10 GB
=============  =============================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import parse_qs, urlsplit

FAULTS = (
    "malformed",
    "wrong-shape",
    "http500",
    "slow",
    "slow-body",
    "garbage",
    "close",
    "huge-length",
)

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def refused_url() -> str:
    """A loopback URL on which nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class MockHttpServer:
    """Base: parse requests, record them, answer via :meth:`route` or a fault."""

    notice_path = "/"
    malformed_body = b"{"
    wrong_shape_body = b"[]"

    def __init__(self, *, chunked: bool = False) -> None:
        self.requests: list[Request] = []
        self.fault: str | None = None
        self.chunked = chunked
        self._cond = asyncio.Condition()
        self._closing = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers))
        await self._server.wait_closed()

    def handler_tasks(self) -> set[asyncio.Task[None]]:
        """Connection handlers still running (tests exclude them when counting leftovers)."""
        return set(self._handlers)

    def count(self, path: str | None = None, method: str | None = None) -> int:
        path = path or self.notice_path
        return sum(
            1 for r in self.requests if r.path == path and (method is None or r.method == method)
        )

    async def wait_for(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Wait until ``predicate()`` holds; re-checked after every request."""
        async with asyncio.timeout(within), self._cond:
            await self._cond.wait_for(predicate)

    async def wait_requests(self, n: int, path: str | None = None, within: float = 10.0) -> None:
        """Wait until the server has seen ``n`` more requests on ``path`` from now."""
        target = self.count(path) + n
        await self.wait_for(lambda: self.count(path) >= target, within)

    async def route(self, req: Request) -> Response:
        raise NotImplementedError

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *hlines = head[:-4].decode("latin-1").split("\r\n")
            method, target, _ = line.split(" ", 2)
            headers = {}
            for h in hlines:
                k, _, v = h.partition(":")
                headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            parts = urlsplit(target)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            req = Request(method, parts.path, query, headers, body)
            self.requests.append(req)
            async with self._cond:
                self._cond.notify_all()
            if self.fault is not None and req.path == self.notice_path:
                await self._misbehave(writer)
            else:
                self._write(writer, await self.route(req))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client gave up (its timeout): fine for a mock
        finally:
            writer.close()
            self._handlers.discard(task)

    def _write(self, writer: asyncio.StreamWriter, resp: Response) -> None:
        head = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Other')}"]
        head += [f"{k}: {v}" for k, v in resp.headers.items()]
        head.append("Connection: close")
        if self.chunked:
            head.append("Transfer-Encoding: chunked")
            mid = len(resp.body) // 2
            chunks = [c for c in (resp.body[:mid], resp.body[mid:]) if c]
            payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        else:
            head.append(f"Content-Length: {len(resp.body)}")
            payload = resp.body
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)

    async def _misbehave(self, writer: asyncio.StreamWriter) -> None:
        fault = self.fault
        if fault == "malformed":
            self._write(writer, Response(200, self.malformed_body))
        elif fault == "wrong-shape":
            self._write(writer, Response(200, self.wrong_shape_body))
        elif fault == "http500":
            self._write(writer, Response(500, b"internal error"))
        elif fault == "slow":
            await self._closing.wait()
        elif fault == "slow-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)
            await writer.drain()
            await self._closing.wait()
        elif fault == "garbage":
            writer.write(b"\x00\xffSSH-2.0-not-http\r\n\r\n")
        elif fault == "close":
            pass
        elif fault == "huge-length":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\nabc")
        else:
            raise AssertionError(f"unknown fault {fault!r}; valid: {FAULTS}")


class MockAws(MockHttpServer):
    """IMDSv2: PUT /latest/api/token, then GET spot/instance-action with the token."""

    notice_path = "/latest/meta-data/spot/instance-action"
    token_path = "/latest/api/token"
    malformed_body = b'{"action": "terminate", "time": '
    wrong_shape_body = b'{"action": "explode", "time": "2026-01-01T00:00:00Z"}'

    def __init__(self, *, enforce_ttl: bool = True, **kw: bool) -> None:
        super().__init__(**kw)
        self.enforce_ttl = enforce_ttl
        self.action: dict[str, str] | None = None
        self.token_fault: int | None = None  # an HTTP status for the token PUT
        self.valid_tokens: dict[str, float] = {}  # token -> loop time it expires
        self.issued = 0
        self.unauthorized = 0

    def expire_tokens(self) -> None:
        self.valid_tokens.clear()

    async def route(self, req: Request) -> Response:
        now = asyncio.get_running_loop().time()
        if req.path == self.token_path:
            if req.method != "PUT":
                return Response(405)
            ttl = req.headers.get("x-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return Response(400, b"missing or invalid ttl")
            if self.token_fault is not None:
                return Response(self.token_fault, b"no token for you")
            self.issued += 1
            token = f"AQAEA-token-{self.issued}"
            self.valid_tokens[token] = now + int(ttl) if self.enforce_ttl else float("inf")
            return Response(200, token.encode(), {"X-Aws-Ec2-Metadata-Token-Ttl-Seconds": ttl})
        if req.path == self.notice_path:
            token = req.headers.get("x-aws-ec2-metadata-token", "")
            if self.valid_tokens.get(token, 0.0) <= now:
                self.unauthorized += 1
                return Response(401, b"")
            if self.action is None:
                return Response(404, b"<?xml version='1.0'?><html>404 - Not Found</html>")
            return Response(200, json.dumps(self.action).encode())
        return Response(404, b"not found")


class MockGcp(MockHttpServer):
    """GCE metadata ``instance/preempted`` with ETags and ``wait_for_change``."""

    notice_path = "/computeMetadata/v1/instance/preempted"
    malformed_body = b"MAYBE"
    wrong_shape_body = b'{"preempted": true}'

    def __init__(self, **kw: bool) -> None:
        super().__init__(**kw)
        self.preempted = False
        self.version = 1
        self.hanging = 0  # hanging GETs currently parked
        self._changed = asyncio.Condition()

    async def set_preempted(self, value: bool) -> None:
        self.preempted = value
        self.version += 1
        async with self._changed:
            self._changed.notify_all()

    async def route(self, req: Request) -> Response:
        if req.headers.get("metadata-flavor") != "Google":
            return Response(403, b"Missing Metadata-Flavor:Google header.")
        if req.path != self.notice_path:
            return Response(404, b"not found")
        if req.query.get("wait_for_change") == "true":
            etag = req.query.get("last_etag")
            timeout = float(req.query.get("timeout_sec", "300"))
            if etag is None or etag == self._etag():
                self.hanging += 1
                async with self._cond:
                    self._cond.notify_all()
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout), self._changed:
                            await self._changed.wait_for(lambda: self._etag() != etag)
                finally:
                    self.hanging -= 1
        body = b"TRUE" if self.preempted else b"FALSE"
        return Response(200, body, {"ETag": self._etag(), "Metadata-Flavor": "Google"})

    def _etag(self) -> str:
        return f"e{self.version:08x}"


class MockAzure(MockHttpServer):
    """Azure Scheduled Events (GET and POST StartRequests) and ``compute/name``."""

    notice_path = "/metadata/scheduledevents"
    malformed_body = b'{"DocumentIncarnation": 1, "Events": ['
    wrong_shape_body = b'{"DocumentIncarnation": 1, "Events": {"EventType": "Preempt"}}'

    def __init__(self, *, vm_name: str | None = "vm-a", **kw: bool) -> None:
        super().__init__(**kw)
        self.vm_name = vm_name
        self.events: list[dict[str, object]] = []
        self.incarnation = 1
        self.acked: list[str] = []

    def set_events(self, events: list[dict[str, object]]) -> None:
        self.events = events
        self.incarnation += 1

    async def route(self, req: Request) -> Response:
        if req.headers.get("metadata", "").lower() != "true":
            return Response(
                400, b'{"error": "Bad request. Required metadata header not specified"}'
            )
        if req.path == "/metadata/instance/compute/name":
            if self.vm_name is None or req.query.get("format") != "text":
                return Response(404, b"not found")
            return Response(200, self.vm_name.encode())
        if req.path != self.notice_path:
            return Response(404, b"not found")
        if req.query.get("api-version") != "2020-07-01":
            return Response(400, b'{"error": "Bad request. api-version is invalid"}')
        if req.method == "POST":
            for start in json.loads(req.body)["StartRequests"]:
                self.acked.append(start["EventId"])
            return Response(200, b"")
        doc = {"DocumentIncarnation": self.incarnation, "Events": self.events}
        return Response(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})
