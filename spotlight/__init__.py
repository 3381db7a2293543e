"""Spotlight: RL post-training of diffusion transformers that harvests spot GPUs."""

__version__ = "0.1.0"
__all__ = ["__version__"]
