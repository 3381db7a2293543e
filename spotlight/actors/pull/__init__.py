"""Pull workers: the shell the explorer and the rollout worker share.

``worker`` (PullWorker: the weight endpoints ``load_weights``/``weight_chunk``, ``drain``,
the owned loop and heartbeat tasks, and the pull knobs, each written once; PullKnobs).
Imports ``scheduling`` and ``weights``; ``rollout`` and ``exploration`` subclass it.
"""
