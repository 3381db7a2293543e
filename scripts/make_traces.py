#!/usr/bin/env python
"""Generate the synthetic spot traces shipped under ``traces/`` (deterministic, seeded).

Models (all times in seconds; nodes are named ``spot-0``, ``spot-1``, ... and a
replacement always gets a new name, so a name is one lifetime):

``steady``   A pool that tries to hold ``--nodes`` nodes. Each node lives an exponential
             time (mean ``--mean-life``), i.e. preemptions are a Poisson process per node;
             after a loss a replacement arrives after an exponential delay (mean
             ``--mean-replace``). Each loss gets a notice ``--notice`` seconds earlier with
             probability ``--p-notice`` (else it is silent).
``bursty``   Same background as steady (with a longer life), plus capacity crunches at
             Poisson times (mean gap ``--mean-burst-gap``): a fraction ``--burst-fraction``
             of the alive nodes is removed within ``--burst-window`` seconds, nothing comes
             back for ``--crunch`` seconds, then nodes return one by one (exponential gaps,
             mean ``--mean-replace``).
``diurnal``  The pool's target size follows a sinusoid between ``--min-nodes`` and
             ``--nodes`` with period ``--period``; every ``--tick`` seconds the pool removes
             (when above target) or adds (when below) one node, on top of the steady
             background losses.

Usage::

    python scripts/make_traces.py steady --seed 1 --out traces/steady_1h.csv
    python scripts/make_traces.py --all          # regenerate every shipped trace

Only the Python standard library's ``random.Random(seed)`` is used, so the output is the
same on every machine and Python version >= 3.11 for a given seed and parameters.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from spotlight.actors.spot.trace import SpotTrace  # noqa: E402


@dataclass
class _Pool:
    """Event builder: hands out node names and keeps each lifetime valid."""

    rng: random.Random
    duration: float
    notice_s: float
    p_notice: float
    rows: list[tuple[float, str, str]] = field(default_factory=list)
    alive: dict[str, float] = field(default_factory=dict)  # node -> add time
    next_id: int = 0

    def add(self, t: float) -> str | None:
        if t >= self.duration:
            return None
        node = f"spot-{self.next_id}"
        self.next_id += 1
        self.rows.append((t, "add", node))
        self.alive[node] = t
        return node

    def remove(self, node: str, t: float, *, notice: bool | None = None) -> None:
        if t >= self.duration or node not in self.alive:
            return
        added = self.alive.pop(node)
        if notice is None:
            notice = self.rng.random() < self.p_notice
        if notice and self.notice_s > 0:
            self.rows.append((max(added, t - self.notice_s), "notice", node))
        self.rows.append((t, "remove", node))

    def trace(self, source: str) -> SpotTrace:
        order = {"add": 0, "notice": 1, "remove": 2}
        rows = sorted(self.rows, key=lambda r: (round(r[0], 3), order[r[1]], r[2]))
        # rename in order of arrival so spot-0, spot-1, ... read in time order
        names: dict[str, str] = {}
        for _, ev, n in rows:
            if ev == "add":
                names.setdefault(n, f"spot-{len(names)}")
        rows = [(round(t, 3), ev, names[n]) for t, ev, n in rows]
        return SpotTrace.from_events(rows, source=source)


def _steady_lifetimes(pool: _Pool, nodes: int, mean_life: float, mean_replace: float) -> None:
    """Each slot: node lives Exp(mean_life), replacement after Exp(mean_replace), repeat."""
    for slot in range(nodes):
        t = slot * 5.0  # staggered start: nodes do not all boot in the same second
        while t < pool.duration:
            node = pool.add(t)
            if node is None:
                break
            death = t + pool.rng.expovariate(1.0 / mean_life)
            pool.remove(node, death)
            t = death + pool.rng.expovariate(1.0 / mean_replace)


def steady(args: argparse.Namespace) -> SpotTrace:
    pool = _Pool(random.Random(args.seed), args.duration, args.notice, args.p_notice)
    _steady_lifetimes(pool, args.nodes, args.mean_life, args.mean_replace)
    return pool.trace(f"steady(seed={args.seed})")


def bursty(args: argparse.Namespace) -> SpotTrace:
    rng = random.Random(args.seed)
    pool = _Pool(rng, args.duration, args.notice, args.p_notice)
    # an event-ordered simulation: background deaths, bursts and returns
    deaths: dict[str, float] = {}
    for i in range(args.nodes):
        node = pool.add(i * 5.0)
        assert node is not None
        deaths[node] = i * 5.0 + rng.expovariate(1.0 / args.mean_life)
    returns: list[float] = []
    t_burst = rng.expovariate(1.0 / args.mean_burst_gap)
    blocked_until = 0.0
    t = 0.0
    while t < args.duration:
        t_death = min(deaths.values(), default=math.inf)
        t_ret = min(returns, default=math.inf)
        t = min(t_death, t_ret, t_burst)
        if t >= args.duration:
            break
        if t == t_burst:
            victims = sorted(pool.alive)
            rng.shuffle(victims)
            for node in victims[: math.ceil(args.burst_fraction * len(victims))]:
                pool.remove(node, t + rng.uniform(0, args.burst_window))
                del deaths[node]
                returns.append(t + args.crunch + rng.expovariate(1.0 / args.mean_replace))
            blocked_until = t + args.crunch
            t_burst = t + args.crunch + rng.expovariate(1.0 / args.mean_burst_gap)
        elif t == t_death:
            node = min(deaths, key=deaths.__getitem__)
            del deaths[node]
            pool.remove(node, t)
            returns.append(max(t, blocked_until) + rng.expovariate(1.0 / args.mean_replace))
        else:
            returns.remove(t)
            if t < blocked_until:  # a return due during a crunch waits for its end
                returns.append(blocked_until + rng.expovariate(1.0 / args.mean_replace))
                continue
            node = pool.add(t)
            if node is not None:
                deaths[node] = t + rng.expovariate(1.0 / args.mean_life)
    return pool.trace(f"bursty(seed={args.seed})")


def diurnal(args: argparse.Namespace) -> SpotTrace:
    rng = random.Random(args.seed)
    pool = _Pool(rng, args.duration, args.notice, args.p_notice)
    deaths: dict[str, float] = {}
    t = 0.0
    while t < args.duration:
        phase = 2 * math.pi * t / args.period
        target = round(args.min_nodes + (args.nodes - args.min_nodes) * (1 + math.cos(phase)) / 2)
        for node, d in sorted(deaths.items()):  # background losses due by now
            if d <= t:
                pool.remove(node, d)
                del deaths[node]
        if len(pool.alive) < target:
            t_add = t + rng.uniform(0, args.tick / 2)
            new = pool.add(t_add)
            if new is not None:
                deaths[new] = t_add + rng.expovariate(1.0 / args.mean_life)
        elif len(pool.alive) > target:
            victim = rng.choice(sorted(pool.alive))
            pool.remove(victim, t + rng.uniform(0, args.tick / 2))
            deaths.pop(victim, None)
        t += args.tick
    return pool.trace(f"diurnal(seed={args.seed})")


MODELS = {"steady": steady, "bursty": bursty, "diurnal": diurnal}

# Instance metadata for the projection (spotlight/actors/spot/projection/shaped.py): the
# synthetic pools stand for 8 x H100 p5.48xlarge nodes at the aws-p5 price preset.
SHAPE = (
    "#@ cloud: aws\n#@ instance: p5.48xlarge (synthetic pool)\n#@ gpu: H100-80GB\n"
    "#@ gpus_per_node: 8\n#@ ondemand_usd_per_gpu_hour: 12.29\n#@ spot_usd_per_gpu_hour: 3.32\n"
    "#@ price_source: aws-p5 price preset (spotlight/actors/spot/prices.py)\n#@ notice_s: 120\n"
)

# The traces shipped in traces/: (file, model, arguments). traces/README.md documents them.
SHIPPED: list[tuple[str, str, list[str]]] = [
    ("steady_1h.csv", "steady", ["--seed", "1"]),
    ("bursty_1h.csv", "bursty", ["--seed", "2"]),
    ("diurnal_2h.csv", "diurnal", ["--seed", "3", "--duration", "7200", "--period", "3600"]),
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", nargs="?", choices=sorted(MODELS))
    p.add_argument("--all", action="store_true", help="regenerate every shipped trace in traces/")
    p.add_argument("--out", type=Path, help="output CSV (default: stdout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=3600.0, help="trace length, s (3600)")
    p.add_argument("--nodes", type=int, default=6, help="pool target / maximum size (6)")
    p.add_argument("--min-nodes", type=int, default=1, help="diurnal: minimum target (1)")
    p.add_argument("--mean-life", type=float, default=1200.0, help="mean node life, s (1200)")
    p.add_argument("--mean-replace", type=float, default=120.0, help="mean replacement delay, s")
    p.add_argument("--notice", type=float, default=120.0, help="notice lead, s (AWS: 120)")
    p.add_argument("--p-notice", type=float, default=0.7, help="P(a loss has a notice) (0.7)")
    p.add_argument("--mean-burst-gap", type=float, default=1500.0, help="bursty: mean gap, s")
    p.add_argument("--burst-fraction", type=float, default=0.6, help="bursty: share removed")
    p.add_argument("--burst-window", type=float, default=30.0, help="bursty: burst spread, s")
    p.add_argument("--crunch", type=float, default=300.0, help="bursty: no returns for, s")
    p.add_argument("--period", type=float, default=3600.0, help="diurnal: period, s")
    p.add_argument("--tick", type=float, default=60.0, help="diurnal: pool adjust step, s")
    return p


def _header(model: str, argv: list[str]) -> str:
    cmd = " ".join(["python scripts/make_traces.py", model, *argv])
    return (
        f"# synthetic spot trace, model {model!r}; see traces/README.md\n# generated by: {cmd}\n"
        + SHAPE
    )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.all:
        out_dir = REPO / "traces"
        out_dir.mkdir(exist_ok=True)
        for fname, model, margs in SHIPPED:
            sub = parser.parse_args([model, *margs])
            trace = MODELS[model](sub)
            (out_dir / fname).write_text(_header(model, margs) + trace.to_csv())
            print(f"wrote traces/{fname}: {len(trace)} events, {len(trace.nodes)} nodes")
        return 0
    if args.model is None:
        parser.error("give a model (steady, bursty, diurnal) or --all")
    trace = MODELS[args.model](args)
    text = _header(args.model, sys.argv[2:] if argv is None else argv[1:]) + trace.to_csv()
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
