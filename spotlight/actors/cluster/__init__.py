"""Membership on the on-demand node.

``coordinator`` (Coordinator: nodes register, get their offer, leave; cost and preemptions).
Imports ``spot``, ``scheduling``, ``weights`` and ``monitor``.
"""
