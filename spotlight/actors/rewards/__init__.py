"""Reward scoring in actors, so a slow reward never stalls sampling.

``actor`` (RewardActor and the registry's names), ``pool`` (reward worker processes),
``client`` (the trainer's reward function over them). Imports ``monitor``.
"""
