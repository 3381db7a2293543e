#!/usr/bin/env python
"""Soak: the whole system for a long time on real spot traces, with faults injected.

    python scripts/soak.py                      # >= 30 minutes (issue 21, section 4)
    python scripts/soak.py --short              # <= 3 minutes (the CI form: tests/test_soak.py)

What runs (one `spotlight run` at a time, its spot pool replaying a real trace):

    phase A  `spotlight run --seeds explored` on the AWS trace (32 p3 nodes, 11.4 h), capped
             to --cap live nodes (what 2 cores carry: SpotTrace.capped) and time-scaled to
             the phase; every removal announced with AWS's 120 s lead (trace seconds)
             ... then SIGKILL of the on-demand process (nothing runs in it: no checkpoint,
             no goodbye); its spot nodes and reward workers must leave by themselves
    phase B  the resume command (``resume_argv``: `spotlight run --resume RUN_DIR` today,
             `--resume auto` once that lands) on the GCP trace (64 A100 VMs, 26.5 h),
             capped and scaled the same way, with no notices (every loss silent); it runs to
             its time budget and writes report.json
    throughout  a random live spot node SIGKILLed every --kill-every-s (±50%); one node
             stalled with SIGSTOP for --stall-s, then SIGCONT; every process of the run
             (found by an environment marker all of them inherit) sampled for RSS every 1 s

What it checks (``benchmarks/results/soak.json``; the definitions are in the JSON too):
``samples_duplicated`` and ``samples_lost`` must be 0, and ``leftover_processes`` (marked
processes alive 15 s after the last run exited) must be 0; RSS of each process kind must not
grow beyond noise between the first and the last fifth of the soak.

Traces: ``traces/aws_p3_32node_bamboo.csv`` and ``traces/gcp_a100x1_us-east1-b_bamboo.csv``
(converted from the Bamboo artifact; see traces/README.md), or any two given with --traces.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from spotlight.actors.spot.trace import load_trace  # noqa: E402  (the repo on the path first)

MARK = "SPOTLIGHT_SOAK_ID"
"""Environment variable every process of the soak inherits: how they are found by PID."""
TRACES = (
    REPO / "traces" / "aws_p3_32node_bamboo.csv",
    REPO / "traces" / "gcp_a100x1_us-east1-b_bamboo.csv",
)
NOTICE_LEAD_S = (120.0, 0.0)
"""Phase A: AWS's two minutes before every removal; phase B: no notice at all."""
LEFTOVER_GRACE_S = 15.0


def resume_argv(run_dir: Path) -> list[str]:
    """THE resume command of the soak (the one place to change): `--resume RUN_DIR` now;
    switch to `--resume auto` (with whatever run-dir argument it takes) once
    `spotlight run --resume auto` is on main."""
    return ["--resume", str(run_dir)]


# ------------------------------------------------------------------------- processes


def _kind(cmdline: str) -> str:
    if "spotlight.nodes.spot" in cmdline:
        return "spot_node"
    if "reward_worker" in cmdline:
        return "reward_worker"
    if "sp_member" in cmdline or "sp_worker" in cmdline:
        return "sp_member"
    if "spotlight.cli" in cmdline and " run" in cmdline:
        return "ondemand"
    return "other"


def marked_processes(mark: str) -> dict[int, tuple[str, float]]:
    """``{pid: (kind, rss_mb)}`` of every live process carrying ``MARK=mark``."""
    out: dict[int, tuple[str, float]] = {}
    needle = f"{MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (entry / "status").read_text()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if "\nState:\tZ" in status:
            continue  # a zombie holds no memory; its parent reaps it
        rss_kb = next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
        )
        out[int(entry.name)] = (_kind(cmd), rss_kb / 1024)
    return out


