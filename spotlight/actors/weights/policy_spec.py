"""What a sampling actor away from the trainer builds before the first weights arrive.

Full fine-tuning publishes every tensor, so an explorer or rollout worker builds the trainer's
config at random and waits for a version. LoRA publishes the adapters only (a version of the
20B model is then megabytes, not 41 GB), so the receiver must already hold the frozen base:
it loads the base checkpoint from its own disk (the trainer's path, or the spot node's
``--base``, for nodes that keep it elsewhere) and attaches the same adapters. The
coordinator sends the spec to every node in ``register_node``'s answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spotlight.models.dit import DiTConfig, DiTPolicy, build_policy, get_config
from spotlight.models.lora import attach_lora
from spotlight.models.lora_settings import LoraSettings

__all__ = ["PolicySpec", "model_config"]


@dataclass(frozen=True, kw_only=True)
class PolicySpec:
    """The trainer's model as a receiver must build it: its config, and with LoRA the frozen
    base it loads itself and the adapters it attaches."""

    config: DiTConfig
    lora: LoraSettings | None = None
    base: str | None = None
    """Base checkpoint directory the adapters sit on (required with ``lora``)."""

    def __post_init__(self) -> None:
        if self.lora is not None and not self.base:
            raise ValueError("a LoRA policy spec needs the base checkpoint its adapters sit on")

    def build(self, device: str | torch.device | None = None) -> DiTPolicy:
        """The receiver's policy: random weights awaiting a full version, or (LoRA) the base
        from disk with fresh adapters awaiting an adapter version. ``device``: where it
        computes (None: the GPU when there is one). Blocking file I/O."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.lora is None:
            return build_policy(self.config).to(device)
        from spotlight.models.bases import load_base, same_shape
        from spotlight.models.checkpoint import CheckpointError
        from spotlight.models.qwen_image import ModelDirError

        assert self.base is not None
        try:
            policy = load_base(self.base, image_size=self.config.image_size, device=device)
        except (CheckpointError, ModelDirError) as e:
            raise ValueError(
                f"cannot load the LoRA base {self.base}: {e}; LoRA runs publish adapters only, "
                "so every spot node needs the trainer's base on its own disk (the same path, "
                "or launch_spot.sh --base DIR)"
            ) from e
        if policy.lora is not None:
            raise ValueError(f"the base {self.base} already has LoRA adapters; give the plain base")
        if not same_shape(policy.config, self.config):
            raise ValueError(
                f"the base at {self.base} is {policy.config}, the trainer's is {self.config}: "
                "give this node the trainer's base (launch_spot.sh --base DIR)"
            )
        return attach_lora(policy, self.lora)

    def lora_offer(self) -> dict[str, Any] | None:
        """The ``lora`` entry of ``register_node``'s answer (plain data), None without LoRA."""
        if self.lora is None:
            return None
        return {"settings": self.lora.to_dict(), "base": self.base}

    @classmethod
    def from_answer(
        cls,
        model: DiTConfig | str | Mapping[str, Any],
        lora: Mapping[str, Any] | None = None,
        *,
        base_override: str | Path | None = None,
    ) -> PolicySpec:
        """The spec from ``register_node``'s ``model`` (a config, its dict, or a name) and
        ``lora`` entries; ``base_override``: this node's own copy of the base (LoRA only).
        ValueError naming what is unusable."""
        config = model_config(model)
        if lora is None:
            return cls(config=config)
        try:
            settings = LoraSettings.from_dict(lora["settings"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"unusable LoRA offer {dict(lora)!r}: {e}") from e
        base = str(base_override) if base_override is not None else lora.get("base")
        return cls(config=config, lora=settings, base=base)


def model_config(data: DiTConfig | str | Mapping[str, Any]) -> DiTConfig:
    """The policy config from any form it travels in.

    A spot node learns the trainer's model from the coordinator as plain data
    (``DiTConfig.to_dict()``; msgpack turns its tuples into lists, which
    :meth:`DiTConfig.from_dict` restores), so any base checkpoint can be explored, not just
    a named config; a name (``"tiny"``, the explorer CLI's ``--model``) still works.
    """
    if isinstance(data, DiTConfig):
        return data
    if isinstance(data, str):
        return get_config(data)
    if isinstance(data, Mapping):
        return DiTConfig.from_dict(dict(data))
    raise ValueError(
        f"model must be a DiTConfig, a config name or a DiTConfig as a dict, got {data!r}"
    )
