"""LoRA adapters on the DiT policy: what makes the real model trainable and its versions small.

Why: full fine-tuning of the 20B Qwen-Image transformer needs its bf16 weights (41 GB), their
gradients and AdamW's two float32 moments (~160 GB more) on every data-parallel rank, and
every published weight version is the whole 41 GB, streamed to every spot node each
iteration. With LoRA (rank r on the attention projections, as the public Flow-GRPO and
DiffusionNFT recipes train Qwen-Image and SD3.5) the frozen base stays on each GPU once and a
version is the adapters only (``scripts/bench_lora.py`` measures both sizes). The KL
reference is the same model with its adapters switched off, so it costs no second copy.

The adapters are diffusers' own (``PeftAdapterMixin.add_adapter`` over ``peft``), so a trained
adapter can be saved in diffusers' LoRA format (:func:`save_diffusers_lora`) and loaded by the
Qwen-Image pipeline with ``load_lora_weights``. ``peft`` is an optional dependency (the
``lora`` extra): nothing here imports it until an adapter is attached.

Which tensors make a version: :func:`tunable_state` is every trainable tensor of the policy,
i.e. the whole ``state_dict`` without LoRA, the adapter tensors only with it. Publishers send
it, receivers check and load it with :func:`load_tunable_state`; without LoRA that is exactly
``state_dict``/``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from spotlight.models.dit import DiTPolicy, TextEmbedding
from spotlight.models.lora_settings import DEFAULT_TARGETS, LoraSettings

__all__ = [
    "AdapterFreeReference",
    "adapters_disabled",
    "attach_lora",
    "load_tunable_state",
    "save_diffusers_lora",
    "tunable_shapes",
    "tunable_state",
]


ADAPTER_NAME = "default"


def _require_peft() -> None:
    if importlib.util.find_spec("peft") is None:
        raise ImportError(
            "LoRA needs the 'peft' package: pip install 'spotlight[lora]' (or pip install peft)"
        )


def attach_lora(policy: DiTPolicy, settings: LoraSettings) -> DiTPolicy:
    """Add adapters to ``policy``'s transformer in place and freeze everything else.

    Attach after loading the base weights: the adapted layers rename the base tensors
    (``to_q.weight`` becomes ``to_q.base_layer.weight``). The text encoder is frozen too (the
    real model's is never trained; the tiny one follows so both configs train the same set).
    """
    _require_peft()
    from peft import LoraConfig

    if policy.lora is not None:
        raise ValueError(f"policy already has LoRA adapters {policy.lora}; attach once")
    names = {name for name, _ in policy.transformer.named_modules()}
    missing = [t for t in settings.targets if not any(n.endswith(t) for n in names)]
    if missing:
        raise ValueError(
            f"LoRA targets {missing} match no module of the {policy.config.name!r} transformer; "
            f"valid targets include {list(DEFAULT_TARGETS)}"
        )
    policy.requires_grad_(False)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        target_modules=list(settings.targets),
        lora_dropout=0.0,
        init_lora_weights=True,
    )
    rng = torch.random.get_rng_state()
    try:
        torch.manual_seed(settings.init_seed)
        policy.transformer.add_adapter(config, adapter_name=ADAPTER_NAME)  # type: ignore[operator]
    finally:
        torch.random.set_rng_state(rng)
    device = policy.device
    for name, param in policy.transformer.named_parameters():
        if "lora_" in name:
            # Adapters train in float32 whatever the base dtype (bf16 on GPUs): their updates
            # are small relative to their values and would round away in bf16.
            param.data = param.data.to(device=device, dtype=torch.float32)
            param.requires_grad_(True)
    policy.lora = settings
    return policy


def tunable_state(policy: DiTPolicy) -> dict[str, Tensor]:
    """The tensors a weight version is made of (detached, on their current device).

    Without LoRA the whole ``state_dict`` (buffers included); with LoRA the adapters only.
    """
    state = policy.state_dict()
    if policy.lora is None:
        return {k: v.detach() for k, v in state.items()}
    trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
    return {k: state[k].detach() for k in state if k in trainable}


def tunable_shapes(policy: DiTPolicy) -> dict[str, tuple[int, ...]]:
    """Names and shapes of :func:`tunable_state` without copying anything."""
    return {k: tuple(v.shape) for k, v in tunable_state(policy).items()}


def load_tunable_state(policy: DiTPolicy, state: Mapping[str, Tensor]) -> None:
    """Load a weight version: exactly the tensors :func:`tunable_state` names, no others.

    RuntimeError naming the first missing or unexpected tensor, like ``load_state_dict``.
    """
    if policy.lora is None:
        policy.load_state_dict(dict(state), strict=True)
        return
    own = tunable_state(policy)
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise RuntimeError(
            f"LoRA weights do not match the policy's adapters: {len(missing)} missing "
            f"(e.g. {missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]})"
        )
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(state[name])


@contextmanager
def adapters_disabled(policy: DiTPolicy) -> Iterator[DiTPolicy]:
    """``policy`` computing as its frozen base (the KL reference) inside the block.

    The switch is on the shared module: nothing else may run ``policy`` meanwhile (the
    trainer's loss pass is the only user, see actors/trainer/loop.py).
    """
    if policy.lora is None:
        raise ValueError("the policy has no LoRA adapters to disable")
    policy.transformer.disable_adapters()  # type: ignore[operator]
    try:
        yield policy
    finally:
        policy.transformer.enable_adapters()  # type: ignore[operator]


class AdapterFreeReference:
    """The KL reference of a LoRA policy: the same module with its adapters off, no copy."""

    def __init__(self, policy: DiTPolicy) -> None:
        if policy.lora is None:
            raise ValueError("AdapterFreeReference needs a policy with LoRA adapters")
        self.policy = policy

    def encode_prompts(self, prompts: Sequence[str]) -> TextEmbedding:
        return self.policy.encode_prompts(prompts)  # frozen under LoRA: the base's encoder

    def __call__(self, x_BNC: Tensor, sigma_B: Tensor, text: TextEmbedding) -> Tensor:
        with torch.no_grad(), adapters_disabled(self.policy):
            return self.policy(x_BNC, sigma_B, text)


def save_diffusers_lora(policy: DiTPolicy, directory: str | Path) -> Path:
    """The adapters in diffusers' LoRA format (``pytorch_lora_weights.safetensors``, keys
    under ``transformer.``), which ``QwenImagePipeline.load_lora_weights(directory)`` loads
    for inference."""
    if policy.lora is None:
        raise ValueError("the policy has no LoRA adapters to save")
    from diffusers import QwenImagePipeline
    from peft.utils import get_peft_model_state_dict

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    layers = get_peft_model_state_dict(policy.transformer, adapter_name=ADAPTER_NAME)
    config: Any = policy.transformer.peft_config[ADAPTER_NAME]  # type: ignore[index]
    QwenImagePipeline.save_lora_weights(
        out,
        transformer_lora_layers=layers,
        safe_serialization=True,
        transformer_lora_adapter_metadata=config.to_dict(),  # alpha: the scale travels too
    )
    return out