class Soak:
    """The phases, the faults and the samples; see the module docstring."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.run_dir = work / "run"
        self.mark = uuid.uuid4().hex
        self.rng = random.Random(args.seed)
        self.rss: list[tuple[float, str, float]] = []  # (t, kind, rss_mb)
        self.events: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.stalled = False
        self.kills = 0

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO), MARK: self.mark}

    def _note(self, what: str, **fields: Any) -> None:
        rec = {"t_s": round(time.monotonic() - self.t0, 1), "event": what, **fields}
        self.events.append(rec)
        print(json.dumps(rec), flush=True)

    def trace_file(self, index: int, phase_s: float) -> tuple[Path, float]:
        """Phase ``index``'s trace: capped, its first --trace-hours, scaled into ``phase_s``."""
        trace = load_trace(self.args.traces[index])
        hours = self.args.trace_hours
        end = min(trace.end_s, hours * 3600) if hours else trace.end_s
        capped = trace.capped(self.args.cap, end_s=end, ending_only=True)
        path = self.work / f"trace{index}.csv"
        path.write_text(capped.to_csv())
        return path, max(1.0, end / phase_s)

    def launch(
        self, extra: list[str], index: int, trace_s: float, budget_s: float
    ) -> subprocess.Popen[bytes]:
        """`spotlight run` with trace ``index`` played over ``trace_s`` wall seconds."""
        trace, scale = self.trace_file(index, trace_s)
        cmd = [
            sys.executable, "-m", "spotlight.cli", "run", "--json", "--no-live",
            "--time-budget", f"{budget_s:.0f}",
            "--set", f"spot.trace={trace}", "--set", f"spot.time_scale={scale:.3f}",
            "--set", f"spot.notice_s={NOTICE_LEAD_S[index]:g}", *extra,
        ]  # fmt: skip
        log = (self.work / f"phase{index}.log").open("ab")
        self._note("launch", phase=index, time_scale=round(scale, 2), argv=cmd[3:])
        return subprocess.Popen(cmd, cwd=REPO, env=self._env(), stdout=log, stderr=log)

    def tick(self, next_kill: float, stall_at: float) -> float:
        """Sample RSS; inject the faults that are due. Returns the next kill time."""
        now = time.monotonic() - self.t0
        procs = marked_processes(self.mark)
        self.rss.extend((now, kind, rss) for kind, rss in procs.values())
        nodes = [pid for pid, (kind, _) in procs.items() if kind == "spot_node"]
        if now >= next_kill:
            if nodes:
                victim = self.rng.choice(nodes)
                _signal_group(victim, signal.SIGKILL)
                self.kills += 1
                self._note("sigkill_spot_node", pid=victim)
            gap = self.args.kill_every_s
            next_kill = now + self.rng.uniform(0.5 * gap, 1.5 * gap)
        if not self.stalled and now >= stall_at and nodes:
            victim = self.rng.choice(nodes)
            self.stalled = True
            _signal_group(victim, signal.SIGSTOP)
            self._note("sigstop_spot_node", pid=victim, for_s=self.args.stall_s)
            time.sleep(self.args.stall_s)  # the stall itself is what is being injected
            _signal_group(victim, signal.SIGCONT)
            self._note("sigcont_spot_node", pid=victim)
        return next_kill

    def run(self) -> dict[str, Any]:
        a = self.args
        total = a.minutes * 60
        phase_a = total * 0.45
        common = ["--seeds", "explored", "--iterations", "100000", *a.set_args]
        next_kill = a.kill_every_s
        stall_at = total * 0.3
        first = self.launch(["--run-dir", str(self.run_dir), *common], 0, phase_a, total)
        checkpoint = self.run_dir / "checkpoint" / "state.json"
        while time.monotonic() - self.t0 < phase_a or not checkpoint.exists():
            if first.poll() is not None:
                raise SystemExit(f"phase A ended early ({first.returncode}); see phase0.log")
            if time.monotonic() - self.t0 > phase_a + 300:
                raise SystemExit("phase A wrote no checkpoint in time; see phase0.log")
            next_kill = self.tick(next_kill, stall_at)
            time.sleep(1.0)
        done_before = _iterations(self.run_dir)
        os.kill(first.pid, signal.SIGKILL)  # the on-demand process only
        first.wait()
        self._note("sigkill_ondemand", pid=first.pid, iterations=done_before)
        left = total - (time.monotonic() - self.t0)
        left = max(30.0, left)
        second = self.launch([*resume_argv(self.run_dir), *a.set_args], 1, left, left)
        hard_stop = time.monotonic() + left + a.end_grace_s
        while second.poll() is None:
            if time.monotonic() > hard_stop:
                self._note("phase_b_overran", action="SIGINT")
                second.send_signal(signal.SIGINT)
                try:
                    second.wait(60)
                except subprocess.TimeoutExpired:
                    second.kill()
                break
            next_kill = self.tick(next_kill, stall_at)
            time.sleep(1.0)
        self._note("phase_b_exit", code=second.returncode)
        wall = time.monotonic() - self.t0
        time.sleep(LEFTOVER_GRACE_S)
        leftovers = marked_processes(self.mark)
        for pid in leftovers:
            _signal_group(pid, signal.SIGKILL)  # clean up what the system failed to
        return self.result(wall, second.returncode, leftovers, done_before)

    def result(
        self, wall: float, code: int | None, leftovers: dict[int, Any], done_before: int
    ) -> dict[str, Any]:
        ledger = sample_ledger(self.run_dir)
        report_path = self.run_dir / "report.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        stats = report.get("stats", {})
        lags = [ledger["loop_lag_max_ms"], (stats.get("event_loop") or {}).get("loop_lag_max_ms")]
        resumed = report.get("start_iteration", 0) > 0 and report.get("iterations", 0) > report.get(
            "start_iteration", 0
        )
        return {
            "wall_s": round(wall, 1),
            "preemptions_with_notice": ledger["preemptions_notice"],
            "silent_losses": ledger["preemptions_silent"],
            "samples_committed": ledger["samples_committed"],
            "samples_duplicated": ledger["samples_duplicated"],
            "samples_lost": ledger["samples_lost"],
            "steps_recomputed": ledger["steps_recomputed"],
            "resumes": int(resumed),
            **rss_summary(self.rss, wall),
            "leftover_processes": len(leftovers),
            "event_loop_lag_max_ms": max((x for x in lags if x is not None), default=None),
            "iterations": report.get("iterations"),
            "iterations_before_ondemand_kill": done_before,
            "final_exit_code": code,
            "injected": {
                "spot_sigkills": self.kills,
                "sigstop_stalls": int(self.stalled),
                "ondemand_sigkills": 1,
            },
            "leftover_detail": {str(p): k for p, (k, _) in leftovers.items()},
            "ledger": ledger,
            "events": self.events,
        }


