"""Ulysses sequence parallelism for QwenImage joint attention, over a swappable group.

Shape legend: B batch, N image tokens (full), n = N/P image tokens on this rank,
T text tokens, H heads, h = H/P heads on this rank, D head dim, C channels,
P SP degree (group size).

Layout. Each SP rank holds ``n`` consecutive image tokens with all heads and
the whole (replicated) text stream. Everything in a QwenImage block except
attention is per token or per sample, so only attention needs communication::

    image q/k/v  (B, n, H, D)  -- RoPE with the rank's slice of the image freqs
        | all-to-all: sequence shards -> head shards
    image q/k/v  (B, N, h, D)  + text q/k/v (B, T, h, D) sliced locally (no comm)
        | joint attention [text, image] with the text padding mask
    out          (B, T+N, h, D)
        | all-to-all: head shards -> sequence shards (text rides along)
    text out (B, T, H*D) on every rank, image out (B, n, H*D)

Why our own processor and not diffusers' ``enable_parallelism``: that binds
once per model to the global world mesh (and on CPU takes the rank modulo an
accelerator count of 0). Here the group is a field of a shared state object:
:meth:`UlyssesHandle.set_group` swaps it between denoising steps, the degree
may change, and processes that are not members of the current epoch simply
do not run the model.

Gradients. Parameters are replicated, so after a sharded backward each rank
holds a partial gradient: the sum over ranks is the gradient of the sum of the
per-rank losses (the collectives below have exact adjoints). Call
:func:`allreduce_grads` (sum) before the optimizer step. Compute each rank's
loss on its own tokens only (normalise a mean by the *global* count); if every
rank computes the same loss from :func:`gather_tokens` output, the summed
gradient is P times too large.

Timeouts. Collectives run on the group's own timeout (set when it was created,
see :mod:`spotlight.models.process_groups`): a dead peer makes ``forward`` raise
``RuntimeError`` (``DistBackendError``) instead of hanging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_qwenimage import (
    QwenDoubleStreamAttnProcessor2_0,
    QwenImageTransformer2DModel,
    apply_rotary_emb_qwen,
)
from torch import nn
from torch.distributed import ProcessGroup

__all__ = [
    "UlyssesHandle",
    "all_to_all",
    "allreduce_grads",
    "enable_ulysses",
    "gather_tokens",
    "largest_valid_degree",
    "shard_tokens",
    "ulysses_forward",
    "valid_degrees",
    "validate_degree",
]

_HANDLE_ATTR = "_spotlight_ulysses_handle"


# --------------------------------------------------------------------------- validation


def valid_degrees(num_heads: int, num_image_tokens: int | None = None) -> list[int]:
    """SP degrees that divide the head count (and the image token count, if given)."""
    g = num_heads if num_image_tokens is None else math.gcd(num_heads, num_image_tokens)
    return [d for d in range(1, g + 1) if g % d == 0]


def validate_degree(degree: int, num_heads: int, num_image_tokens: int | None = None) -> None:
    """Raise ``ValueError`` naming the valid degrees if ``degree`` cannot shard this model.

    Each rank must get whole heads after the all-to-all and an equal, non-empty
    share of the image tokens before it.
    """
    choices = ", ".join(map(str, valid_degrees(num_heads, num_image_tokens)))
    if degree < 1:
        raise ValueError(f"SP degree {degree} must be at least 1; valid degrees: {choices}")
    if num_heads % degree:
        raise ValueError(
            f"SP degree {degree} does not divide {num_heads} heads; valid degrees: {choices}"
        )
    if num_image_tokens is None:
        return
    if degree > num_image_tokens:
        raise ValueError(
            f"SP degree {degree} exceeds {num_image_tokens} image tokens (more members than tokens); "
            f"valid degrees: {choices}"
        )
    if num_image_tokens % degree:
        raise ValueError(
            f"SP degree {degree} does not divide {num_image_tokens} image tokens; valid degrees: {choices}"
        )


def largest_valid_degree(members: int, num_heads: int, num_image_tokens: int | None = None) -> int:
    """The largest valid degree not above ``members`` (spare members wait or form another group)."""
    if members < 1:
        raise ValueError(f"need at least 1 member to form an SP group, got {members}")
    return max(d for d in valid_degrees(num_heads, num_image_tokens) if d <= members)


def _degree(group: ProcessGroup | None) -> int:
    return 1 if group is None else group.size()


# --------------------------------------------------------------------------- collectives


def _all_to_all_raw(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    group.alltoall_base(out, x, [], [], dist.AllToAllOptions()).wait()
    return out


class _AllToAll(torch.autograd.Function):
    """Equal-split all-to-all along dim 0; its adjoint is the same all-to-all."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return _all_to_all_raw(x, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _AllToAll.apply(grad, ctx.group), None


