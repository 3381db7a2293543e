"""Preemption notice defaults per platform: the table, the spot node's flags, the launch
script and the documented table agree, and the GKE drain fits GKE's 15 s."""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
from pathlib import Path

import pytest

from spotlight.nodes.notice_args import (
    add_notice_arguments,
    check_notice_arguments,
    notice_setup,
)
from spotlight.runtime.notice import (
    PLATFORMS,
    AwsSpotNotice,
    GcpNotice,
    Platform,
    SignalNotice,
    notice_config,
)

REPO = Path(__file__).resolve().parent.parent
SPOT = REPO / "scripts" / "launch_spot.sh"
ONDEMAND = REPO / "scripts" / "launch_ondemand.sh"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_notice_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_table_has_the_platforms_leads_and_each_drain_fits_its_kill_delay() -> None:
    from spotlight.nodes.spot import _EXIT_MARGIN_S

    assert PLATFORMS["gke"].kill_after_s == 15.0  # GKE: SIGTERM to SIGKILL on a spot VM
    assert PLATFORMS["aws"].metadata_lead_s == 120.0 and "aws" in PLATFORMS["aws"].sources
    assert PLATFORMS["gcp"].metadata_lead_s == 30.0 and "gcp" in PLATFORMS["gcp"].sources
    for p in PLATFORMS.values():
        assert "signal" in p.sources, p.name  # SIGTERM is always a notice too
        if p.kill_after_s is not None:  # planned lead + exit margin + 2 s of slack fit
            assert p.sigterm_grace_s + _EXIT_MARGIN_S + 2.0 <= p.kill_after_s, p.name
    # the default fits the shortest known kill delay
    shortest = min(p.kill_after_s for p in PLATFORMS.values() if p.kill_after_s is not None)
    assert PLATFORMS["generic"].sigterm_grace_s + _EXIT_MARGIN_S < shortest
    with pytest.raises(ValueError, match="does not fit"):
        Platform(name="x", sources=("signal",), sigterm_grace_s=20.0, kill_after_s=15.0,
                 metadata_lead_s=None, why="")  # fmt: skip


def test_a_node_builds_its_platforms_sources_and_the_overrides_win() -> None:
    assert notice_setup(_args()) is None  # no flags: SIGTERM just leaves (the old contract)
    sources, lead = notice_setup(_args("--platform", "gke")) or ([], 0.0)
    assert lead == 12.0 and [type(s) for s in sources] == [SignalNotice]
    sources, lead = notice_setup(_args("--platform", "aws")) or ([], 0.0)
    assert [type(s) for s in sources] == [AwsSpotNotice, SignalNotice] and lead == 12.0
    sources, lead = notice_setup(_args("--platform", "gcp", "--notice-lead", "20")) or ([], 0.0)
    gcp = sources[0]
    assert isinstance(gcp, GcpNotice) and gcp.lead_s == 20.0 and lead == 25.0
    _, lead = notice_setup(_args("--platform", "gke", "--notice-grace", "5")) or ([], 0.0)
    assert lead == 5.0
    _, lead = notice_setup(_args("--notice-grace", "3")) or ([], 0.0)  # the simulated pool's
    assert lead == 3.0
    with pytest.raises(ValueError, match="--notice-lead needs --platform"):
        notice_setup(_args("--notice-lead", "9"))
    # the node's main checks them before it starts anything
    with pytest.raises(SystemExit, match="--notice-grace must be >= 0 seconds, got -1"):
        check_notice_arguments(_args("--platform", "gke", "--notice-grace", "-1"))
    with pytest.raises(SystemExit, match="spot node: --notice-lead needs --platform"):
        check_notice_arguments(_args("--notice-lead", "9"))
    check_notice_arguments(_args("--platform", "aws"))
    with pytest.raises(ValueError, match="unknown platform 'gce'; valid: generic, gke"):
        notice_config("gce")


def test_the_launch_script_knows_the_same_platforms_and_passes_them_on() -> None:
    proc = subprocess.run([str(SPOT), "--coordinator", "tcp://127.0.0.1:1", "--platform", "x"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    listed = re.search(r"--platform must be one of: (.+); got 'x'", proc.stderr)
    assert proc.returncode == 2 and listed is not None, proc.stderr
    assert listed.group(1).split(", ") == list(PLATFORMS)
    dry = subprocess.run(
        [str(SPOT), "--coordinator", "tcp://127.0.0.1:1", "--dry-run", "--platform", "gcp",
         "--notice-lead", "20"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert "--platform gcp" in dry and "--notice-lead 20" in dry and "--notice-grace" not in dry
    help_text = subprocess.run([str(SPOT), "--help"], capture_output=True, text=True,
                               timeout=30, check=True).stdout  # fmt: skip
    for p in PLATFORMS.values():
        assert re.search(rf"^\s+{p.name}\s+.*{p.sigterm_grace_s:g} s", help_text, re.M), p.name


def test_the_documented_table_is_the_code_table() -> None:
    page = (REPO / "docs" / "deploy.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", page, re.M)}
    for p in PLATFORMS.values():
        row = rows.get(p.name)
        assert row is not None, f"docs/deploy.md has no row for platform {p.name}"
        cells = [c.strip() for c in row.strip("|").split("|")]
        kill = "unknown" if p.kill_after_s is None else f"{p.kill_after_s:g} s"
        assert cells[2:4] == [kill, f"{p.sigterm_grace_s:g} s"], row


def test_a_coordinator_that_cannot_be_reached_fails_with_what_to_check() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.run(
        [str(SPOT), "--coordinator", f"tcp://127.0.0.1:{port}", "--wait", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"cannot reach the coordinator at tcp://127.0.0.1:{port} after 1 s" in proc.stderr
    assert "nothing accepts connections" in proc.stderr and "--listen 0.0.0.0" in proc.stderr


def test_the_launchers_refuse_to_serve_or_join_beyond_loopback_without_the_token() -> None:
    env = {"PATH": "/usr/bin:/bin", "SPOTLIGHT_DRY_RUN": "1"}
    proc = subprocess.run([str(ONDEMAND), "--", "--listen", "0.0.0.0:29600"], env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 2 and "needs the cluster token" in proc.stderr
    ok = subprocess.run([str(ONDEMAND), "--", "--listen=127.0.0.1:0"], env=env,
                        capture_output=True, text=True, timeout=30)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    proc = subprocess.run([str(SPOT), "--coordinator", "tcp://10.9.9.9:29600"], env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 2 and "needs the cluster token" in proc.stderr
    with_token = {**env, "SPOTLIGHT_CLUSTER_TOKEN": "x"}
    ok = subprocess.run([str(SPOT), "--coordinator", "tcp://10.9.9.9:29600"], env=with_token,
                        capture_output=True, text=True, timeout=30)  # fmt: skip
    assert ok.returncode == 0 and "--coordinator tcp://10.9.9.9:29600" in ok.stdout