def _signal_group(pid: int, sig: int) -> None:
    """A whole node: its process group (a spot node is its own session; its SP members die
    with it), else the process."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _iterations(run_dir: Path) -> int:
    path = run_dir / "trainer.jsonl"
    if not path.exists():
        return 0
    its = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return max((r["iteration"] for r in its if r.get("kind") == "iteration"), default=0)


# ------------------------------------------------------------------------- the ledger


def _records(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by the SIGKILL of its writer
    return out


def sample_ledger(run_dir: Path) -> dict[str, Any]:
    """Samples committed / duplicated / lost from what the run left on disk.

    The trainer's history is trainer.jsonl (a resumed run truncates it to its checkpoint
    first); each iteration k of it trained on the batch of the last ``rollouts`` metric of
    iteration k (an iteration redone after the on-demand kill has two; the first was never
    applied). Expected per iteration: prompts_per_iter x group_size of config.json.
    """
    cfg = json.loads((run_dir / "config.json").read_text())
    batch = cfg["trainer"]["prompts_per_iter"] * cfg["trainer"]["group_size"]
    steps = cfg["trainer"]["num_steps"]
    history = [r for r in _records(run_dir / "trainer.jsonl") if r.get("kind") == "iteration"]
    ks = [r["iteration"] for r in history]
    metrics = _records(run_dir / "metrics.jsonl")
    delivered: dict[int, list[int]] = {}
    lag = 0
    for m in metrics:
        f = m.get("fields", {})
        if m.get("topic") == "rollouts":
            by_worker = sum(f.get("by_worker", {}).values())
            delivered.setdefault(int(f["iteration"]), []).append(
                int(f["samples"]) if by_worker == f["samples"] else -1
            )
        elif m.get("topic") == "runtime" and f.get("loop_lag_max_ms") is not None:
            lag = max(lag, int(f["loop_lag_max_ms"]))
    last = max(ks, default=0)
    dup = batch * (len(ks) - len(set(ks)))
    lost = batch * len(set(range(1, last + 1)) - set(ks))
    committed = 0
    for k in sorted(set(ks)):
        got = delivered.get(k, [None])[-1]
        if got is None:
            lost += batch
            continue
        if got < 0:  # by_worker did not add up to the samples: count the batch as suspect
            dup += batch
            continue
        committed += min(got, batch)
        dup += max(0, got - batch)
        lost += max(0, batch - got)
    redone = sum(len(v) - 1 for k, v in delivered.items() if k in set(ks))
    costs = _cost_epochs(metrics)
    work_lost = sum(c.get("work_lost_steps", 0) for c in costs)
    return {
        "batch": batch,
        "iterations": len(set(ks)),
        "samples_committed": committed,
        "samples_duplicated": dup,
        "samples_lost": lost,
        "iterations_redone": redone,
        "steps_recomputed": work_lost + redone * batch * steps,
        "steps_recomputed_parts": {
            "coordinator_work_lost_steps": work_lost,
            "redone_iteration_steps": redone * batch * steps,
        },
        "preemptions_notice": sum(c.get("preemptions_notice", 0) for c in costs),
        "preemptions_silent": sum(c.get("preemptions_silent", 0) for c in costs),
        "loop_lag_max_ms": lag,
        "definitions": {
            "samples_committed": "sum over trained iterations of the samples of its batch",
            "samples_duplicated": "samples beyond the batch size, or iterations applied twice",
            "samples_lost": "samples short of the batch size, or iterations missing",
            "steps_recomputed": "denoising steps the coordinator counted lost on nodes + the "
            "steps of iterations redone after the on-demand kill",
        },
    }


def _cost_epochs(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last "cost" record of each on-demand process: a new process's counters (and its
    on-demand GPU-hours, which only grow within a process) start again from 0."""
    keys = ("ondemand_gpu_hours", "preemptions_notice", "preemptions_silent", "work_lost_steps")
    out: list[dict[str, Any]] = []
    prev: dict[str, Any] | None = None
    for m in metrics:
        if m.get("topic") != "cost":
            continue
        f = m["fields"]
        if prev is not None and any(f.get(k, 0) < prev.get(k, 0) for k in keys):
            out.append(prev)
        prev = f
    if prev is not None:
        out.append(prev)
    return out


