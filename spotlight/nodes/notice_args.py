"""The notice flags of a spot node: which platform it runs on and how much lead it plans with.

``--platform P`` picks the notice sources and leads of P
(:data:`~spotlight.runtime.notice.PLATFORMS`, documented in docs/deploy.md);
``--notice-grace S`` overrides the seconds planned after a SIGTERM and ``--notice-lead S``
the lead of a metadata notice that carries no deadline (GCP). Without ``--platform`` the
node keeps its older contract: SIGTERM is a notice only when ``--notice-grace`` is given
(what the simulated pool's node command passes), else it leaves at once.
"""

from __future__ import annotations

import argparse

from spotlight.runtime.notice import PLATFORMS, NoticeSource, notice_config

__all__ = ["NoticeSetup", "add_notice_arguments", "check_notice_arguments", "notice_setup"]

NoticeSetup = tuple[list[NoticeSource], float]
"""The sources to watch and the lead assumed for a notice without a deadline."""


def add_notice_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--platform",
        choices=list(PLATFORMS),
        default=None,
        help="where this node runs, which sets its notice sources and lead: "
        + "; ".join(f"{p.name}: {_lead_text(p.name)}" for p in PLATFORMS.values())
        + " (unset: SIGTERM is a notice only with --notice-grace)",
    )
    parser.add_argument(
        "--notice-grace",
        type=float,
        default=None,
        help="SIGTERM is a preemption notice with this many seconds of lead (default: the "
        "platform's; with no --platform and no --notice-grace, SIGTERM leaves at once, "
        "without a preemption)",
    )
    parser.add_argument(
        "--notice-lead",
        type=float,
        default=None,
        help="lead of a metadata notice that carries no deadline (GCP's; default 30 s); "
        "AWS and Azure notices carry their own",
    )


def _lead_text(name: str) -> str:
    p = PLATFORMS[name]
    kinds = "+".join(p.sources)
    return f"{kinds}, {p.sigterm_grace_s:g} s after SIGTERM"


def notice_setup(args: argparse.Namespace) -> NoticeSetup | None:
    """The node's notice sources from its flags; None: SIGTERM just leaves (no notice)."""
    if args.platform is None and args.notice_grace is None:
        if args.notice_lead is not None:
            raise ValueError("--notice-lead needs --platform (gcp: the metadata notice's lead)")
        return None
    config = notice_config(
        args.platform or "generic", grace_s=args.notice_grace, lead_s=args.notice_lead
    )
    return config.build(), config.grace_s


def check_notice_arguments(args: argparse.Namespace) -> None:
    """SystemExit naming the bad flag, before the node starts anything."""
    for name in ("notice_grace", "notice_lead"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 0 seconds, got {value}")
    try:
        notice_setup(args)
    except ValueError as exc:
        raise SystemExit(f"spot node: {exc}") from None
