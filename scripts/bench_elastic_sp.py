"""Elastic SP vs restart: how fast does a Ulysses group recover from losing a member?

With the tiny model on CPU/gloo, member processes on loopback and the group scheduler in this
process, measures (each repeated; median and spread):

- reform: SIGKILL of a member -> the group's next completed denoising step (re-formed from the
  survivors at the largest valid degree, the step redone from the kept boundary latent);
- notice: a member's notice -> next completed step without it;
- join: a ready joiner process -> serving in the group (weight copy from a peer through
  /dev/shm included); the process start is reported beside it;
- restart baseline (TorchElastic-style): kill the whole group, relaunch its processes, load the
  weights from a checkpoint on disk, re-initialise the process group, resume the request from
  its last committed step -> first completed step;
- weight copy bandwidth: a synthetic state dict (1 GiB, 256 MiB with --quick) published to
  /dev/shm and copied into another process's (already allocated) tensors; plus the tiny
  model streamed over the runtime (the cross-node path).

Writes benchmarks/results/elastic_sp.json. ``--quick`` keeps it near a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics as st
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from spotlight.actors.sp.group import LocalWorkSource, SPGroupConfig, SPGroupScheduler, SPRequest
from spotlight.actors.sp.local import LocalSPCluster, Worker
from spotlight.actors.weights.share import publish_to_shm
from spotlight.models.checkpoint import CheckpointCard, save_checkpoint
from spotlight.models.dit import build_policy
from spotlight.models.sampler import SamplerConfig
from spotlight.runtime import ActorRef, Runtime, RuntimeConfig

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle", "two blue squares"]
SEEDS = [1, 2]
GROUP = SPGroupConfig(
    name="bench", collective_timeout_s=10.0, probe_interval_s=0.5, probe_timeout_s=0.2
)
RT = RuntimeConfig(heartbeat_s=0.25, missed_heartbeats=4, ask_timeout_s=60.0)


def summary(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    s = sorted(xs)
    p99 = s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]
    return {
        "n": len(s),
        "p50": st.median(s),
        "p99": p99,
        "min": s[0],
        "max": s[-1],
        "stdev": st.stdev(s) if len(s) > 1 else 0.0,
    }


async def first_after(
    sched: ActorRef, t0: float, kind: str, timeout_s: float = 120.0, **match: Any
) -> tuple[float, dict[str, Any]]:
    """Wall time and details of the first scheduler event ``kind`` after ``t0``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for t, k, d in await sched.events.ask(t0):
            if k == kind and all(d.get(a) == b for a, b in match.items()):
                return t, d
        await asyncio.sleep(0.005)
    raise TimeoutError(f"no {kind} event {match} within {timeout_s} s")


async def wait_degree(sched: ActorRef, degree: int, timeout_s: float = 120.0) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = await sched.statistics.ask()
        if s["degree"] == degree and s["phase"] == "stepping":
            t, _ = await first_after(sched, time.time(), "step_done")
            return t
        await asyncio.sleep(0.01)
    raise TimeoutError(f"group did not reach degree {degree}")


def member_ref(rt: Runtime, w: Worker) -> ActorRef:
    return rt.ref(w.address, LocalSPCluster.member_name())


