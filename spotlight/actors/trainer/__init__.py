"""The trainer's loop on the on-demand node.

``loop`` (TrainerLoop: plan -> rollouts -> GRPO update -> publish), ``plan_log`` (plans.jsonl).
Imports ``exploration``, ``rollout``, ``weights`` and ``monitor``.
"""
