"""Preemption notice sources: how a node learns it is about to be taken away.

Sources (each ``await source.wait()`` returns one :class:`PreemptionNotice`):

- :class:`SignalNotice`: SIGTERM (or other signals); deadline = now + grace.
- :class:`FileNotice`: a path that appears; may name the deadline.
- :class:`AwsSpotNotice`: EC2 IMDSv2 ``spot/instance-action`` (2 min notice).
- :class:`GcpNotice`: GCE metadata ``instance/preempted`` (30 s).
- :class:`AzureNotice`: Azure Scheduled Events ``Preempt`` (>= 30 s).

Which of them a spot node watches, and with what lead, follows its platform
(:data:`PLATFORMS`: GKE, Kubernetes, EKS, AWS, GCP, Azure; :func:`notice_config`).
Build them from a :class:`NoticeConfig`, wait for the first with
:func:`first_notice`, or run them in the background with :class:`NoticeWatcher`.
Transient failures (no metadata server, timeouts, malformed answers) are logged
once per kind and retried; they never produce a notice. No third-party imports:
this package is part of the runtime layer.
"""

from spotlight.runtime.notice._core import NoticeSource, PreemptionNotice, SourceStatistics
from spotlight.runtime.notice._http import MetadataError
from spotlight.runtime.notice.cloud import AwsSpotNotice, AzureNotice, GcpNotice
from spotlight.runtime.notice.config import SOURCE_NAMES, NoticeConfig, build_sources
from spotlight.runtime.notice.local import FileNotice, SignalNotice
from spotlight.runtime.notice.platforms import PLATFORMS, Platform, notice_config
from spotlight.runtime.notice.watch import NoticeWatcher, WatcherStatistics, first_notice

__all__ = [
    "PLATFORMS",
    "SOURCE_NAMES",
    "AwsSpotNotice",
    "AzureNotice",
    "FileNotice",
    "GcpNotice",
    "MetadataError",
    "NoticeConfig",
    "NoticeSource",
    "NoticeWatcher",
    "Platform",
    "PreemptionNotice",
    "SignalNotice",
    "SourceStatistics",
    "WatcherStatistics",
    "build_sources",
    "first_notice",
    "notice_config",
]
