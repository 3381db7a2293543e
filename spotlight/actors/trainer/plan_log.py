"""The trainer's run files: plans.jsonl (seeds before use) and trainer.jsonl (its curve).

Why plans are recorded before they are used: explored seeds depend on timing (which
explorer answered before the trainer asked), so they cannot be recomputed. A process that
re-does iteration k after a crash must train on the seeds the crashed one may already
have used, or the resumed run would not equal an uninterrupted one. Random plans are
recomputable (``plan_seed``) but are recorded too, so the file tells the whole story.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from spotlight.actors.exploration.bandit import GroupChoice
from spotlight.actors.exploration.planner import SeedPlan

__all__ = [
    "PlanLog",
    "RecordLog",
    "expand_plan",
    "plan_from_json",
    "plan_seed",
    "plan_to_json",
]

log = logging.getLogger("spotlight.actors.trainer.plan_log")


def plan_to_json(plan: SeedPlan) -> dict[str, Any]:
    return dataclasses.asdict(plan)


def plan_from_json(data: dict[str, Any]) -> SeedPlan:
    d = dict(data)
    d["groups"] = [
        GroupChoice(
            g["prompt"],
            tuple(int(s) for s in g["seeds"]),
            g["explored_variance"],
            g["fallback_seeds"],
        )
        for g in d["groups"]
    ]
    return SeedPlan(**d)


class PlanLog:
    """RUN_DIR/plans.jsonl: ``{"iteration": k, "plan": SeedPlan}`` per line, fsynced.

    The first plan recorded for an iteration wins: a process that re-does iteration k after
    a crash uses the seeds the crashed one may already have trained on. A torn last line
    (crash mid-write) is ignored and cut off.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.plans: dict[int, SeedPlan] = {}
        if path.exists():
            good = b""
            for raw in path.read_bytes().splitlines(keepends=True):
                try:
                    rec = json.loads(raw)
                    plan = plan_from_json(rec["plan"])
                    k = int(rec["iteration"])
                except (ValueError, KeyError, TypeError):
                    log.warning("plans.jsonl: dropping a torn or corrupt line %r", raw[:80])
                    break
                self.plans.setdefault(k, plan)
                good += raw if raw.endswith(b"\n") else raw + b"\n"
            path.write_bytes(good)

    def get(self, iteration: int) -> SeedPlan | None:
        return self.plans.get(iteration)

    def append(self, iteration: int, plan: SeedPlan) -> None:
        if iteration in self.plans:
            raise ValueError(f"iteration {iteration} already has a recorded plan")
        line = json.dumps({"iteration": iteration, "plan": plan_to_json(plan)}) + "\n"
        with self.path.open("a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.plans[iteration] = plan


def plan_seed(run_seed: int, iteration: int) -> int:
    """The seed of iteration ``iteration``'s random plan (deterministic; never reused)."""
    return (run_seed * 1_000_003 + iteration) * 7 + 3


def expand_plan(answer: SeedPlan, prompts: list[str], spare: SeedPlan) -> SeedPlan:
    """``answer`` (one group per distinct prompt) laid out over ``prompts``, which may repeat
    a prompt (iteration_prompts draws with replacement): a repeat takes the random group of
    ``spare`` at its position, counted as fallback seeds."""
    by_prompt = {gr.prompt: gr for gr in answer.groups}
    seen: set[str] = set()
    groups = []
    for i, prompt in enumerate(prompts):
        groups.append(spare.groups[i] if prompt in seen else by_prompt[prompt])
        seen.add(prompt)
    extra = [spare.groups[i] for i, p in enumerate(prompts) if prompts.index(p) != i]
    return dataclasses.replace(
        answer,
        groups=groups,
        fallback_seeds=answer.fallback_seeds + sum(len(gr.seeds) for gr in extra),
        fallback_prompts=answer.fallback_prompts + len(extra),
    )


class RecordLog:
    """Iteration/validation records as JSON lines (trainer.jsonl, and the local trainer's
    metrics.jsonl); on resume keeps the lines up to the checkpoint (later ones are redone)."""

    def __init__(self, path: Path, *, keep_through: int | None) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        if keep_through is not None and path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError):
                    rec = json.loads(line)
                    if rec["iteration"] <= keep_through:
                        self.records.append(rec)
        path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
