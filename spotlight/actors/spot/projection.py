"""A discrete-event *projection* of time and cost to a target on a real spot cluster.

On our 2-core CPU machine wall time is distorted by CPU sharing, so the headline
benchmark also reports this projection: given a spot trace, prices, on-demand capacity
and *measured* per-step costs, simulate three strategies over the same trace:

``ondemand``   random-seed Flow-GRPO on the on-demand GPUs only. No spot at all.
``restart``    rollouts also run on spot SP groups, TorchElastic-style: on a preemption
               the restarted nodes lose their in-flight work back to their last
               checkpoint, and the survivors among them restart and reload weights. Which
               nodes restart is ``restart_scope``: ``group`` (the SP group of the lost
               node; notices ignored) or ``pool`` (every spot node, as one elastic job
               over the pool: any membership change restarts all of them, and a notice
               takes its node down at once; what bench_e2e's restart runs do).
``spotlight``  rollouts on on-demand + spot; during training, spot explores seeds for the
               next batch (off the critical path). Pull scheduling with commits at step
               boundaries: a noticed node finishes its step and commits (loses nothing if
               the notice is at least one step long, else one step); a silent loss costs at
               most the commit interval; survivors re-form the SP group in ``sp_reform_s``.

One iteration = a rollout phase (``rollout_samples x denoise_steps`` sample-steps, shared
by every GPU that is up, as a fluid: work is divisible) followed by a training phase
(``train_step_s`` on the on-demand GPUs; spot is idle for ``restart``, explores for
``spotlight``). The number of iterations each strategy needs to reach the target is an
**input** (:class:`IterationsNeeded`), measured by a real run (bench_e2e): the simulator
does not model learning, only time, work lost and cost.

Assumptions (each a field of :class:`ProjectionConfig`, documented there):
  * SP scaling is ideal: a step of one sample costs ``step_gpu_s`` GPU-seconds at any
    degree; an SP group of ``sp_degree`` GPUs spans ``ceil(sp_degree/gpus_per_node)``
    nodes. Groups are formed from alive nodes in order of arrival (chunks of that size).
  * A new spot node produces nothing for ``weight_load_s`` (it loads weights).
  * Checkpoints/commits happen on a fixed cadence from when a node starts working on the
    current phase; work since the last one is what a loss throws away.
  * ``restart`` with ``restart_scope="group"`` ignores notices; losses are detected after
    ``loss_detect_s`` (heartbeats), during which survivors wait; with ``"pool"`` a notice
    is a membership change seen at once (the node's agent goes down).
  * After the trace's last event the spot pool stays as it is.
  * Billing: on-demand GPUs for the whole run; each spot node for its whole life within the
    run (busy or idle), for ``restart`` and ``spotlight``; per-second billing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from spotlight.actors.spot.prices import CostMeter, CostSummary, Prices
from spotlight.actors.spot.trace import SpotTrace

__all__ = [
    "STRATEGIES",
    "IterationsNeeded",
    "ProjectionConfig",
    "ProjectionResult",
    "StrategyResult",
    "project",
    "simulate",
    "summarize",
]

Strategy = Literal["ondemand", "restart", "spotlight"]
STRATEGIES: tuple[str, ...] = ("ondemand", "restart", "spotlight")
_EPS = 1e-9


@dataclass(frozen=True, kw_only=True)
class IterationsNeeded:
    """Iterations each strategy needs to reach the target validation score.

    Measured, never assumed: bench_e2e reads them off real training curves (Spotlight
    needs fewer because its selected seeds give groups with more reward variance).
    ``restart`` uses random seeds like ``ondemand``, so normally the same number.
    """

    ondemand: int
    restart: int
    spotlight: int

    def __post_init__(self) -> None:
        for s in STRATEGIES:
            v = getattr(self, s)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"iterations needed for {s!r} must be an int >= 1, got {v!r}")

    def for_strategy(self, strategy: str) -> int:
        return int(getattr(self, _check_strategy(strategy)))


@dataclass(frozen=True, kw_only=True)
class ProjectionConfig:
    """Every assumption of the projection, named."""

    ondemand_gpus: int = 8
    """On-demand GPUs (trainer + rollouts); the same for every strategy."""
    gpus_per_node: int = 8
    """GPUs of one spot node of the trace."""
    sp_degree: int = 8
    """GPUs per SP sampling group; a multiple of ``gpus_per_node`` spans several nodes."""
    step_gpu_s: float = 1.0
    """GPU-seconds of one denoising step of one sample (measured; SP scaling ideal)."""
    denoise_steps: int = 10
    """Denoising steps per sample."""
    rollout_samples: int = 64
    """Samples per iteration (prompts x group size)."""
    train_step_s: float = 60.0
    """Wall seconds of one training update on the on-demand GPUs (measured)."""
    weight_load_s: float = 30.0
    """Seconds a (re)started node or SP group needs before it works: load weights."""
    sp_reform_s: float = 0.5
    """Seconds Spotlight's surviving SP members need to re-form a group (measured)."""
    loss_detect_s: float = 3.0
    """Seconds to notice a silent loss (heartbeat liveness), for both spot strategies."""
    commit_interval_steps: int = 1
    """Spotlight commits a sample's progress every this many denoising steps."""
    restart_checkpoint_steps: int = 10
    """The restart baseline keeps work every this many steps (default: a whole sample)."""
    restart_scope: Literal["group", "pool"] = "group"
    """What a preemption restarts in the restart baseline: the lost node's SP ``group``, or
    the whole spot ``pool`` (one TorchElastic job over every spot node)."""
    max_sim_s: float = 30 * 24 * 3600.0
    """Give up (ValueError) if the target is not reached within this simulated time."""

    def __post_init__(self) -> None:
        for name in (
            "ondemand_gpus",
            "gpus_per_node",
            "sp_degree",
            "denoise_steps",
            "rollout_samples",
            "commit_interval_steps",
            "restart_checkpoint_steps",
        ):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("step_gpu_s", "max_sim_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        for name in ("train_step_s", "weight_load_s", "sp_reform_s", "loss_detect_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.restart_scope not in ("group", "pool"):
            raise ValueError(f"restart_scope must be 'group' or 'pool', got {self.restart_scope!r}")

    @property
    def nodes_per_group(self) -> int:
        return max(1, math.ceil(self.sp_degree / self.gpus_per_node))

    @property
    def step_wall_s(self) -> float:
        """Wall seconds of one step of one sample on one SP group."""
        return self.step_gpu_s / self.sp_degree

    @property
    def rollout_gpu_s(self) -> float:
        """GPU-seconds of one iteration's rollouts."""
        return self.rollout_samples * self.denoise_steps * self.step_gpu_s


@dataclass
class StrategyResult:
    """What one strategy did over the trace."""

    strategy: str
    iterations: int
    wall_s: float
    timeline: list[tuple[float, int]]
    """(simulated seconds, iterations completed) after each iteration."""
    cost: CostSummary
    preemptions: int = 0
    """Spot nodes removed while this strategy was running."""
    preemptions_with_notice: int = 0
    gpu_s_lost: float = 0.0
    """GPU-seconds of rollout work thrown away (on the critical path)."""
    restarts: int = 0
    """``restart``: group restarts (one per removal of a working node, even a one-node
    group, whose replacement must load weights anyway); ``spotlight``: SP re-forms (only
    when the group had surviving members)."""
    explore_gpu_s: float = 0.0
    """Spot GPU-seconds available for exploration during training (``spotlight`` only)."""
    explore_gpu_s_lost: float = 0.0
    spot_gpu_s_busy: float = 0.0
    """Spot GPU-seconds spent on rollouts (useful or later lost)."""
    steps_lost: float = 0.0
    """Lost work in denoising steps of one sample (``gpu_s_lost / step_gpu_s``)."""

    def to_dict(self) -> dict[str, object]:
        return {
            "strategy": self.strategy,
            "iterations": self.iterations,
            "wall_s": self.wall_s,
            "timeline": [list(p) for p in self.timeline],
            "cost": self.cost.to_dict(),
            "preemptions": self.preemptions,
            "preemptions_with_notice": self.preemptions_with_notice,
            "gpu_s_lost": self.gpu_s_lost,
            "steps_lost": self.steps_lost,
            "restarts": self.restarts,
            "explore_gpu_s": self.explore_gpu_s,
            "explore_gpu_s_lost": self.explore_gpu_s_lost,
        }


@dataclass
class ProjectionResult:
    """The three strategies side by side, labelled as a projection."""

    results: dict[str, StrategyResult]
    config: ProjectionConfig
    iterations_needed: IterationsNeeded
    prices: Prices
    label: str = "projection (discrete-event simulation from measured per-step costs)"

    def ratio_vs_ondemand(self, strategy: str, what: Literal["iters", "cost", "wall"]) -> float:
        """How many times fewer iterations / dollars / seconds than ``ondemand``."""
        a, b = self.results["ondemand"], self.results[_check_strategy(strategy)]
        num, den = {
            "iters": (a.iterations, b.iterations),
            "cost": (a.cost.total_dollars, b.cost.total_dollars),
            "wall": (a.wall_s, b.wall_s),
        }[what]
        return math.inf if den == 0 else num / den

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "config": asdict(self.config),
            "iterations_needed": asdict(self.iterations_needed),
            "prices": asdict(self.prices),
            "strategies": {k: v.to_dict() for k, v in self.results.items()},
            "iters_ratio_vs_ondemand": {s: self.ratio_vs_ondemand(s, "iters") for s in STRATEGIES},
            "cost_ratio_vs_ondemand": {s: self.ratio_vs_ondemand(s, "cost") for s in STRATEGIES},
            "wall_ratio_vs_ondemand": {s: self.ratio_vs_ondemand(s, "wall") for s in STRATEGIES},
        }


