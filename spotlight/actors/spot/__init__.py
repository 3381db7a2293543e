"""The spot pool: traces, prices, replay and projection (no actors).

``trace`` (t_s,event,node rows), ``prices``, ``replay`` (a trace drives node processes),
``restart_pool`` (the checkpoint/restart baseline), ``projection/`` (time and cost to a
target on real traces, simulated).
Imports only ``spotlight.runtime`` and ``spotlight.models``.
"""
