"""Restart policies: when a supervised child that failed gets a new incarnation.

A child fails when a ``tell`` handler raises (an ``ask``/``stream`` handler's error
goes back to its caller instead) or when its ``on_start`` raises during a restart.
Each restart builds a fresh instance with ``generation + 1``; refs carry the
generation they were made for, so a message aimed at the old incarnation is
rejected with :class:`~spotlight.runtime.errors.StaleGeneration` (a fencing token).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["RestartPolicy", "RestartTracker"]


@dataclass(frozen=True, kw_only=True)
class RestartPolicy:
    """How a parent treats a failed child. Build it with :meth:`never` or :meth:`on_failure`."""

    kind: Literal["never", "on_failure"]
    """``never``: a failed child stays stopped. ``on_failure``: restart within the budget."""
    max_restarts: int = 0
    """Restarts allowed inside any window of ``within_s`` seconds."""
    within_s: float = 60.0
    """Length of the sliding window that ``max_restarts`` counts in."""

    def __post_init__(self) -> None:
        if self.kind not in ("never", "on_failure"):
            raise ValueError(f"RestartPolicy kind={self.kind!r}; valid: 'never', 'on_failure'")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts={self.max_restarts} must be >= 0")
        if not self.within_s > 0:
            raise ValueError(f"within_s={self.within_s} must be > 0 seconds")

    @classmethod
    def never(cls) -> RestartPolicy:
        """A failed child is stopped and stays stopped."""
        return cls(kind="never")

    @classmethod
    def on_failure(cls, *, max_restarts: int = 3, within_s: float = 60.0) -> RestartPolicy:
        """Restart a failed child, at most ``max_restarts`` times in ``within_s`` seconds."""
        return cls(kind="on_failure", max_restarts=max_restarts, within_s=within_s)


@dataclass
class RestartTracker:
    """Sliding-window restart budget of one child (pure; the clock is passed in)."""

    policy: RestartPolicy
    restarts: deque[float] = field(default_factory=deque)
    total_restarts: int = 0

    def allow(self, now: float) -> bool:
        """Record a failure at ``now``; True if the policy permits another restart."""
        if self.policy.kind == "never":
            return False
        while self.restarts and now - self.restarts[0] > self.policy.within_s:
            self.restarts.popleft()
        if len(self.restarts) >= self.policy.max_restarts:
            return False
        self.restarts.append(now)
        self.total_restarts += 1
        return True