def all_to_all(x_P_: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Differentiable all-to-all: chunk ``i`` of dim 0 goes to rank ``i``; chunk ``j`` of the result came from rank ``j``."""
    if x_P_.shape[0] != group.size():
        raise ValueError(
            f"all_to_all needs dim 0 == group size {group.size()}, got shape {tuple(x_P_.shape)}"
        )
    out: torch.Tensor = _AllToAll.apply(x_P_, group)
    return out


class _GatherTokens(torch.autograd.Function):
    """All-gather along the token dim; adjoint: reduce-scatter (sum) via all-to-all."""

    @staticmethod
    def forward(ctx: Any, x_BnC: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
        ctx.group = group
        p = group.size()
        x = x_BnC.transpose(0, 1).contiguous()  # (n, B, C): gather concatenates dim 0
        out = x.new_empty((p * x.shape[0], *x.shape[1:]))
        group._allgather_base(out, x).wait()
        return out.transpose(0, 1).contiguous()  # (B, N, C)

    @staticmethod
    def backward(ctx: Any, grad_BNC: torch.Tensor) -> tuple[torch.Tensor, None]:
        group = ctx.group
        p = group.size()
        b, n_full = grad_BNC.shape[:2]
        chunks = grad_BNC.reshape(b, p, n_full // p, *grad_BNC.shape[2:]).transpose(0, 1)
        return _all_to_all_raw(chunks, group).sum(dim=0), None


def shard_tokens(x_BNC: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """This rank's contiguous block of image tokens (dim 1). Identity for degree 1."""
    p = _degree(group)
    if p == 1:
        return x_BNC
    assert group is not None
    n_full = x_BNC.shape[1]
    if n_full % p:
        choices = ", ".join(str(d) for d in range(1, n_full + 1) if n_full % d == 0)
        raise ValueError(
            f"SP degree {p} does not divide {n_full} image tokens; valid degrees: {choices}"
        )
    n = n_full // p
    r = group.rank()
    return x_BNC[:, r * n : (r + 1) * n]


def gather_tokens(x_local_BnC: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """Concatenate every rank's image tokens (dim 1) in rank order; differentiable."""
    if _degree(group) == 1:
        return x_local_BnC
    out: torch.Tensor = _GatherTokens.apply(x_local_BnC, group)
    return out


def allreduce_grads(module: nn.Module, group: ProcessGroup | None) -> None:
    """Sum parameter gradients over the SP group (one flat, coalesced all-reduce).

    Needed after a sharded backward: every rank holds the same parameters but
    only the gradient contribution of its own tokens / head slice. A parameter
    without a gradient gets zeros, so every rank reduces a buffer of the same
    layout (``None`` on one rank and not another would desynchronise it).
    """
    if _degree(group) == 1:
        return
    assert group is not None
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    group.allreduce([flat]).wait()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


# --------------------------------------------------------------------------- processor


@dataclass
class _UlyssesState:
    """Shared by every block's processor, so swapping the group is one assignment."""

    group: ProcessGroup | None
    num_heads: int
    fallback: QwenDoubleStreamAttnProcessor2_0 = field(
        default_factory=QwenDoubleStreamAttnProcessor2_0
    )


class UlyssesAttnProcessor:
    """Drop-in replacement for ``QwenDoubleStreamAttnProcessor2_0`` with image tokens sharded.

    At degree 1 (or no group) it calls diffusers' own processor, so the
    single-process path is exactly the unmodified model.
    """

    def __init__(self, state: _UlyssesState) -> None:
        self._state = state

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        group = self._state.group
        if _degree(group) == 1:
            fallback: Any = self._state.fallback  # diffusers annotates FloatTensor
            out: tuple[torch.Tensor, torch.Tensor] = fallback(
                attn,
                hidden_states,
                encoder_hidden_states,
                encoder_hidden_states_mask,
                attention_mask,
                image_rotary_emb,
            )
            return out
        assert group is not None
        if encoder_hidden_states is None:
            raise ValueError(
                "Ulysses QwenImage attention requires encoder_hidden_states (text stream)"
            )
        if attention_mask is not None:
            raise ValueError(
                "pass encoder_hidden_states_mask, not attention_mask (as diffusers' processor)"
            )
        return self._sharded(
            attn,
            group,
            hidden_states,
            encoder_hidden_states,
            encoder_hidden_states_mask,
            image_rotary_emb,
        )

    def _sharded(
        self,
        attn: Any,
        group: ProcessGroup,
        x_BnC: torch.Tensor,
        txt_BTC: torch.Tensor,
        txt_mask_BT: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        p, r = group.size(), group.rank()
        b, n = x_BnC.shape[:2]
        t = txt_BTC.shape[1]
        n_full = n * p
        heads = attn.heads
        d = attn.inner_dim // heads
        validate_degree(p, heads, n_full)
        h = heads // p

        # Projections, QK-norm and RoPE on local tokens with all heads (as diffusers).
        img = [proj(x_BnC).unflatten(-1, (heads, d)) for proj in (attn.to_q, attn.to_k, attn.to_v)]
        txt = [
            proj(txt_BTC).unflatten(-1, (heads, d))
            for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
        ]
        if attn.norm_q is not None:
            img[0] = attn.norm_q(img[0])
        if attn.norm_k is not None:
            img[1] = attn.norm_k(img[1])
        if attn.norm_added_q is not None:
            txt[0] = attn.norm_added_q(txt[0])
        if attn.norm_added_k is not None:
            txt[1] = attn.norm_added_k(txt[1])
        if rotary is not None:
            img_freqs, txt_freqs = rotary
            if img_freqs.shape[0] != n_full:
                raise ValueError(
                    f"RoPE covers {img_freqs.shape[0]} image tokens but {p} ranks x {n} local tokens = {n_full}; "
                    "shard hidden_states with shard_tokens() and pass the full img_shapes"
                )
            local_freqs = img_freqs[r * n : (r + 1) * n]
            img[0] = apply_rotary_emb_qwen(img[0], local_freqs, use_real=False)
            img[1] = apply_rotary_emb_qwen(img[1], local_freqs, use_real=False)
            txt[0] = apply_rotary_emb_qwen(txt[0], txt_freqs, use_real=False)
            txt[1] = apply_rotary_emb_qwen(txt[1], txt_freqs, use_real=False)

        # Sequence shards -> head shards: one all-to-all for q, k and v together.
        qkv_3BnHD = torch.stack(img)
        send_P3BnhD = qkv_3BnHD.unflatten(3, (p, h)).permute(3, 0, 1, 2, 4, 5)
        recv_P3BnhD = all_to_all(send_P3BnhD, group)  # chunk j: rank j's tokens, my heads
        img_3BNhD = recv_P3BnhD.permute(1, 2, 0, 3, 4, 5).reshape(3, b, n_full, h, d)
        txt_3BThD = torch.stack(txt)[:, :, :, r * h : (r + 1) * h]
        q, k, v = torch.cat([txt_3BThD, img_3BNhD], dim=2).unbind(0)  # order [text, image]

        mask = None
        if txt_mask_BT is not None:
            img_mask = torch.ones((b, n_full), dtype=torch.bool, device=x_BnC.device)
            mask = torch.cat([txt_mask_BT.to(torch.bool), img_mask], dim=1)[:, None, None, :]
        out_BShD = dispatch_attention_fn(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=0.0,
            is_causal=False,
            backend=QwenDoubleStreamAttnProcessor2_0._attention_backend,
        ).to(q.dtype)

        # Head shards -> sequence shards; each rank also needs every head of the text.
        txt_out_BThD = out_BShD[:, :t]
        img_out_BPnhD = out_BShD[:, t:].unflatten(1, (p, n))
        send_PB_hD = torch.cat(
            [txt_out_BThD.unsqueeze(1).expand(b, p, t, h, d), img_out_BPnhD], dim=2
        ).transpose(0, 1)
        recv_PB_hD = all_to_all(send_PB_hD, group)  # chunk j: heads of rank j, my tokens
        joint_BSC = recv_PB_hD.permute(1, 2, 0, 3, 4).reshape(b, t + n, heads * d)

        img_out = attn.to_out[0](joint_BSC[:, t:].contiguous())
        if len(attn.to_out) > 1:
            img_out = attn.to_out[1](img_out)
        txt_out = attn.to_add_out(joint_BSC[:, :t].contiguous())
        return img_out, txt_out


# --------------------------------------------------------------------------- installation


class UlyssesHandle:
    """Controls the Ulysses processors installed on one transformer.

    ``set_group`` may be called between forward calls (never during one);
    every member of the new group must switch before its next forward.
    """

    def __init__(
        self, transformer: QwenImageTransformer2DModel, state: _UlyssesState, originals: list[Any]
    ) -> None:
        self._transformer = transformer
        self._state = state
        self._originals = originals
        self._enabled = True

    @property
    def group(self) -> ProcessGroup | None:
        return self._state.group

    @property
    def degree(self) -> int:
        return _degree(self._state.group)

    @property
    def enabled(self) -> bool:
        return self._enabled

    def set_group(self, group: ProcessGroup | None) -> None:
        """Use ``group`` from the next forward on (its size may differ from the old one)."""
        if not self._enabled:
            raise RuntimeError("this Ulysses handle was disabled; call enable_ulysses() again")
        validate_degree(_degree(group), self._state.num_heads)
        self._state.group = group

    def disable(self) -> None:
        """Restore diffusers' original processors."""
        if not self._enabled:
            return
        blocks: Any = self._transformer.transformer_blocks
        for block, proc in zip(blocks, self._originals, strict=True):
            block.attn.set_processor(proc)
        self._enabled = False
        if getattr(self._transformer, _HANDLE_ATTR, None) is self:
            delattr(self._transformer, _HANDLE_ATTR)


def enable_ulysses(
    transformer: QwenImageTransformer2DModel, group: ProcessGroup | None
) -> UlyssesHandle:
    """Install Ulysses attention on every block of ``transformer`` and return its handle.

    Then call the transformer with this rank's image tokens
    (:func:`shard_tokens`) and the *full* ``img_shapes``; text, mask and
    timestep are passed unchanged (replicated). The output holds this rank's
    tokens; :func:`gather_tokens` reassembles them.
    """
    if getattr(transformer, _HANDLE_ATTR, None) is not None:
        raise RuntimeError(
            "Ulysses is already enabled on this transformer; use its handle's set_group()"
        )
    if getattr(transformer, "zero_cond_t", False):
        raise ValueError(
            "zero_cond_t=True models are not supported by Ulysses SP (per-token modulate index)"
        )
    config: Any = transformer.config
    num_heads = int(config.num_attention_heads)
    validate_degree(_degree(group), num_heads)
    state = _UlyssesState(group=group, num_heads=num_heads)
    originals = []
    blocks: Any = transformer.transformer_blocks
    for block in blocks:
        originals.append(block.attn.processor)
        block.attn.set_processor(UlyssesAttnProcessor(state))
    handle = UlyssesHandle(transformer, state, originals)
    setattr(transformer, _HANDLE_ATTR, handle)
    return handle


def ulysses_forward(
    transformer: QwenImageTransformer2DModel, group: ProcessGroup | None, **forward_kwargs: Any
) -> torch.Tensor:
    """Shard ``hidden_states``, run the transformer over ``group``, gather: the full output sample.

    Installs Ulysses (or switches the installed handle to ``group``) as needed.
    ``forward_kwargs`` are those of the transformer (``hidden_states`` full,
    ``img_shapes`` full); ``return_dict`` is handled here.
    """
    forward_kwargs.pop("return_dict", None)
    handle: UlyssesHandle | None = getattr(transformer, _HANDLE_ATTR, None)
    if handle is not None and handle.group is not group:
        handle.set_group(group)
    if _degree(group) == 1:
        out: torch.Tensor = transformer(**forward_kwargs, return_dict=False)[0]
        return out
    if handle is None:
        handle = enable_ulysses(transformer, group)
    x_BNC = forward_kwargs.pop("hidden_states")
    validate_degree(_degree(group), handle._state.num_heads, x_BNC.shape[1])
    local = transformer(
        hidden_states=shard_tokens(x_BNC, group), **forward_kwargs, return_dict=False
    )[0]
    return gather_tokens(local, group)
