"""The reward/validation curve PNG every training run writes (local trainer and the system)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def plot_curve(records: Sequence[dict[str, Any]], out: Path) -> None:
    """Train reward (per iteration) and validation score (± spread) against iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [r for r in records if r["kind"] == "iteration"]
    vals = [r for r in records if r["kind"] == "validation"]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    if its:
        ax.plot(
            [r["iteration"] for r in its],
            [r["reward_mean"] for r in its],
            lw=0.8,
            alpha=0.6,
            label="train reward (SDE)",
        )
    if vals:
        x = [r["iteration"] for r in vals]
        y = np.array([r["val_score"] for r in vals])
        s = np.array([r["val_spread"] for r in vals])
        ax.plot(x, y, "o-", color="C3", label="validation score (ODE, held-out)")
        ax.fill_between(x, y - s, y + s, color="C3", alpha=0.15)
    ax.set_xlabel("iteration")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
