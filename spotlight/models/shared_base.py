"""One frozen base, several LoRA policies: what lets a spot node hold the 20B base once.

Why: a spot node runs an explorer (weights θ_{k−1}) and a rollout worker (θ_k) side by side.
Built independently, each loads its own base: 2 × 41 GB for Qwen-Image, which does not fit an
80 GB GPU (``benchmarks/results/memory.json``: 84.1 GB against 43.3 GB with one shared base).
With LoRA the two versions differ in the adapters only, so :func:`policy_on_shared_base` gives
the second role a policy whose frozen tensors *are* the first's (same storage, no copy) and
whose adapters are its own. Each role then loads its versions into its own adapters and
computes without switching anything on a shared module, so the roles need no lock between
their forwards (frozen weights are only read); a node still keeps them from sampling at the
same time (``rollout/worker.py``'s ``Occupancy``) to bound activation memory.

Full fine-tuning has no frozen base: a version is every tensor, θ_{k−1} and θ_k differ
everywhere, and each role needs its own copy (refused here with that reason).

:func:`storage_count` is the proof the tests and the memory bench use: distinct storages (by
data pointer) under a set of modules, and their bytes.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

from torch import nn

from spotlight.models.dit import DiTPolicy

__all__ = ["StorageCount", "policy_on_shared_base", "storage_count"]


def policy_on_shared_base(policy: DiTPolicy) -> DiTPolicy:
    """A new policy computing on ``policy``'s frozen tensors, with adapters of its own.

    The new adapters start as a copy of ``policy``'s current ones (a role loads its own
    version before sampling). The frozen parameters and buffers, the text encoder and the image
    decoder are the same objects as ``policy``'s: loading a version into either policy never
    touches the other's adapters, and neither may change a frozen tensor in place.
    """
    if policy.lora is None:
        raise ValueError(
            "only a LoRA policy has a frozen base to share: under full fine-tuning a weight "
            "version is every tensor and the roles hold different versions, so each builds "
            "its own policy"
        )
    frozen = [
        t for t in itertools.chain(policy.parameters(), policy.buffers()) if not t.requires_grad
    ]
    memo: dict[int, object] = {id(t): t for t in frozen}
    # Frozen callables kept outside the parameters (a real model's text encoder, ~16.6 GB,
    # and its VAE): shared as they are, never deep-copied.
    for outside in (policy._prompt_encoder, policy._image_decoder):
        if outside is not None:
            memo[id(outside)] = outside
    clone = copy.deepcopy(policy, memo)
    clone.lora = policy.lora
    return clone


@dataclass(frozen=True)
class StorageCount:
    """Distinct tensor storages under some modules (parameters and buffers)."""

    storages: int
    bytes: int
    trainable_bytes: int
    """Bytes of storages holding a trainable tensor (the adapters under LoRA)."""

    @property
    def frozen_bytes(self) -> int:
        return self.bytes - self.trainable_bytes


def storage_count(*modules: nn.Module) -> StorageCount:
    """Count each storage once, however many modules or tensors view it (by data pointer)."""
    sizes: dict[tuple[str, int], int] = {}
    trainable: set[tuple[str, int]] = set()
    for module in modules:
        for t in itertools.chain(module.parameters(), module.buffers()):
            storage = t.untyped_storage()
            key = (str(t.device), storage.data_ptr())
            sizes[key] = storage.nbytes()
            if t.requires_grad:
                trainable.add(key)
    return StorageCount(
        storages=len(sizes),
        bytes=sum(sizes.values()),
        trainable_bytes=sum(sizes[k] for k in trainable),
    )