def rss_summary(samples: list[tuple[float, str, float]], wall: float) -> dict[str, Any]:
    """Max RSS per process kind in the first and the last fifth of the soak."""
    start: dict[str, float] = {}
    end: dict[str, float] = {}
    for t, kind, rss in samples:
        if t <= wall * 0.2:
            start[kind] = max(start.get(kind, 0.0), rss)
        if t >= wall * 0.8:
            end[kind] = max(end.get(kind, 0.0), rss)
    return {
        "max_rss_mb_start": {k: round(v, 1) for k, v in sorted(start.items())},
        "max_rss_mb_end": {k: round(v, 1) for k, v in sorted(end.items())},
    }


# ------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="soak length (>= 30 for issue 21)")
    ap.add_argument("--short", action="store_true", help="the <= 3 minute CI form")
    ap.add_argument("--traces", nargs=2, type=Path, default=list(TRACES), metavar="CSV")
    ap.add_argument("--cap", type=int, default=2, help="live spot nodes at most (2 cores)")
    ap.add_argument("--trace-hours", type=float, default=None, help="replay only this much")
    ap.add_argument("--kill-every-s", type=float, default=240.0, help="random spot SIGKILLs")
    ap.add_argument("--stall-s", type=float, default=8.0, help="SIGSTOP length of one node")
    ap.add_argument(
        "--end-grace-s",
        type=float,
        default=300.0,
        help="phase B may run this long past its budget (start-up: imports alone took 190 s "
        "on a loaded 2-core box) before it is interrupted",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="set_args", action="append", default=[], metavar="K=V")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/soak.json")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run here (a new dir)")
    args = ap.parse_args(argv)
    args.set_args = [x for kv in args.set_args for x in ("--set", kv)]
    if args.short:  # small batches so iterations (and checkpoints) come within seconds
        args.minutes = min(args.minutes, 2.5)
        args.trace_hours = args.trace_hours or 3.0
        args.kill_every_s = min(args.kill_every_s, 50.0)
        args.stall_s = min(args.stall_s, 4.0)
        args.set_args = [
            "--set", "trainer.prompts_per_iter=2", "--set", "trainer.group_size=4",
            "--set", "run.val_every=1000", "--set", "trainer.val_per_kind=1",
            "--set", "trainer.val_seeds=1", "--set", "run.ckpt_every=1",
            *args.set_args,
        ]  # fmt: skip
    for path in args.traces:
        if not path.is_file():
            ap.error(
                f"trace {path} not found: give two traces with --traces (see traces/README.md)"
            )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="spotlight-soak-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = Soak(args, work).run()
    result["settings"] = {
        "minutes": args.minutes,
        "short": args.short,
        "traces": [str(p) for p in args.traces],
        "cap_live_nodes": args.cap,
        "notice_lead_s": list(NOTICE_LEAD_S),
        "kill_every_s": args.kill_every_s,
        "stall_s": args.stall_s,
        "set": args.set_args,
    }
    result["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }
    result["command"] = "python scripts/soak.py " + " ".join(argv if argv else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    keys = [k for k in result if k not in ("events", "ledger", "settings", "machine")]
    print(json.dumps({k: result[k] for k in keys}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
