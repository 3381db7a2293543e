"""The Spotlight system, built from ``spotlight.runtime`` and ``spotlight.models``.

Actors (scheduler, rollout, preemption, sp_group, explorer, planner, monitor) are thin shells
around pure pieces tested alone (leases, journal, bandit, spot_trace, projection). Import from
the submodules: re-exporting here would make every worker process import every actor.
"""
