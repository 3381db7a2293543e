"""Process entry points: one module per process kind (``python -m spotlight.nodes.X``).

``ondemand`` (the trainer's node: Controller), ``spot`` (a spot node), ``pull_worker`` (a
stand-alone scheduler / rollout worker / fork server), ``explorer`` (one explorer),
``sp_member`` (one SP member), ``reward_worker`` (reward actors), ``torchrun`` (torchrun with
our exit status); ``process`` holds the plumbing they share (join flags, seconds, notice
sources, atomic writes) and ``serving`` the on-demand node's address and files.
Nodes import any actors package; nothing under ``spotlight.actors`` imports them.
"""