def _check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {STRATEGIES}")
    return strategy


@dataclass
class _Node:
    name: str
    added_at: float
    ready_at: float
    noticed: bool = False
    working: bool = True
    """False once a noticed Spotlight node has stopped pulling work."""
    work_start: float = field(default=0.0)


def project(
    trace: SpotTrace,
    *,
    config: ProjectionConfig,
    prices: Prices,
    iterations_needed: IterationsNeeded,
) -> ProjectionResult:
    """Simulate all three strategies over the same trace."""
    results = {
        s: simulate(
            s, trace, config=config, prices=prices, iterations=iterations_needed.for_strategy(s)
        )
        for s in STRATEGIES
    }
    return ProjectionResult(results, config, iterations_needed, prices)


def simulate(
    strategy: str,
    trace: SpotTrace,
    *,
    config: ProjectionConfig,
    prices: Prices,
    iterations: int,
) -> StrategyResult:
    """Run one strategy until ``iterations`` are done; see the module docstring."""
    return _Sim(_check_strategy(strategy), trace, config, prices, iterations).run()


class _Sim:
    """The event loop of one strategy. Time advances from event to event; between two
    events the set of working GPUs is constant, so rollout progress is linear."""

    def __init__(
        self, strategy: str, trace: SpotTrace, cfg: ProjectionConfig, prices: Prices, iters: int
    ) -> None:
        self.s = strategy
        self.cfg = cfg
        self.prices = prices
        self.iters = iters
        self.uses_spot = strategy != "ondemand"
        self.events = list(trace.events) if self.uses_spot else []
        self.nodes: dict[str, _Node] = {}  # alive, in arrival order
        self.t = 0.0
        self.phase: Literal["rollout", "train"] = "rollout"
        self.phase_start = 0.0
        self.remaining = cfg.rollout_gpu_s  # rollout GPU-s left in this phase
        self.train_end = 0.0
        self.done = 0
        self.spot_meter_intervals: list[tuple[float, float]] = []
        self.res = StrategyResult(strategy, 0, 0.0, [], CostMeter(prices).summary())

    # ---- rates -------------------------------------------------------------------------
    def _spot_gpus_up(self, t: float) -> int:
        g = self.cfg.gpus_per_node
        return sum(g for n in self.nodes.values() if n.working and n.ready_at <= t + _EPS)

    def _next_ready(self) -> float:
        pending = [
            n.ready_at for n in self.nodes.values() if n.working and n.ready_at > self.t + _EPS
        ]
        return min(pending, default=math.inf)

    # ---- losses ------------------------------------------------------------------------
    def _since_save(self, node: _Node, interval_s: float) -> float:
        """Seconds of work a node did since its last save, in the current phase."""
        start = max(node.ready_at, node.work_start, self.phase_start)
        if not node.working or self.t <= start:
            return 0.0
        elapsed = self.t - start
        return elapsed - math.floor(elapsed / interval_s + _EPS) * interval_s

    def _group_of(self, name: str) -> list[_Node]:
        k = self.cfg.nodes_per_group
        alive = list(self.nodes)
        i = alive.index(name)
        lo = (i // k) * k
        return [self.nodes[n] for n in alive[lo : lo + k]]

    def _lose(self, gpu_s: float) -> None:
        if self.phase == "rollout":
            self.res.gpu_s_lost += gpu_s
            self.remaining += gpu_s
        else:
            self.res.explore_gpu_s_lost += gpu_s

    def _preempt(self, name: str, *, noticed_at: float | None, at_notice: bool) -> None:
        """A node leaves (at its removal, or at its notice for Spotlight)."""
        cfg, g = self.cfg, self.cfg.gpus_per_node
        group = self._group_of(name)
        node = self.nodes[name]
        survivors = [n for n in group if n is not node]
        active = self.phase == "rollout" or self.s == "spotlight"
        if self.s == "restart":
            if cfg.restart_scope == "pool":
                group = [n for n in self.nodes.values() if n.working]
                survivors = [n for n in group if n is not node]
            interval = cfg.restart_checkpoint_steps * cfg.step_wall_s
            if active:
                self._lose(sum(self._since_save(n, interval) for n in group) * g)
            detect = 0.0 if at_notice else cfg.loss_detect_s
            for n in survivors:
                n.ready_at = self.t + detect + cfg.weight_load_s
                n.work_start = n.ready_at
            self.res.restarts += 1
        else:
            if at_notice:
                # finishes its step and commits if the notice leaves time for one step
                assert noticed_at is not None
                lead = self._removal_at(name) - noticed_at
                if active and lead + _EPS < cfg.step_wall_s:
                    # cannot finish the step in flight: back to the last step boundary
                    self._lose(sum(self._since_save(n, cfg.step_wall_s) for n in group) * g)
                stall = cfg.sp_reform_s
            else:
                interval = cfg.commit_interval_steps * cfg.step_wall_s
                if active:
                    self._lose(sum(self._since_save(n, interval) for n in group) * g)
                stall = cfg.loss_detect_s + cfg.sp_reform_s
            for n in survivors:
                n.ready_at = max(n.ready_at, self.t + stall)
                n.work_start = n.ready_at
            if survivors:
                self.res.restarts += 1

    def _removal_at(self, name: str) -> float:
        for e in self.events:
            if e.node == name and e.event == "remove" and e.t_s >= self.t - _EPS:
                return e.t_s
        return math.inf

    # ---- trace events ------------------------------------------------------------------
    def _apply(self, ev_index: int) -> None:
        e = self.events[ev_index]
        cfg = self.cfg
        if e.event == "add":
            ready = self.t + cfg.weight_load_s
            self.nodes[e.node] = _Node(e.node, self.t, ready, work_start=ready)
        elif e.event == "notice":
            node = self.nodes[e.node]
            node.noticed = True
            if self.s == "spotlight" or (self.s == "restart" and cfg.restart_scope == "pool"):
                self._preempt(e.node, noticed_at=self.t, at_notice=True)
                node.working = False
        else:
            node = self.nodes[e.node]
            self.res.preemptions += 1
            self.res.preemptions_with_notice += int(node.noticed)
            if node.working:
                self._preempt(e.node, noticed_at=None, at_notice=False)
            self.spot_meter_intervals.append((node.added_at, self.t))
            del self.nodes[e.node]

    # ---- main loop ---------------------------------------------------------------------
    def run(self) -> StrategyResult:
        cfg = self.cfg
        ev_i = 0
        while self.done < self.iters:
            if self.t > cfg.max_sim_s:
                raise ValueError(
                    f"{self.s}: {self.done}/{self.iters} iterations after max_sim_s="
                    f"{cfg.max_sim_s:g} simulated seconds; raise max_sim_s or check the inputs"
                )
            # apply every trace event due now
            while ev_i < len(self.events) and self.events[ev_i].t_s <= self.t + _EPS:
                self._apply(ev_i)
                ev_i += 1
            t_event = self.events[ev_i].t_s if ev_i < len(self.events) else math.inf
            t_next = min(t_event, self._next_ready())
            spot_up = self._spot_gpus_up(self.t) if self.uses_spot else 0
            if self.phase == "rollout":
                rate = cfg.ondemand_gpus + spot_up
                t_done = self.t + self.remaining / rate
                t_new = min(t_next, t_done)
                self.res.spot_gpu_s_busy += spot_up * (t_new - self.t)
                self.remaining -= rate * (t_new - self.t)
                self.t = t_new
                if self.remaining <= _EPS * max(1.0, cfg.rollout_gpu_s):
                    self._start_phase("train")
                    self.train_end = self.t + cfg.train_step_s
            else:
                t_new = min(t_next, self.train_end)
                if self.s == "spotlight":
                    self.res.explore_gpu_s += spot_up * (t_new - self.t)
                self.t = t_new
                if self.t >= self.train_end - _EPS:
                    self.done += 1
                    self.res.timeline.append((self.t, self.done))
                    self._start_phase("rollout")
                    self.remaining = cfg.rollout_gpu_s
        return self._finish()

    def _start_phase(self, phase: Literal["rollout", "train"]) -> None:
        self.phase = phase
        self.phase_start = self.t
        for n in self.nodes.values():
            n.work_start = max(n.ready_at, self.t)

    def _finish(self) -> StrategyResult:
        meter = CostMeter(self.prices)
        meter.add_interval("ondemand", 0.0, self.t, gpus=self.cfg.ondemand_gpus)
        if self.uses_spot:
            intervals = [(a, min(b, self.t)) for a, b in self.spot_meter_intervals if a < self.t]
            intervals += [(n.added_at, self.t) for n in self.nodes.values()]
            meter.add_intervals("spot", intervals, gpus=self.cfg.gpus_per_node)
        self.res.iterations = self.done
        self.res.wall_s = self.t
        self.res.cost = meter.summary()
        self.res.steps_lost = self.res.gpu_s_lost / self.cfg.step_gpu_s
        return self.res


def summarize(result: ProjectionResult) -> Mapping[str, CostSummary]:
    """Per-strategy cost summaries, ready for :func:`spotlight.actors.spot.prices.cost_table`."""
    return {k: v.cost for k, v in result.results.items()}
