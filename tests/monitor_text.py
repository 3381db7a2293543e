"""Reads a text capture of the monitor view back into its panels (for tests)."""

from __future__ import annotations

from pathlib import Path

PANELS = ("Nodes", "Actors & SP groups", "Trainer", "Validation", "Schedulers", "Exploration",
          "Preemptions", "Rewards", "Rollouts")  # fmt: skip


def panel_bodies(text: str) -> dict[str, list[str]]:
    """Each panel's non-blank lines, by title: the view has two columns, and the right one
    starts where the "Trainer" title does."""
    lines = text.splitlines()[1:]  # the header
    split = next(line.index("Trainer") for line in lines if "Trainer" in line)
    bodies: dict[str, list[str]] = {}
    for column in (0, 1):
        current = None
        for line in lines:
            part = (line[:split] if column == 0 else line[split:]).strip()
            if part in PANELS:
                current = part
                bodies[current] = []
            elif current is not None and part and not _chrome(part):
                bodies[current].append(part)
    return bodies


def _chrome(line: str) -> bool:
    """A table's header row or rule, not content."""
    return set(line) <= {"─", " "} or line.split()[:2] in (["node", "class"], ["name", "kind"])


def is_empty(line: str) -> bool:
    """A row of nothing but "—" (a panel whose topic never reported)."""
    return set(line.replace(" ", "")) <= {"—"}


def render_metrics(run_dir: Path, *, width: int = 120) -> str:
    """The monitor view of everything in ``run_dir/metrics.jsonl``, as text."""
    from io import StringIO

    from rich.console import Console

    from spotlight.actors.monitor.actor import MonitorStore
    from spotlight.actors.monitor.metrics import read_jsonl
    from spotlight.actors.monitor.view import render

    records = read_jsonl(run_dir / "metrics.jsonl")
    assert not records.bad_lines, records.bad_lines
    store = MonitorStore(clock=lambda: records.records[-1].time)
    store.apply(records.records)
    console = Console(file=StringIO(), width=width, height=40, record=True, color_system=None)
    console.print(render(store.snapshot(run_dir=str(run_dir))))
    return console.export_text()
