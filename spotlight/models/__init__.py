"""Pure computation for Spotlight: DiT policy, sampler, GRPO, rewards, Ulysses. No actors, no sockets.

Import from the submodules (``spotlight.models.dit``, ``.sampler``, ``.grpo``, ``.flow_grpo``,
``.rewards``, ``.scenes``, ``.ulysses``): this package deliberately re-exports nothing, so that
a light submodule such as ``vocab`` or ``scenes`` does not pay for importing diffusers.
"""
