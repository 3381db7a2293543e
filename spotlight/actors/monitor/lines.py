"""Piped output: one JSON line per event or iteration, read from successive monitor states.

A terminal gets the live view; a pipe (a log file, CI, ``| jq``) gets this instead of the
whole state (~2 KB every 2 s). :class:`EventLines` compares each new
:class:`~spotlight.actors.monitor.actor.MonitorState` with what it has already reported and
returns the lines for what happened in between:

==============  ================================================================  ==========
event           fields                                                            from
==============  ================================================================  ==========
``iteration``   iteration, reward_mean, reward_std, loss, iteration_s, explored,  trainer,
                random (seeds of that batch), cost_usd, usd_per_hour, live_nodes  exploration,
                                                                                  cost
``validation``  iteration, score, spread                                          validation
``preemption``  node, kind (notice/silent/rejoined), lead_s, steps_lost            preemption
``node``        node, kind, status: a node that appeared or changed status        node
``missed``      topic, records: more records arrived than the state's history     (any)
                holds, so some lines were not printed (metrics.jsonl has them all)
==============  ================================================================  ==========

Pure: no I/O, no clock. New records are found by counting: ``records_by_topic[topic]``
grows by one per record and ``history[topic]`` keeps the newest ones, so the last
``grown`` history items are the new ones.
"""

from __future__ import annotations

from typing import Any

from spotlight.actors.monitor.actor import MonitorState
from spotlight.actors.monitor.records import (
    CostRecord,
    ExplorationRecord,
    NodeRecord,
    PreemptionRecord,
    TrainerRecord,
    ValidationRecord,
)

__all__ = ["EventLines"]


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


class EventLines:
    """Remembers what it reported; :meth:`lines` gives the events new in a state."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._node_status: dict[str, str] = {}
        self._explored: dict[int, ExplorationRecord] = {}

    def lines(self, state: MonitorState) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for item in self._new(state, ExplorationRecord.TOPIC, out):
            if (e := ExplorationRecord.read(item["fields"])) is not None:
                self._explored[e.iteration] = e
        cost = None
        for entry in state.latest.get(CostRecord.TOPIC, {}).values():
            cost = CostRecord.read(entry["fields"])
        for item in self._new(state, TrainerRecord.TOPIC, out):
            if (t := TrainerRecord.read(item["fields"])) is not None:
                out.append(self._iteration(t, cost))
        for item in self._new(state, ValidationRecord.TOPIC, out):
            if (v := ValidationRecord.read(item["fields"])) is not None:
                out.append(
                    {"event": "validation", "iteration": v.iteration,
                     "score": _round(v.score), "spread": _round(v.spread)}
                )  # fmt: skip
        for item in self._new(state, PreemptionRecord.TOPIC, out):
            if (p := PreemptionRecord.read(item["fields"])) is not None:
                out.append(
                    {"event": "preemption", "node": p.node, "kind": p.kind,
                     "lead_s": _round(p.lead_s, 1), "steps_lost": p.steps_lost}
                )  # fmt: skip
        out.extend(self._nodes(state))
        return out

    def _new(
        self, state: MonitorState, topic: str, out: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """History items of ``topic`` that arrived since the last call (oldest first)."""
        total = state.records_by_topic.get(topic, 0)
        grown = total - self._seen.get(topic, 0)
        self._seen[topic] = total
        if grown <= 0:
            return []
        history = state.history.get(topic, [])
        if grown > len(history):
            out.append({"event": "missed", "topic": topic, "records": grown - len(history)})
        return history[-grown:] if history else []

    def _iteration(self, t: TrainerRecord, cost: CostRecord | None) -> dict[str, Any]:
        line: dict[str, Any] = {
            "event": "iteration",
            "iteration": t.iteration,
            "reward_mean": _round(t.reward_mean),
            "reward_std": _round(t.reward_std),
            "loss": _round(t.loss, 6),
            "iteration_s": _round(t.iteration_s, 3),
        }
        e = self._explored.pop(t.iteration, None)
        if e is not None:
            line |= {"explored": e.seeds, "random": e.fallbacks}
        for old in [k for k in self._explored if k < t.iteration]:
            del self._explored[old]
        if cost is not None:
            line |= {
                "cost_usd": round(cost.total_usd, 2),
                "usd_per_hour": round(cost.usd_per_hour, 2),
                "live_nodes": cost.live_nodes,
            }
        return line

    def _nodes(self, state: MonitorState) -> list[dict[str, Any]]:
        out = []
        for source, entry in state.latest.get(NodeRecord.TOPIC, {}).items():
            node = NodeRecord.read(entry["fields"])
            if node is None or self._node_status.get(source) == node.status:
                continue
            self._node_status[source] = node.status
            out.append({"event": "node", "node": source, "kind": node.kind, "status": node.status})
        return out