async def elastic_rounds(
    cluster: LocalSPCluster,
    members: list[Worker],
    spares: list[Worker],
    far: Worker,
    rounds: int,
) -> dict[str, Any]:
    out: dict[str, list[float]] = {"reform": [], "notice": [], "join": [], "join_copy_s": []}
    extra: dict[str, Any] = {}
    async with Runtime(RT) as rt:
        source = LocalWorkSource()
        sched = await rt.spawn(SPGroupScheduler, GROUP, source)
        for w in members:
            await sched.join.ask(member_ref(rt, w))
        long = SPRequest(
            id="long", prompts=PROMPTS, seeds=SEEDS, sampler=SamplerConfig(num_steps=100_000)
        )
        done = source.submit(long)
        await wait_degree(sched, 4)
        live = list(members)
        for r in range(rounds):
            # notice -> next completed step without the member; it then rejoins (copying weights)
            leaver = live[0]
            t0 = time.time()
            await sched.notice.ask(member_ref(rt, leaver))
            t1, _ = await first_after(sched, t0, "reform_done")
            t2, _ = await first_after(sched, t1, "step_done")
            out["notice"].append(t2 - t0)
            t0 = time.time()
            info = await sched.join.ask(member_ref(rt, leaver), True)
            t1, _ = await first_after(sched, t0, "reform_done", degree=4)
            t2, _ = await first_after(sched, t1, "step_done")
            out["join"].append(t2 - t0)
            out["join_copy_s"].append(info["copy"]["seconds"])
            extra["join_copy"] = info["copy"]
            # SIGKILL -> next completed step by the survivors
            victim = live[-1]
            await first_after(sched, time.time(), "step_done")
            await asyncio.sleep(0.02 + 0.01 * r)  # land at different points of a step
            t0 = time.time()
            cluster.kill(victim)
            t2, _ = await first_after(sched, t0, "step_done")
            out["reform"].append(t2 - t0)
            live.remove(victim)
            if spares:
                joiner = spares.pop(0)
                t0 = time.time()
                await sched.join.ask(member_ref(rt, joiner), True)
                live.append(joiner)
                await first_after(sched, t0, "reform_done", degree=4)
            print(
                f"round {r}: kill->step {out['reform'][-1]:.3f}s  notice->step "
                f"{out['notice'][-1]:.3f}s  join->serving {out['join'][-1]:.3f}s",
                flush=True,
            )
        extra["stats"] = await sched.statistics.ask()
        # Cross-node path: a member on another "node" gets the weights over the runtime.
        t0 = time.time()
        info = await sched.join.ask(member_ref(rt, far), True)
        extra["runtime_copy"] = info["copy"]
        live.append(far)
        await first_after(sched, t0, "reform_done", degree=4)
        # The state the restart baseline resumes from.
        extra["resume_state"] = source.commits.get("long")
        extra["live"] = [w for w in live if w.alive]
        done.cancel()
        await rt.stop_actor(sched.name, "benchmark done")
    return {**{k: v for k, v in out.items()}, **extra}


async def restart_once(
    cluster: LocalSPCluster, group: list[Worker], ckpt: str, state: Any
) -> dict[str, float]:
    """Kill the whole group, relaunch, load from disk, re-form, resume: seconds to first step."""
    n = len(group)
    t0 = time.time()
    for w in group:
        cluster.kill(w)
    fresh = cluster.launch(n, checkpoint=ckpt)
    await asyncio.to_thread(cluster.wait_ready, fresh)
    t_ready = time.time()
    async with Runtime(RT) as rt:
        source = LocalWorkSource()
        sched = await rt.spawn(SPGroupScheduler, GROUP, source)
        for w in fresh:
            await sched.join.ask(member_ref(rt, w))
        req = SPRequest(
            id="resume",
            prompts=PROMPTS,
            seeds=SEEDS,
            sampler=SamplerConfig(num_steps=100_000),
            state=state,
        )
        fut = source.submit(req)
        t2, _ = await first_after(sched, t0, "step_done")
        fut.cancel()
        await rt.stop_actor(sched.name, "benchmark done")
    group[:] = fresh
    return {"total": t2 - t0, "launch_and_load": t_ready - t0, "form_and_step": t2 - t_ready}


COPY_CHILD = r"""
import json, sys, time, torch
from spotlight.actors.weights.share import WeightManifest, load_from_shm
man = WeightManifest.from_dict(json.loads(sys.stdin.read()))
dst = {e.key: torch.ones(e.shape, dtype=getattr(torch, e.dtype.split(".")[1])) for e in man.entries}
best = []
for _ in range(3):
    s = load_from_shm(dst, man)
    best.append(s.gib_s)
print(json.dumps(best))
"""


