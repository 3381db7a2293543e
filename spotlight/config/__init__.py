"""The ``spotlight run`` configuration: a tree of typed sections and its loader.

Each section builds its component's config itself (``cfg.rollout.settings()``,
``cfg.trainer_loop()``, ...), so nodes never copy fields by hand.
"""
