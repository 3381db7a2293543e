"""A minimal HTTP/1.1 client on asyncio streams, for cloud metadata servers only.

Why not urllib in a thread: a metadata poll must be cancellable at once (the first
notice source to fire cancels the others, and GCP's hanging GET may be parked for a
minute), and a thread blocked in ``urlopen`` cannot be cancelled. Why not aiohttp:
it is not a dependency and these servers speak plain HTTP on a link-local address.

Scope: ``http://`` URLs, one request per connection (``Connection: close``), bodies
framed by ``Content-Length``, ``chunked`` or end of stream, capped in size. Every
failure becomes a :class:`MetadataError` whose ``kind`` is a short stable label
("timeout", "connection refused", "http 503", ...) so callers can rate-limit logs
per kind of failure rather than per poll.
"""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["HttpResponse", "MetadataError", "http_request", "validate_http_url"]

_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 1024 * 1024  # metadata answers are tiny; a huge one is a wrong server


class MetadataError(OSError):
    """A metadata request failed; ``kind`` names the failure for rate-limited logging."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete response: status code, headers (lower-cased names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def text(self) -> str:
        """The body as text; undecodable bytes are replaced, never raised on."""
        return self.body.decode("utf-8", errors="replace")


def validate_http_url(url: str, *, field: str) -> None:
    """Raise ``ValueError`` unless ``url`` is ``http://host[:port][/path]``."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(
            f"{field}={url!r} is not a plain http:// URL with a host "
            "(metadata servers speak plain HTTP on a link-local address, e.g. "
            "'http://169.254.169.254')"
        )
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"{field}={url!r} has a bad port: {exc}") from None


async def http_request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout_s: float,
) -> HttpResponse:
    """Send one request and read the whole response, all within ``timeout_s`` seconds.

    Raises :class:`MetadataError` for every network or protocol failure; never
    returns a partial response. Cancellation closes the connection at once.
    """
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme != "http" or not host:
        raise ValueError(f"not a plain http:// URL: {url!r}")
    port = parts.port or 80
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    lines = [
        f"{method} {target} HTTP/1.1",
        f"Host: {host}:{port}" if parts.port else f"Host: {host}",
        "Connection: close",
        "Accept: */*",
        "User-Agent: spotlight-notice",
    ]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port, limit=_MAX_HEADER_BYTES)
            writer.write(request)
            await writer.drain()
            return await _read_response(reader)
    except TimeoutError:
        raise MetadataError(
            "timeout", f"{method} {url}: no complete answer within {timeout_s:g} s"
        ) from None
    except ConnectionRefusedError:
        raise MetadataError("connection refused", f"{method} {url}: connection refused") from None
    except asyncio.IncompleteReadError:
        raise MetadataError(
            "connection closed", f"{method} {url}: connection closed before the answer was complete"
        ) from None
    except (asyncio.LimitOverrunError, ValueError) as exc:
        raise MetadataError("malformed http", f"{method} {url}: malformed HTTP: {exc}") from None
    except MetadataError as exc:
        raise MetadataError(exc.kind, f"{method} {url}: {exc.message}") from None
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        raise MetadataError(f"network error {name}", f"{method} {url}: {exc}") from None
    finally:
        if writer is not None:
            writer.close()


async def _read_response(reader: asyncio.StreamReader) -> HttpResponse:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise MetadataError("malformed http", f"bad status line {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise MetadataError("malformed http", f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()

    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        length = int(headers["content-length"])  # ValueError -> malformed http
        if not 0 <= length <= _MAX_BODY_BYTES:
            raise MetadataError("malformed http", f"unacceptable Content-Length {length}")
        body = await reader.readexactly(length)
    else:
        body = await reader.read(_MAX_BODY_BYTES + 1)
        while len(body) <= _MAX_BODY_BYTES:
            more = await reader.read(_MAX_BODY_BYTES + 1 - len(body))
            if not more:
                break
            body += more
        if len(body) > _MAX_BODY_BYTES:
            raise MetadataError("malformed http", f"body longer than {_MAX_BODY_BYTES} bytes")
    return HttpResponse(status=int(code), headers=headers, body=body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)  # ValueError -> malformed http
        if size < 0 or len(body) + size > _MAX_BODY_BYTES:
            raise MetadataError("malformed http", f"unacceptable chunk size {size}")
        if size == 0:
            # Trailers (rare) end with an empty line.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise MetadataError("malformed http", "chunk not followed by CRLF")
