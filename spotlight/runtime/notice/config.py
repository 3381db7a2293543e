"""One validated config for every notice source, and the factory that builds them."""

from __future__ import annotations

import os
from dataclasses import dataclass

from spotlight.runtime.notice._core import NoticeSource
from spotlight.runtime.notice._http import validate_http_url
from spotlight.runtime.notice.cloud import (
    AWS_METADATA_URL,
    AZURE_METADATA_URL,
    GCP_METADATA_URL,
    AwsSpotNotice,
    AzureNotice,
    GcpNotice,
)
from spotlight.runtime.notice.local import FileNotice, SignalNotice, parse_signal

__all__ = ["SOURCE_NAMES", "NoticeConfig", "build_sources"]

SOURCE_NAMES = ("signal", "file", "aws", "gcp", "azure")


@dataclass(frozen=True, kw_only=True)
class NoticeConfig:
    """Which preemption notice sources to watch, and how.

    Every field is checked on construction; a setting for a source that is not
    selected is harmless (so one config file can serve every cloud).
    """

    sources: tuple[str, ...] = ("signal",)
    """Any of "signal", "file", "aws", "gcp", "azure"; the first to fire wins."""
    poll_interval_s: float = 5.0
    """Seconds between polls of the file and the metadata servers (AWS recommends 5)."""
    http_timeout_s: float = 2.0
    """Limit for one metadata request, connect to last byte."""
    grace_s: float = 30.0
    """Lead time assumed when a notice carries no deadline (signal; file without one)."""
    log_repeat_s: float = 300.0
    """A repeated error of the same kind is logged at most this often."""
    signals: tuple[str, ...] = ("SIGTERM",)
    """Signals that mean "you are being preempted" for the "signal" source."""
    file_path: str | None = None
    """Path watched by the "file" source (required when it is selected)."""
    aws_base_url: str = AWS_METADATA_URL
    """EC2 instance metadata service (IMDSv2); tests point this at a loopback mock."""
    aws_token_ttl_s: int = 21600
    """IMDSv2 session token lifetime, 1..21600 s; renewed before it expires."""
    gcp_base_url: str = GCP_METADATA_URL
    """GCE metadata server (what metadata.google.internal resolves to)."""
    gcp_lead_s: float = 30.0
    """GCE gives 30 s from when instance/preempted turns TRUE."""
    gcp_wait_for_change: bool = False
    """Use hanging GETs (answered when the flag flips) instead of plain polls."""
    gcp_wait_timeout_s: int = 60
    """Longest a hanging GET is parked on the server."""
    azure_base_url: str = AZURE_METADATA_URL
    """Azure instance metadata service (Scheduled Events)."""
    azure_event_types: tuple[str, ...] = ("Preempt",)
    """Scheduled event types taken as a notice; add "Terminate" for scale-in."""
    azure_vm_name: str | None = None
    """This VM's name as Scheduled Events list it; None = read it from the metadata service."""

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in SOURCE_NAMES]
        if unknown:
            raise ValueError(
                f"unknown notice source(s) {unknown}; valid sources: {', '.join(SOURCE_NAMES)}"
            )
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"notice sources listed twice: {list(self.sources)}")
        for name in ("poll_interval_s", "http_timeout_s", "log_repeat_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value > 0):
                raise ValueError(f"{name}={value!r} must be a number > 0")
        for name in ("grace_s", "gcp_lead_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value >= 0):
                raise ValueError(f"{name}={value!r} must be a number >= 0")
        if not (isinstance(self.aws_token_ttl_s, int) and 1 <= self.aws_token_ttl_s <= 21600):
            raise ValueError(f"aws_token_ttl_s={self.aws_token_ttl_s!r} must be an int in 1..21600")
        if not (isinstance(self.gcp_wait_timeout_s, int) and self.gcp_wait_timeout_s >= 1):
            raise ValueError(f"gcp_wait_timeout_s={self.gcp_wait_timeout_s!r} must be an int >= 1")
        for sig in self.signals:
            parse_signal(sig)
        if "signal" in self.sources and not self.signals:
            raise ValueError("the signal source needs at least one signal, e.g. ('SIGTERM',)")
        if "file" in self.sources and not self.file_path:
            raise ValueError(
                "the file source needs file_path (the path whose appearance is the notice)"
            )
        for name in ("aws_base_url", "gcp_base_url", "azure_base_url"):
            validate_http_url(getattr(self, name), field=name)
        if not self.azure_event_types:
            raise ValueError(
                "azure_event_types must name at least one EventType, e.g. ('Preempt',)"
            )

    def build(self) -> list[NoticeSource]:
        """The configured sources, in the order of ``sources``."""
        return build_sources(self)


def build_sources(config: NoticeConfig) -> list[NoticeSource]:
    """Build the sources ``config.sources`` names, in that order."""
    poll = config.poll_interval_s
    repeat = config.log_repeat_s
    http_timeout = config.http_timeout_s
    out: list[NoticeSource] = []
    for name in config.sources:
        if name == "signal":
            out.append(SignalNotice(config.signals, grace_s=config.grace_s))
        elif name == "file":
            assert config.file_path is not None  # checked in __post_init__
            out.append(
                FileNotice(
                    os.fspath(config.file_path),
                    poll_interval_s=poll,
                    default_lead_s=config.grace_s,
                    log_repeat_s=repeat,
                )
            )
        elif name == "aws":
            out.append(
                AwsSpotNotice(
                    base_url=config.aws_base_url,
                    poll_interval_s=poll,
                    http_timeout_s=http_timeout,
                    token_ttl_s=config.aws_token_ttl_s,
                    log_repeat_s=repeat,
                )
            )
        elif name == "gcp":
            out.append(
                GcpNotice(
                    base_url=config.gcp_base_url,
                    poll_interval_s=poll,
                    http_timeout_s=http_timeout,
                    lead_s=config.gcp_lead_s,
                    wait_for_change=config.gcp_wait_for_change,
                    wait_timeout_s=config.gcp_wait_timeout_s,
                    log_repeat_s=repeat,
                )
            )
        elif name == "azure":
            out.append(
                AzureNotice(
                    base_url=config.azure_base_url,
                    poll_interval_s=poll,
                    http_timeout_s=http_timeout,
                    event_types=config.azure_event_types,
                    vm_name=config.azure_vm_name,
                    log_repeat_s=repeat,
                )
            )
        else:  # pragma: no cover - __post_init__ rejects unknown names
            raise AssertionError(name)
    return out
