"""One strategy over one trace window: a discrete-event simulation of time, work lost and cost.

Strategies (the paper's fair configurations):

``ondemand``             (a) N on-demand GPUs roll out and train; random seeds.
``ondemand_same_gpus``   (b) the same with N + M on-demand GPUs (Spotlight's peak count).
``restart``              (c) N on-demand + up to M spot GPUs roll out; TorchElastic-style
                         recovery: a preemption loses the group's in-flight samples and its
                         survivors relaunch, rendezvous and reload the full weights; workers
                         pull a full weight version per iteration; notices are not used.
``spotlight_no_explore`` (d) the systems part alone: a notice drains the worker at once
                         (its step finishes and commits if the lead allows one step), a
                         silent loss costs the steps since the last commit, survivors re-form
                         in ``sp_reform_s`` with their weights in place; LoRA versions.
``spotlight``            (e) d plus exploration on spot during training: the same time per
                         iteration, fewer iterations (``IterationsToTarget.selection_speedup``).

One iteration = rollouts (``rollout_gpu_s`` of work shared, as a fluid, by every GPU that is
up) then the update (``train_gpu_s`` on the trainer's on-demand GPUs; spot is idle for c
and d, explores for e). Between two events the set of working GPUs is constant, so progress
is linear and every time below is exact. Spot nodes are taken from the trace in arrival
order while the run holds fewer than M GPUs, and billed from then until removed or the run
ends; a node under notice is not taken. Work lost = what the group did since its last save:
a whole sample for c (``denoise_steps`` steps), ``commit_interval_steps`` steps for d/e.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from spotlight.actors.spot.prices import Prices
from spotlight.actors.spot.projection.assumptions import Assumptions
from spotlight.actors.spot.projection.costs import CostPreset
from spotlight.actors.spot.trace import SpotTrace

__all__ = ["STRATEGIES", "Run", "simulate"]

STRATEGIES: tuple[str, ...] = (
    "ondemand",
    "ondemand_same_gpus",
    "restart",
    "spotlight_no_explore",
    "spotlight",
)
_SPOT = ("restart", "spotlight_no_explore", "spotlight")
_EPS = 1e-9


@dataclass
class Run:
    """What one strategy did until it reached the target."""

    strategy: str
    iterations: int
    wall_s: float = 0.0
    gpu_s_ondemand: float = 0.0
    gpu_s_spot: float = 0.0
    usd_ondemand: float = 0.0
    usd_spot: float = 0.0
    preemptions: int = 0
    """Held spot nodes removed during the run."""
    preemptions_noticed: int = 0
    recoveries: int = 0
    """c: group (or pool) restarts; d/e: SP re-forms with survivors."""
    gpu_s_lost: float = 0.0
    """Rollout GPU-seconds thrown away and redone."""
    steps_lost: float = 0.0
    """The same in sample-steps (``gpu_s_lost / sample_step_s``)."""
    explore_gpu_s: float = 0.0
    """e: spot GPU-seconds free for exploration during updates."""
    timeline: list[tuple[float, int, float]] = field(default_factory=list)
    """(seconds, iterations done, dollars so far) after each iteration."""

    @property
    def usd(self) -> float:
        return self.usd_ondemand + self.usd_spot

    def to_dict(self) -> dict[str, object]:
        return {
            "strategy": self.strategy,
            "iterations": self.iterations,
            "hours": self.wall_s / 3600,
            "usd": self.usd,
            "gpu_hours_ondemand": self.gpu_s_ondemand / 3600,
            "gpu_hours_spot": self.gpu_s_spot / 3600,
            "usd_ondemand": self.usd_ondemand,
            "usd_spot": self.usd_spot,
            "preemptions": self.preemptions,
            "preemptions_noticed": self.preemptions_noticed,
            "recoveries": self.recoveries,
            "steps_lost": self.steps_lost,
            "explore_gpu_hours": self.explore_gpu_s / 3600,
            "timeline": [list(p) for p in self.timeline],
        }


@dataclass
class _Node:
    name: str
    gpus: int
    since: float
    """Held (billed) from."""
    ready_at: float
    working: bool = True
    """False once a Spotlight node has drained on its notice."""
    noticed: bool = False


def simulate(
    strategy: str,
    trace: SpotTrace,
    *,
    preset: CostPreset,
    assume: Assumptions,
    gpus_per_node: int,
    prices: Prices,
    iterations: int,
) -> Run:
    """Run ``strategy`` until ``iterations`` updates are done (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    if not (isinstance(iterations, int) and iterations >= 1):
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    return _Sim(strategy, trace, preset, assume, gpus_per_node, prices, iterations).run()


class _Sim:
    def __init__(
        self,
        strategy: str,
        trace: SpotTrace,
        preset: CostPreset,
        assume: Assumptions,
        gpn: int,
        prices: Prices,
        iters: int,
    ) -> None:
        self.s, self.p, self.a, self.gpn, self.prices = strategy, preset, assume, gpn, prices
        self.spot = strategy in _SPOT
        self.restart = strategy == "restart"
        self.events = list(trace.events) if self.spot else []
        self.sp = assume.sp_degree or preset.sp_degree
        self.cap_nodes = assume.spot_gpus // gpn if self.spot else 0
        od = assume.ondemand_gpus
        self.od_gpus = od + assume.spot_gpus if strategy == "ondemand_same_gpus" else od
        self.held: dict[str, _Node] = {}  # in order of acquisition
        self.offered: dict[str, bool] = {}  # alive trace nodes not held -> noticed
        self.closed_spot_s = 0.0  # node-seconds of released nodes
        self.t = 0.0
        self.phase_start = 0.0
        self.rolling = True
        self.run_ = Run(strategy, iters)
        version = preset.version_bytes_full
        if not self.restart or assume.restart_version == "lora":
            version = preset.version_bytes_lora
        self.sync_s = version / (assume.link_gbps * 1e9 / 8)
        step_wall = preset.sample_step_s / self.sp
        self.save_s = step_wall * (
            preset.denoise_steps if self.restart else assume.commit_interval_steps
        )
        self.step_wall = step_wall

    # ---- the loop ----------------------------------------------------------------------
    def run(self) -> Run:
        ev = self._apply_due(0)
        for done in range(1, self.run_.iterations + 1):
            self._phase_start()
            remaining = self.p.rollout_gpu_s
            while remaining > _EPS * self.p.rollout_gpu_s:
                rate = self.od_gpus + self._spot_up()
                t_next = min(self._next_event(ev), self._next_ready())
                t_new = min(t_next, self.t + remaining / rate)
                remaining -= rate * (t_new - self.t)
                self._advance(t_new)
                lost_before = self.run_.gpu_s_lost
                ev = self._apply_due(ev)
                remaining += self.run_.gpu_s_lost - lost_before
            self.rolling = False
            self.phase_start, train_end = self.t, self.t + self.p.train_gpu_s / self.od_gpus
            while self.t < train_end - _EPS:
                t_new = min(self._next_event(ev), self._next_ready(), train_end)
                if self.s == "spotlight":
                    self.run_.explore_gpu_s += self._spot_up() * (t_new - self.t)
                self._advance(t_new)
                ev = self._apply_due(ev)
            self.t = max(self.t, train_end)
            self.run_.timeline.append((self.t, done, self._usd_so_far()))
        return self._finish()

    def _advance(self, t_new: float) -> None:
        if t_new > self.a.max_sim_s:
            raise ValueError(
                f"{self.s}: target not reached within max_sim_s={self.a.max_sim_s:g} simulated "
                "seconds; raise max_sim_s or check the iterations and the cost preset"
            )
        self.t = t_new

    def _phase_start(self) -> None:
        self.rolling, self.phase_start = True, self.t
        for n in self.held.values():  # spot workers pull this iteration's weight version
            n.ready_at = max(n.ready_at, self.t + self.sync_s)

    # ---- capacity ----------------------------------------------------------------------
    def _spot_up(self) -> int:
        return sum(n.gpus for n in self.held.values() if n.working and n.ready_at <= self.t + _EPS)

    def _next_ready(self) -> float:
        pending = [
            n.ready_at for n in self.held.values() if n.working and n.ready_at > self.t + _EPS
        ]
        return min(pending, default=math.inf)

    def _next_event(self, ev: int) -> float:
        return self.events[ev].t_s if ev < len(self.events) else math.inf

    def _join_s(self) -> float:
        p = self.p
        extra = p.group_init_s if self.restart else p.sp_join_s
        return p.process_launch_s + p.base_load_s + extra

    def _top_up(self) -> None:
        for name, noticed in list(self.offered.items()):
            if len(self.held) >= self.cap_nodes:
                return
            if noticed:
                continue
            del self.offered[name]
            if self.restart and self.a.restart_scope == "pool":
                # one elastic job: a join is a new rendezvous round for every running worker
                up = [n for n in self.held.values() if n.ready_at <= self.t + _EPS]
                if up:
                    self._lose_since_save(up)
                    self._restart(up, detect=0.0)
            self.held[name] = _Node(name, self.gpn, self.t, self.t + self._join_s())

    # ---- trace events ------------------------------------------------------------------
    def _apply_due(self, ev: int) -> int:
        while ev < len(self.events) and self.events[ev].t_s <= self.t + _EPS:
            e = self.events[ev]
            ev += 1
            if e.event == "add":
                self.offered[e.node] = False
            elif e.event == "notice":
                if e.node in self.offered:
                    self.offered[e.node] = True
                elif e.node in self.held:
                    self.held[e.node].noticed = True
                    if not self.restart:  # TorchElastic does not read cloud notices
                        self._drain(self.held[e.node], self._removal_at(ev, e.node))
            elif e.node in self.offered:
                del self.offered[e.node]
            elif e.node in self.held:
                self._remove(self.held[e.node])
            self._top_up()
        return ev

    def _removal_at(self, ev: int, node: str) -> float:
        for e in self.events[ev:]:
            if e.node == node and e.event == "remove":
                return e.t_s
        return math.inf

    # ---- losses ------------------------------------------------------------------------
    def _group(self, node: _Node) -> list[_Node]:
        if self.restart and self.a.restart_scope == "pool":
            return [n for n in self.held.values() if n.working]
        k = max(1, math.ceil(self.sp / self.gpn))
        working = [n for n in self.held.values() if n.working]
        i = working.index(node)
        return working[(i // k) * k : (i // k) * k + k]

    def _lose_since_save(self, group: list[_Node]) -> None:
        """Throw away what ``group`` did since its last save point (rollouts only)."""
        if not self.rolling:
            return
        lost = 0.0
        for n in group:
            start = max(n.ready_at, self.phase_start)
            if n.working and self.t > start + _EPS:
                elapsed = self.t - start
                lost += (elapsed - math.floor(elapsed / self.save_s + _EPS) * self.save_s) * n.gpus
        self.run_.gpu_s_lost += lost

    def _restart(self, nodes: list[_Node], *, detect: float) -> None:
        """Relaunch ``nodes``: process, rendezvous and a full weight load each."""
        p = self.p
        for n in nodes:
            n.ready_at = self.t + detect + p.process_launch_s + p.group_init_s + p.base_load_s
        self.run_.recoveries += 1

    def _drain(self, node: _Node, removal_s: float) -> None:
        group = self._group(node)
        if removal_s - self.t + _EPS < self.step_wall:
            self._lose_since_save_steps(group)
        node.working = False
        self._reform([n for n in group if n is not node], self.p.sp_reform_s)

    def _lose_since_save_steps(self, group: list[_Node]) -> None:
        save, self.save_s = self.save_s, self.step_wall
        self._lose_since_save(group)
        self.save_s = save

    def _reform(self, survivors: list[_Node], stall_s: float) -> None:
        for n in survivors:
            n.ready_at = max(n.ready_at, self.t + stall_s)
        self.run_.recoveries += bool(survivors)

    def _remove(self, node: _Node) -> None:
        self.run_.preemptions += 1
        self.run_.preemptions_noticed += int(node.noticed)
        if node.working:
            group = self._group(node)
            survivors = [n for n in group if n is not node]
            self._lose_since_save(group)
            if self.restart and survivors:
                self._restart(survivors, detect=self.a.loss_detect_s)
            elif not self.restart:
                self._reform(survivors, self.a.loss_detect_s + self.p.sp_reform_s)
        self.closed_spot_s += (self.t - node.since) * node.gpus
        del self.held[node.name]

    # ---- billing -----------------------------------------------------------------------
    def _spot_gpu_s(self) -> float:
        return self.closed_spot_s + sum((self.t - n.since) * n.gpus for n in self.held.values())

    def _usd_so_far(self) -> float:
        od = self.od_gpus * self.t * self.prices.ondemand_usd_per_gpu_hour
        return (od + self._spot_gpu_s() * self.prices.spot_usd_per_gpu_hour) / 3600

    def _finish(self) -> Run:
        r = self.run_
        r.wall_s = self.t
        r.gpu_s_ondemand = self.od_gpus * self.t
        r.gpu_s_spot = self._spot_gpu_s()
        r.usd_ondemand = r.gpu_s_ondemand * self.prices.ondemand_usd_per_gpu_hour / 3600
        r.usd_spot = r.gpu_s_spot * self.prices.spot_usd_per_gpu_hour / 3600
        r.steps_lost = r.gpu_s_lost / self.p.sample_step_s
        return r
