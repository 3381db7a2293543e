"""Rollout workers: pull the trainer's sample requests and run them.

``worker`` (RolloutWorker, one per node), ``pool`` (the on-demand node's pull pool and the
trainer's client of it). Imports ``pull`` (the worker's base), ``scheduling`` and ``weights``.
"""
