"""Reads a text capture of the monitor view back into its panels (for tests)."""

from __future__ import annotations

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
            elif current is not None and part:
                bodies[current].append(part)
    return bodies
