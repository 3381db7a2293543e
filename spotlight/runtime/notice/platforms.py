"""How much notice each platform gives a spot node, and where the notice comes from.

Why a table: the same spot node runs under GKE (the kubelet sends SIGTERM and kills 15 s
later), on EKS (a node termination handler or Karpenter drains the node on EC2's 2-minute
warning: SIGTERM, then the pod's own grace period), on bare cloud VMs (the metadata server
says it first: AWS 120 s ahead, GCP 30 s) or on one's own machines. A drain planned for 25 s
on GKE is killed half-way; one planned for 12 s on AWS throws away 100 s of work. The node
picks its sources and its lead from ``--platform`` (``scripts/launch_spot.sh --platform``),
and ``--notice-grace`` / ``--notice-lead`` override the numbers.

===========  =====================  ===========  ==========  ==================================
platform     notice sources          SIGTERM to  lead the    why
                                    SIGKILL     node plans
===========  =====================  ===========  ==========  ==================================
generic      SIGTERM                unknown     12 s        fits the shortest below (GKE)
gke          SIGTERM                15 s        12 s        GKE spot nodes: 15 s for pods
k8s          SIGTERM                30 s        25 s        terminationGracePeriodSeconds
eks          SIGTERM                120 s       100 s       NTH/Karpenter drain on EC2's ITN
aws          IMDS + SIGTERM         120 s       notice's    IMDSv2 spot/instance-action
gcp          metadata + SIGTERM     30 s        30 s / 25   instance/preempted, ACPI soft-off
azure        Sched. Events+SIGTERM  30 s        notice's    Preempt event's NotBefore
===========  =====================  ===========  ==========  ==================================

The lead a node plans with is what :class:`~spotlight.runtime.notice.SignalNotice` gets as
its grace (SIGTERM) and what GCP's metadata notice, which carries no time, adds to when it
was seen; AWS's and Azure's notices carry their own deadline. The node leaves a further
0.3 s before that deadline (``spotlight/nodes/spot.py``), so a ``gke`` node is gone by
about 11.7 s after SIGTERM, inside GKE's 15 s.
"""

from __future__ import annotations

from dataclasses import dataclass

from spotlight.runtime.notice.config import NoticeConfig

__all__ = ["PLATFORMS", "Platform", "notice_config"]


@dataclass(frozen=True, kw_only=True)
class Platform:
    """One row of the table in the module docstring."""

    name: str
    sources: tuple[str, ...]
    """Notice sources to watch (:data:`~spotlight.runtime.notice.SOURCE_NAMES`)."""
    sigterm_grace_s: float
    """Seconds the node plans to have after a SIGTERM (its drain deadline)."""
    kill_after_s: float | None
    """Seconds the platform waits after SIGTERM before SIGKILL; None: not known."""
    metadata_lead_s: float | None
    """Lead of the cloud's metadata notice (documentation for AWS and Azure, whose notices
    carry their deadline; the lead itself for GCP); None: no metadata source."""
    why: str

    def __post_init__(self) -> None:
        if self.kill_after_s is not None and not self.sigterm_grace_s < self.kill_after_s:
            raise ValueError(
                f"platform {self.name}: a SIGTERM grace of {self.sigterm_grace_s} s does not fit "
                f"its {self.kill_after_s} s before SIGKILL"
            )


PLATFORMS: dict[str, Platform] = {
    p.name: p
    for p in (
        Platform(
            name="generic",
            sources=("signal",),
            sigterm_grace_s=12.0,
            kill_after_s=None,
            metadata_lead_s=None,
            why="SIGTERM only; the lead fits the shortest common kill delay (GKE's 15 s)",
        ),
        Platform(
            name="gke",
            sources=("signal",),
            sigterm_grace_s=12.0,
            kill_after_s=15.0,
            metadata_lead_s=None,
            why="GKE spot VMs: graceful node shutdown gives pods 15 s after SIGTERM",
        ),
        Platform(
            name="k8s",
            sources=("signal",),
            sigterm_grace_s=25.0,
            kill_after_s=30.0,
            metadata_lead_s=None,
            why="Kubernetes' default terminationGracePeriodSeconds (30 s)",
        ),
        Platform(
            name="eks",
            sources=("signal",),
            sigterm_grace_s=100.0,
            kill_after_s=120.0,
            metadata_lead_s=None,
            why="EKS with the AWS node termination handler or Karpenter: the node is drained "
            "on EC2's 2-minute interruption notice and the pod gets its own grace period "
            "(give the pod terminationGracePeriodSeconds: 115, docs/deploy.md)",
        ),
        Platform(
            name="aws",
            sources=("aws", "signal"),
            sigterm_grace_s=12.0,
            kill_after_s=120.0,
            metadata_lead_s=120.0,
            why="EC2 VMs: IMDSv2 spot/instance-action 2 minutes ahead, with its time; "
            "SIGTERM at shutdown is the fallback",
        ),
        Platform(
            name="gcp",
            sources=("gcp", "signal"),
            sigterm_grace_s=25.0,
            kill_after_s=30.0,
            metadata_lead_s=30.0,
            why="GCE spot/preemptible VMs: instance/preempted turns TRUE and the ACPI "
            "soft-off starts 30 s before the hard stop",
        ),
        Platform(
            name="azure",
            sources=("azure", "signal"),
            sigterm_grace_s=25.0,
            kill_after_s=30.0,
            metadata_lead_s=30.0,
            why="Azure spot VMs: Scheduled Events Preempt at least 30 s ahead (NotBefore)",
        ),
    )
}


def notice_config(
    platform: str,
    *,
    grace_s: float | None = None,
    lead_s: float | None = None,
) -> NoticeConfig:
    """The notice sources of ``platform``; ``grace_s`` overrides its SIGTERM lead, ``lead_s``
    the lead of a metadata notice that carries no deadline (GCP). ValueError for an
    unknown platform, naming the valid ones."""
    try:
        p = PLATFORMS[platform]
    except KeyError:
        raise ValueError(f"unknown platform {platform!r}; valid: {', '.join(PLATFORMS)}") from None
    grace = p.sigterm_grace_s if grace_s is None else grace_s
    lead = p.metadata_lead_s if lead_s is None else lead_s
    return NoticeConfig(
        sources=p.sources,
        grace_s=grace,
        gcp_lead_s=30.0 if lead is None else lead,
    )
