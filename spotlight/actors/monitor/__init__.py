"""Metrics and the monitor.

``metrics`` (MetricsPublisher and records), ``actor`` (Monitor: collects, writes JSON lines,
serves subscribers), ``view`` (the rich live view). Imports only ``spotlight.runtime``.
"""
