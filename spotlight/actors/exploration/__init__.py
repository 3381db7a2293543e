"""Seed exploration for the next iteration's prompts.

``bandit`` (pure budget split), ``planner`` (PlannerActor: plans, submits, picks seeds),
``explorer`` (ExplorerActor on a spot node), ``backends`` (the sampling backend protocol and
the in-process one), ``sp_backend`` (the backend over an elastic SP group). Imports
``pull`` (the explorer's base), ``scheduling``, ``weights``, ``sp`` and ``monitor``.
"""
