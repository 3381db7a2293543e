"""Read a Flow-GRPO gradient without taking the step: the tool behind the learning gates.

``policy_gradient`` runs the real ``flow_grpo_iteration`` (rollout, rewards, group advantages,
the clipped loss over the SDE window) with a zero-learning-rate SGD optimizer, so the weights
never move, and returns the accumulated gradient as one flat vector. Two uses:

- signal fraction (``diag_grad_snr.py``, ``bench_learning.py``'s ``grad_cosine_n128``): with
  g_i = s + n_i, E[cos(g_1, g_2)] ≈ |s|² / (|s|² + |n|²/N), so the cosine between gradients of
  two independent N-sample batches is the fraction of a batch's gradient that is signal;
- alignment (``bench_selection.py``): the cosine of a 128-sample update with a reference
  gradient from thousands of samples, for selected vs random seeds.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from spotlight.models.dit import DiTPolicy
from spotlight.models.flow_grpo import FlowGrpoConfig, RewardFn, flow_grpo_iteration

__all__ = ["cosine", "pairwise_cosines", "policy_gradient"]


def policy_gradient(
    policy: DiTPolicy,
    prompts: Sequence[str],
    seeds: Sequence[int],
    reward_fn: RewardFn,
    config: FlowGrpoConfig,
) -> Tensor:
    """The flat Flow-GRPO gradient of ``policy`` on these (prompt, seed) pairs (one pair per
    sample, prompt-major groups of ``config.group_size``); the weights are left unchanged.

    The whole batch is one optimizer step (no gradient clipping), so the vector is the plain
    mean-loss gradient whatever the batch size."""
    n = len(prompts)
    if n % config.group_size:
        raise ValueError(f"{n} samples are not whole groups of {config.group_size}")
    probe = dataclasses.replace(
        config,
        prompts_per_iter=n // config.group_size,
        chunks_per_update=-(-n // config.micro_batch),
        max_grad_norm=None,
        inner_epochs=1,
    )
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
    optimizer.zero_grad(set_to_none=True)
    flow_grpo_iteration(policy, optimizer, list(prompts), list(seeds), reward_fn, probe)
    grad = torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
            for p in policy.parameters()
            if p.requires_grad
        ]
    )
    optimizer.zero_grad(set_to_none=True)
    return grad.detach().clone()


def cosine(a: Tensor, b: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def pairwise_cosines(grads: Sequence[Tensor]) -> list[float]:
    """Cosines of every pair of gradients (independent batches)."""
    return [cosine(grads[i], grads[j]) for i, j in itertools.combinations(range(len(grads)), 2)]