def weight_copy_bandwidth(mib: int) -> dict[str, Any]:
    """Publish a synthetic state dict to /dev/shm; copy it in another process (GiB/s)."""
    n_tensors = 16
    per = mib * 2**20 // 4 // n_tensors
    state = {f"layer{i}.weight": torch.randn(per) for i in range(n_tensors)}
    t0 = time.perf_counter()
    shared = publish_to_shm(state, node="node0")
    publish_s = time.perf_counter() - t0
    try:
        proc = subprocess.run(
            [sys.executable, "-c", COPY_CHILD],
            input=json.dumps(shared.manifest.to_dict()),
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
            check=True,
        )
        rates = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shared.close()
    return {
        "bytes": shared.manifest.total_bytes,
        "publish_gib_s": shared.manifest.total_bytes / 2**30 / publish_s,
        "copy_gib_s_runs": rates,
        "copy_gib_s": st.median(rates),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, 256 MiB copy (~1 min)")
    ap.add_argument("--rounds", type=int, default=None, help="elastic rounds (default 5; quick 2)")
    ap.add_argument("--restarts", type=int, default=None, help="restart repeats (3; quick 2)")
    ap.add_argument("--weight-mib", type=int, default=None, help="synthetic weights (1024; 256)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/elastic_sp.json")
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    restarts = args.restarts or (2 if args.quick else 3)
    mib = args.weight_mib or (256 if args.quick else 1024)
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench-sp-") as tmp, LocalSPCluster(Path(tmp)) as c:
        t0 = time.perf_counter()
        members = c.launch(4)
        spares = c.launch(rounds - 1)
        far = c.launch(1, node="node1", seed=7)  # wrong weights until it copies them
        c.wait_ready(members + spares + far, timeout_s=300)
        launch_s = time.perf_counter() - t0
        print(f"{4 + rounds} member processes ready in {launch_s:.1f}s", flush=True)
        el = asyncio.run(elastic_rounds(c, members, spares, far[0], rounds))

        ckpt = str(Path(tmp) / "ckpt")
        policy = build_policy("tiny", seed=0)
        save_checkpoint(policy, ckpt, CheckpointCard(config=policy.config))
        # Quick: restart a 2-process group (faster to relaunch than 4: a conservative baseline).
        group = el["live"][: 2 if args.quick else 4]
        base = []
        for i in range(restarts):
            res = asyncio.run(restart_once(c, group, ckpt, el["resume_state"]))
            base.append(res)
            print(f"restart {i}: {res['total']:.2f}s ({len(group)} processes)", flush=True)
    copy = weight_copy_bandwidth(mib)
    print(f"shm weight copy of {mib} MiB: {copy['copy_gib_s']:.2f} GiB/s", flush=True)

    reform, notice, join = summary(el["reform"]), summary(el["notice"]), summary(el["join"])
    restart = summary([b["total"] for b in base])
    result = {
        "reform_p50_s": reform["p50"],
        "reform_p99_s": reform["p99"],
        "notice_p50_s": notice["p50"],
        "join_p50_s": join["p50"],
        "restart_baseline_p50_s": restart["p50"],
        "speedup_vs_restart": restart["p50"] / reform["p50"],
        "speedup_notice_vs_restart": restart["p50"] / notice["p50"],
        "weight_copy_gib_s": copy["copy_gib_s"],
        "detail": {
            "reform_s": el["reform"],
            "notice_s": el["notice"],
            "join_s": el["join"],
            "join_copy_s": el["join_copy_s"],
            "join_copy_tiny": el.get("join_copy"),
            "runtime_copy_tiny": el.get("runtime_copy"),
            "restart": base,
            "reform": reform,
            "notice": notice,
            "join": join,
            "restart_summary": restart,
            "weight_copy": copy,
            "member_launch_s": launch_s,
            "group_stats": el["stats"],
        },
        "conditions": {
            "quick": args.quick,
            "model": "tiny (4 heads, 64 image tokens, batch 2)",
            "backend": "gloo, loopback, CPU",
            "group": "degree 4 -> 2 on loss (3 survivors), -> 4 on join",
            "restart_group_size": len(group),
            "restart_checkpoint": "safetensors on local disk (in page cache: favours the baseline)",
            "probe_timeout_s": GROUP.probe_timeout_s,
            "host": platform.node(),
            "cpus": __import__("os").cpu_count(),
            "load_avg": __import__("os").getloadavg(),
            "torch": torch.__version__,
            "wall_s": time.perf_counter() - t_start,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print()
    print(f"{'':28}{'p50 s':>9}{'p99 s':>9}{'vs restart':>12}")
    for name, s in (("kill -> next step", reform), ("notice -> next step", notice)):
        print(f"{name:28}{s['p50']:9.3f}{s['p99']:9.3f}{restart['p50'] / s['p50']:11.1f}x")
    print(f"{'joiner -> serving':28}{join['p50']:9.3f}{join['p99']:9.3f}")
    print(f"{'restart baseline':28}{restart['p50']:9.3f}{restart['p99']:9.3f}{1:11.1f}x")
    print(f"weight copy (shm, {mib} MiB): {copy['copy_gib_s']:.2f} GiB/s -> {args.out}")
    sys.stdout.flush()
    __import__("os")._exit(0)  # torch 2.13 + gloo may abort at interpreter exit


if __name__ == "__main__":
    main()
