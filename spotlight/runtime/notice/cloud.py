"""Notices from the clouds' instance metadata services.

=====  ==============================================  ========  =====================
cloud  endpoint (link-local, plain HTTP)               lead      deadline we report
=====  ==============================================  ========  =====================
AWS    GET /latest/meta-data/spot/instance-action      2 min     the JSON's ``time``
       (IMDSv2: PUT /latest/api/token first)
GCP    GET /computeMetadata/v1/instance/preempted      30 s      seen + ``lead_s``
Azure  GET /metadata/scheduledevents                   >= 30 s   the event's ``NotBefore``
=====  ==============================================  ========  =====================

All three are polled (AWS recommends every 5 s); GCP can instead park a hanging
GET (``wait_for_change``) that returns as soon as the flag flips. Off the cloud
(or on another one) these addresses refuse, time out or answer 404/400: that is
logged once per kind of error and polled again, never a notice. Only a
well-formed positive answer is a notice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from spotlight.runtime.notice._core import PollingSource, PreemptionNotice, make_notice
from spotlight.runtime.notice._core import parse_timestamp as _parse_time
from spotlight.runtime.notice._http import MetadataError, http_request, validate_http_url

__all__ = [
    "AWS_METADATA_URL",
    "AZURE_METADATA_URL",
    "GCP_METADATA_URL",
    "AwsSpotNotice",
    "AzureNotice",
    "GcpNotice",
]

log = logging.getLogger("spotlight.runtime.notice")

AWS_METADATA_URL = "http://169.254.169.254"
# metadata.google.internal resolves here; the address avoids a DNS lookup per poll.
GCP_METADATA_URL = "http://169.254.169.254"
AZURE_METADATA_URL = "http://169.254.169.254"


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetadataError("malformed json", f"{what}: not JSON ({exc}): {body[:80]!r}") from None


def _unexpected_status(status: int, what: str, body: bytes) -> MetadataError:
    return MetadataError(f"http {status}", f"{what}: unexpected HTTP {status}: {body[:80]!r}")


class _HttpSource(PollingSource):
    def __init__(
        self,
        *,
        base_url: str,
        poll_interval_s: float,
        http_timeout_s: float,
        log_repeat_s: float,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(poll_interval_s=poll_interval_s, log_repeat_s=log_repeat_s)
        validate_http_url(base_url, field=f"{self.name} base_url")
        if not http_timeout_s > 0:
            raise ValueError(f"http_timeout_s={http_timeout_s!r} must be > 0")
        self.base_url = base_url.rstrip("/")
        self.http_timeout_s = http_timeout_s
        self._clock = clock


class AwsSpotNotice(_HttpSource):
    """EC2 spot interruption via IMDSv2 ``spot/instance-action``.

    Each poll sends the session token obtained with ``PUT /latest/api/token``
    (TTL ``token_ttl_s``, 1..21600). The token is renewed shortly before it
    expires and whenever a GET answers 401. ``404`` means no interruption is
    scheduled; ``200`` with ``{"action": "terminate"|"stop"|"hibernate",
    "time": "2026-11-23T13:20:00Z"}`` is the notice (about 2 minutes ahead).
    A well-formed action whose ``time`` cannot be parsed is still a notice,
    with the deadline unknown.

    In a container with the default IMDS hop limit of 1 the token PUT never
    gets an answer: that shows up as a logged "timeout" on ``api/token``.
    """

    name = "aws"
    ACTIONS = ("terminate", "stop", "hibernate")

    def __init__(
        self,
        *,
        base_url: str = AWS_METADATA_URL,
        poll_interval_s: float = 5.0,
        http_timeout_s: float = 2.0,
        token_ttl_s: int = 21600,
        log_repeat_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            base_url=base_url,
            poll_interval_s=poll_interval_s,
            http_timeout_s=http_timeout_s,
            log_repeat_s=log_repeat_s,
            clock=clock,
        )
        if not (isinstance(token_ttl_s, int) and 1 <= token_ttl_s <= 21600):
            raise ValueError(f"token_ttl_s={token_ttl_s!r} must be an int in 1..21600 (AWS limit)")
        self.token_ttl_s = token_ttl_s
        self._token: str | None = None
        self._token_renew_at = 0.0  # time.monotonic()
        self.tokens_fetched = 0

    async def _fetch_token(self) -> str:
        url = f"{self.base_url}/latest/api/token"
        fetched_at = time.monotonic()
        try:
            resp = await http_request(
                "PUT",
                url,
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self.token_ttl_s)},
                timeout_s=self.http_timeout_s,
            )
        except MetadataError as exc:
            if exc.kind != "timeout":
                raise
            hint = " (in a container, an IMDS hop limit of 1 drops this answer)"
            raise MetadataError(exc.kind, exc.message + hint) from None
        token = resp.text().strip()
        if resp.status != 200:
            raise _unexpected_status(resp.status, "IMDSv2 token", resp.body)
        if not token or any(c.isspace() for c in token) or len(token) > 4096:
            raise MetadataError(
                "malformed token", f"IMDSv2 token: unusable token {resp.body[:40]!r}"
            )
        self.tokens_fetched += 1
        self._token = token
        # Renew with a margin (10% of the TTL, at most a minute) so no GET carries a stale one.
        self._token_renew_at = fetched_at + self.token_ttl_s - min(60.0, 0.1 * self.token_ttl_s)
        return token

    async def _get_action(self, token: str) -> Any:
        url = f"{self.base_url}/latest/meta-data/spot/instance-action"
        return await http_request(
            "GET", url, headers={"X-aws-ec2-metadata-token": token}, timeout_s=self.http_timeout_s
        )

    async def poll(self) -> PreemptionNotice | None:
        token = self._token
        if token is None or time.monotonic() >= self._token_renew_at:
            self._token = None
            token = await self._fetch_token()
        resp = await self._get_action(token)
        if resp.status == 401:  # token expired or revoked: renew once, then ask again
            self._token = None
            token = await self._fetch_token()
            resp = await self._get_action(token)
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise _unexpected_status(resp.status, "spot/instance-action", resp.body)
        doc = _json(resp.body, "spot/instance-action")
        action = doc.get("action") if isinstance(doc, dict) else None
        if action not in self.ACTIONS:
            raise MetadataError(
                "malformed instance-action",
                f"spot/instance-action: no valid action in {resp.body[:120]!r}",
            )
        now = self._clock()
        when = doc.get("time")
        try:
            deadline: float | None = _parse_time(when) if isinstance(when, str) else None
        except ValueError:
            deadline = None
        if deadline is None:
            detail = f"EC2 spot instance-action {action!r} with unparsable time {when!r}"
        else:
            detail = f"EC2 spot instance-action {action!r} at {when}"
        return make_notice(source=self.name, received_at=now, deadline=deadline, detail=detail)


class GcpNotice(_HttpSource):
    """GCE preemption/Spot VM via metadata ``instance/preempted`` ("TRUE"/"FALSE").

    The flag carries no time; GCE gives 30 s from when it flips, so the deadline
    is ``seen + lead_s`` (lead_s defaults to 30; lower it by your poll interval
    to be conservative). With ``wait_for_change=True`` each request after the
    first is a hanging GET (``?wait_for_change=true&last_etag=..&timeout_sec=``)
    answered as soon as the value changes, which removes the polling delay; a
    server that answers it at once still gets at most one request per
    ``poll_interval_s``. Requests carry ``Metadata-Flavor: Google`` (required).
    """

    name = "gcp"

    def __init__(
        self,
        *,
        base_url: str = GCP_METADATA_URL,
        poll_interval_s: float = 5.0,
        http_timeout_s: float = 2.0,
        lead_s: float = 30.0,
        wait_for_change: bool = False,
        wait_timeout_s: int = 60,
        log_repeat_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            base_url=base_url,
            poll_interval_s=poll_interval_s,
            http_timeout_s=http_timeout_s,
            log_repeat_s=log_repeat_s,
            clock=clock,
        )
        if not lead_s >= 0:
            raise ValueError(f"lead_s={lead_s!r} must be >= 0")
        if not (isinstance(wait_timeout_s, int) and wait_timeout_s >= 1):
            raise ValueError(f"wait_timeout_s={wait_timeout_s!r} must be an int >= 1")
        self.lead_s = lead_s
        self.wait_for_change = wait_for_change
        self.wait_timeout_s = wait_timeout_s
        self._etag: str | None = None
        self._hung = False  # whether the last request was a hanging GET

    def next_poll_delay(self, elapsed: float) -> float:
        if self.wait_for_change and self._etag is not None and not self._hung:
            return 0.0  # just learnt the ETag: park the hanging GET at once
        return super().next_poll_delay(elapsed)

    async def poll(self) -> PreemptionNotice | None:
        url = f"{self.base_url}/computeMetadata/v1/instance/preempted"
        timeout = self.http_timeout_s
        etag = self._etag if self.wait_for_change else None
        self._hung = etag is not None
        if etag is not None:
            url += (
                f"?wait_for_change=true&last_etag={quote(etag, safe='')}"
                f"&timeout_sec={self.wait_timeout_s}"
            )
            timeout += self.wait_timeout_s
        resp = await http_request(
            "GET", url, headers={"Metadata-Flavor": "Google"}, timeout_s=timeout
        )
        if resp.status != 200:
            self._etag = None
            raise _unexpected_status(resp.status, "instance/preempted", resp.body)
        value = resp.text().strip().upper()
        if value == "FALSE":
            self._etag = resp.headers.get("etag") or None
            return None
        if value != "TRUE":
            self._etag = None
            raise MetadataError(
                "malformed preempted",
                f"instance/preempted: expected TRUE/FALSE, got {resp.body[:80]!r}",
            )
        now = self._clock()
        return make_notice(
            source=self.name,
            received_at=now,
            deadline=now + self.lead_s,
            detail=f"GCE instance/preempted is TRUE; deadline assumed {self.lead_s:g} s later",
        )


class AzureNotice(_HttpSource):
    """Azure Scheduled Events: an event of type ``Preempt`` (Spot eviction).

    Polls ``GET /metadata/scheduledevents?api-version=2020-07-01`` with header
    ``Metadata: true``. An event counts when its ``EventType`` is in
    ``event_types`` (default ``("Preempt",)``; add ``"Terminate"`` to treat a
    scale-in as a notice) and its ``Resources`` name this VM. Scheduled events
    are shown to every VM of an availability set / scale-set placement group,
    so the VM's own name matters: pass ``vm_name``, or leave it ``None`` to read
    it from ``/metadata/instance/compute/name`` (until that succeeds, any
    matching event counts, and a warning says so). The deadline is the event's
    ``NotBefore`` (RFC 1123); an event already ``Started`` has none and is
    clamped to now.

    Acknowledging is optional: :meth:`acknowledge` POSTs ``{"StartRequests":
    [{"EventId": ...}]}``, which lets Azure go ahead before ``NotBefore``. Call
    it only once the node is ready to go (snapshots committed, leases returned);
    never acknowledging simply uses the whole notice window. The first request
    on a VM can take long while Azure enables the service; it is retried.
    """

    name = "azure"
    API_VERSION = "2020-07-01"
    NAME_API_VERSION = "2021-02-01"

    def __init__(
        self,
        *,
        base_url: str = AZURE_METADATA_URL,
        poll_interval_s: float = 5.0,
        http_timeout_s: float = 2.0,
        event_types: tuple[str, ...] = ("Preempt",),
        vm_name: str | None = None,
        log_repeat_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            base_url=base_url,
            poll_interval_s=poll_interval_s,
            http_timeout_s=http_timeout_s,
            log_repeat_s=log_repeat_s,
            clock=clock,
        )
        if not event_types:
            raise ValueError(
                "event_types must name at least one Azure EventType, e.g. ('Preempt',)"
            )
        self.event_types = tuple(event_types)
        self.vm_name = vm_name
        self._warned_unfiltered = False

    @property
    def _events_url(self) -> str:
        return f"{self.base_url}/metadata/scheduledevents?api-version={self.API_VERSION}"

    async def _discover_vm_name(self) -> None:
        url = (
            f"{self.base_url}/metadata/instance/compute/name"
            f"?api-version={self.NAME_API_VERSION}&format=text"
        )
        try:
            resp = await http_request(
                "GET", url, headers={"Metadata": "true"}, timeout_s=self.http_timeout_s
            )
        except MetadataError:
            return  # the events request below reports the same trouble; try again next poll
        name = resp.text().strip()
        if resp.status == 200 and name and len(name) < 256 and not any(c.isspace() for c in name):
            self.vm_name = name
            log.info("notice source azure: this VM is %r", name)

    async def poll(self) -> PreemptionNotice | None:
        if self.vm_name is None:
            await self._discover_vm_name()
        resp = await http_request(
            "GET", self._events_url, headers={"Metadata": "true"}, timeout_s=self.http_timeout_s
        )
        if resp.status != 200:
            raise _unexpected_status(resp.status, "scheduledevents", resp.body)
        doc = _json(resp.body, "scheduledevents")
        events = doc.get("Events") if isinstance(doc, dict) else None
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise MetadataError(
                "malformed scheduledevents",
                f"scheduledevents: no Events list in {resp.body[:120]!r}",
            )
        for event in events:
            if event.get("EventType") not in self.event_types or not self._concerns_us(event):
                continue
            return self._notice_from(event)
        return None

    def _concerns_us(self, event: dict[str, Any]) -> bool:
        resources = event.get("Resources")
        if not isinstance(resources, list) or not resources:
            return True  # unnamed: assume it may be us rather than miss it
        if self.vm_name is None:
            if not self._warned_unfiltered:
                self._warned_unfiltered = True
                log.warning(
                    "notice source azure: VM name unknown, taking a %s event for %s as ours",
                    event.get("EventType"),
                    resources,
                )
            return True
        return self.vm_name in resources

    def _notice_from(self, event: dict[str, Any]) -> PreemptionNotice:
        now = self._clock()
        kind = event.get("EventType")
        event_id = event.get("EventId")
        status = event.get("EventStatus")
        not_before = event.get("NotBefore")
        deadline: float | None
        if isinstance(not_before, str) and not_before.strip():
            try:
                deadline = _parse_time(not_before)
                detail = f"Azure {kind} event {event_id} ({status}), NotBefore {not_before}"
            except ValueError:
                deadline = None
                detail = f"Azure {kind} event {event_id} ({status}) with unparsable NotBefore {not_before!r}"
        else:  # "Started" events have an empty NotBefore: it is happening now
            deadline = now
            detail = f"Azure {kind} event {event_id} ({status}) has no NotBefore: leave now"
        return make_notice(
            source=self.name,
            received_at=now,
            deadline=deadline,
            detail=detail,
            event_id=event_id if isinstance(event_id, str) else None,
        )

    async def acknowledge(self, notice: PreemptionNotice) -> None:
        """Approve the event so Azure may proceed before ``NotBefore`` (optional).

        Raises ``ValueError`` for a notice without an Azure event id and
        :class:`MetadataError` when the POST fails (the caller may retry).
        """
        if notice.source != self.name or not notice.event_id:
            raise ValueError(f"not an Azure scheduled-event notice: {notice!r}")
        body = json.dumps({"StartRequests": [{"EventId": notice.event_id}]}).encode()
        resp = await http_request(
            "POST",
            self._events_url,
            headers={"Metadata": "true", "Content-Type": "application/json"},
            body=body,
            timeout_s=self.http_timeout_s,
        )
        if not 200 <= resp.status < 300:
            raise _unexpected_status(resp.status, "scheduledevents StartRequests", resp.body)
        log.info("notice source azure: acknowledged event %s", notice.event_id)
