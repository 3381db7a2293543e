"""The node's frozen base: loaded once per spot node process, one policy per role on it.

Map (one per spot node process, ``nodes/spot.py``)::

    PolicySpec (register_node's answer)
        │ first role: spec.build()  (the base from disk + adapters: the one load)
        ▼
    NodeBase ──policy_for("explorer")──► ExplorerActor   (its adapters: θ_{k−1})
             ──policy_for("rollout")───► RolloutWorker   (its adapters: θ_k)
        every later role: models/shared_base.policy_on_shared_base(first) (no load, no copy)

Each role loads the versions it receives into its own adapters (``WeightSlot`` as before), so
the weight path is unchanged; only the frozen tensors are shared. An SP member runs in its own
process on its own GPU and holds that GPU's copy (Ulysses replicates the weights on every
member); the node process's roles share one.

Full fine-tuning (no LoRA): every role builds its own policy (the versions differ in every
tensor); ``statistics`` then shows one base per role.

Thread-safety: ``policy_for`` is called from worker threads (``asyncio.to_thread``) of
different actors; a lock makes the first build happen once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch

from spotlight.actors.weights.policy_spec import PolicySpec
from spotlight.models.dit import DiTPolicy
from spotlight.models.shared_base import policy_on_shared_base, storage_count
from spotlight.runtime.codec import register_wire_type

__all__ = ["NodeBase", "NodeBaseStats"]

log = logging.getLogger("spotlight.actors.weights.node_base")


@register_wire_type(name="spotlight.NodeBaseStats")
@dataclass(frozen=True, kw_only=True)
class NodeBaseStats:
    """What the node's roles hold, counted by storage (each storage once)."""

    roles: list[str]
    shared: bool
    """True when the roles compute on one frozen base (LoRA)."""
    storages: int
    param_bytes: int
    """Bytes of every distinct parameter/buffer storage of all roles' policies."""
    frozen_bytes: int
    trainable_bytes: int
    """Of those, the bytes each role trains and receives (its adapters under LoRA)."""


class NodeBase:
    """One frozen base per node process; see the module map."""

    def __init__(self, spec: PolicySpec, *, device: str | torch.device | None = None) -> None:
        self.spec = spec
        self.device = device
        self._lock = threading.Lock()
        self._policies: dict[str, DiTPolicy] = {}

    @property
    def shares(self) -> bool:
        return self.spec.lora is not None

    def policy_for(self, role: str) -> DiTPolicy:
        """``role``'s policy (blocking: the first call loads the base). ValueError for a role
        asked twice: two actors would then load versions into the same adapters."""
        with self._lock:
            if role in self._policies:
                raise ValueError(
                    f"role {role!r} already has its policy on this node (roles: "
                    f"{sorted(self._policies)}); give each actor its own role name"
                )
            first = next(iter(self._policies.values()), None)
            if first is None or not self.shares:
                policy = self.spec.build(self.device)
            else:
                policy = policy_on_shared_base(first)
            self._policies[role] = policy
            if first is not None:
                log.info(
                    "role %s: %s", role, "on the node's base" if self.shares else "own full copy"
                )
            return policy

    def statistics(self) -> NodeBaseStats:
        count = storage_count(*self._policies.values())
        return NodeBaseStats(
            roles=sorted(self._policies),
            shared=self.shares,
            storages=count.storages,
            param_bytes=count.bytes,
            frozen_bytes=count.frozen_bytes,
            trainable_bytes=count.trainable_bytes,
        )
