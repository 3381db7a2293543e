"""Weights as a sampling actor holds them: the newest-wins slot and the shape check on arrival.

Pure (no actor, no socket), so version handling is unit-tested alone. Explorers
(``explorer.py``) and rollout workers (``rollout.py``) receive published weights through a
:class:`WeightReceiver` (chunks assembled, every complete version checked, then offered to a
:class:`WeightSlot`) and apply the pending one between batches or requests.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from spotlight.actors.weights.publish import WeightInbox
from spotlight.actors.weights.share import WeightManifest
from spotlight.models.dit import DiTPolicy
from spotlight.models.lora import tunable_shapes

__all__ = ["WeightReceiver", "WeightSlot", "weights_fit"]

log = logging.getLogger("spotlight.actors.weights.slot")


def weights_fit(policy: DiTPolicy, state: Mapping[str, Any], *, version: int) -> None:
    """ValueError unless ``state`` has exactly the policy's tensors and shapes.

    Checked when weights arrive, so a model config that does not match the trainer's fails
    with both shapes named instead of killing the sampling loop later inside
    ``load_state_dict``.
    """
    own = tunable_shapes(policy)
    got = {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}
    missing = sorted(own.keys() - got.keys())
    unexpected = sorted(got.keys() - own.keys())
    wrong = [(k, got[k], own[k]) for k in sorted(own.keys() & got.keys()) if got[k] != own[k]]
    if not (missing or unexpected or wrong):
        return
    problems = [f"{k}: {g} in the weights, {o} in the model" for k, g, o in wrong[:3]]
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing from the weights, e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) the model lacks, e.g. {unexpected[0]}")
    raise ValueError(
        f"weight version {version} does not fit this explorer's model config "
        f"{policy.config.name!r} ({len(wrong)} shape mismatch(es)): {'; '.join(problems)}; "
        "the explorer must build the trainer's base config and LoRA adapters (register_node's "
        "'model' and 'lora')"
    )


class WeightSlot:
    """Newest-wins holder of versioned weights; pure, so version handling is tested alone.

    ``offer`` never blocks and keeps at most one pending state (the newest), so a burst of
    versions costs no memory beyond one copy; ``take`` hands the pending one to the sampler.
    """

    def __init__(self) -> None:
        self.current: int | None = None
        self._pending: tuple[int, Mapping[str, Any]] | None = None
        self.received = 0
        self.applied = 0
        self.superseded = 0
        self.ignored = 0

    @property
    def newest(self) -> int | None:
        if self._pending is not None:
            return self._pending[0]
        return self.current

    def offer(self, version: int, state: Mapping[str, Any]) -> bool:
        """Keep ``state`` if ``version`` is newer than anything held or pending."""
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ValueError(f"weight version must be an int >= 0, got {version!r}")
        self.received += 1
        newest = self.newest
        if newest is not None and version <= newest:
            self.ignored += 1
            return False
        if self._pending is not None:
            self.superseded += 1
        self._pending = (version, state)
        return True

    def take(self) -> tuple[int, Mapping[str, Any]] | None:
        """The pending (version, state), now current; None if nothing newer arrived."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self.current = pending[0]
            self.applied += 1
        return pending


class WeightReceiver:
    """The receiving end of the publisher for one sampling actor: ``weight_chunk`` chunks
    assembled into versions, each complete one checked against the actor's model
    (:func:`weights_fit`) and offered to its :class:`WeightSlot`.

    Chunks of a version not newer than the one held or pending are dropped unassembled, so a
    late stream of an old version costs no copy. A rejected version raises (the publisher's
    ``tell`` has no caller to tell: it is logged here, naming ``owner``, and counted).
    """

    def __init__(self, owner: str, inbox: WeightInbox | None = None) -> None:
        self.owner = owner
        self.slot = WeightSlot()
        self.inbox = inbox if inbox is not None else WeightInbox()
        self.chunks = 0
        self.chunks_ignored = 0
        self.rejected = 0

    def offer(self, policy: DiTPolicy, version: int, state: Mapping[str, Any]) -> bool:
        """A whole version: kept if it fits ``policy`` and is newer than what is held."""
        try:
            weights_fit(policy, state, version=version)
        except ValueError as exc:
            self.rejected += 1
            log.error("%s rejects weights: %s", self.owner, exc)
            raise
        return self.slot.offer(version, state)

    def offer_chunk(
        self, policy: DiTPolicy, version: int, manifest: WeightManifest, offset: int, chunk: Tensor
    ) -> bool:
        """One chunk; True when it completed a version that was kept."""
        newest = self.slot.newest
        if newest is not None and version <= newest:
            self.chunks_ignored += 1
            return False
        self.chunks += 1
        done = self.inbox.offer(version, manifest, offset, chunk)
        if done is None:
            return False
        complete_version, state = done
        return self.offer(policy, complete_version, state)
