"""Fused soft-merge MoV (``fused_mov``): the torch ops, and the switch to the Triton kernel.

See :mod:`mixlight_torch.ops` for what is saved and allocated. Tokens are flattened and
every tensor is per head (a router without heads is one head): ``h [n, H, k]``, ``probs
[n, H, E]``, ``vectors [E, H, k]``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any  # ctx: torch's FunctionCtx, given the attributes forward sets

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mixlight._op_checks import check_mov, soft_if_all
from mixlight_torch.ops._precision import (
    compute_dtype,
    is_small,
    no_autocast,
    unrolls,
    wants_grad,
)
from mixlight_torch.ops._routing import (
    full_softmax_if_masked,
    logits_grad,
    no_token_grads,
    route_tokens,
    weight_grad,
)


def _expert_sum(probs: Tensor, per_expert: Tensor) -> Tensor:
    """``sum_e probs[..., e, None] * per_expert[e]`` for ``probs [..., E]`` and ``per_expert
    [E, ...]`` (broadcasting against ``probs[..., :1]``): elementwise work only, which
    inductor fuses into its consumer (see :func:`~mixlight_torch.ops._precision.unrolls`)."""
    total = probs[..., 0:1] * per_expert[0]
    for e in range(1, per_expert.shape[0]):
        total = total + probs[..., e : e + 1] * per_expert[e]
    return total


def _merge(probs: Tensor, vectors: Tensor, out: Tensor | None = None) -> Tensor:
    """The merged vectors ``[n, H, k]``: ``probs [n, H, E]`` times ``vectors [E, d]`` per head
    (``d = H * k``, head-major), as a transposed view of one ``[H, n, k]`` product. For one
    head that view is contiguous, and is written into ``out`` (``[n, d]``, a spare buffer)
    when given. For several, consumers write the product with ``h`` or ``g_out`` contiguously
    (a strided ``out=`` for the product itself is several times slower). Small problems on
    CPU (decoding) broadcast and sum instead, giving a contiguous result; under
    torch.compile, a sum over a few experts fuses with the product that consumes it."""
    n_tokens, n_heads, n_experts = probs.shape
    if unrolls(n_experts):
        return _expert_sum(probs, vectors.view(n_experts, n_heads, -1))
    per_head = vectors.view(n_experts, n_heads, -1).transpose(0, 1)  # [H, E, k]
    if is_small(probs, probs.numel() * per_head.shape[-1]):
        return (probs.unsqueeze(-1) * per_head).sum(dim=-2)
    if n_heads == 1 and out is not None:
        torch.bmm(probs.transpose(0, 1), per_head, out=out.view(1, n_tokens, -1))
        return out.view(n_tokens, 1, -1)
    return torch.bmm(probs.transpose(0, 1), per_head).transpose(0, 1)


def _times_merged(t: Tensor, merged: Tensor, out: Tensor | None = None) -> Tensor:
    """``t * merged`` as a contiguous ``[n, H, k]`` tensor in ``merged``'s dtype: in place in
    ``merged`` when it is contiguous, else into ``out`` (a spare buffer) or a new tensor."""
    if merged.is_contiguous():
        return merged.mul_(t)
    if out is None:
        out = torch.empty(merged.shape, dtype=merged.dtype, device=merged.device)
    return torch.mul(t, merged, out=out)


def _merge_grads(probs: Tensor, vectors: Tensor, g_merged: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of ``vectors [E, d]`` and of ``probs [n, H, E]`` from ``g_merged [n, d]``."""
    n_tokens, n_heads, n_experts = probs.shape
    g_heads = g_merged.view(n_tokens, n_heads, -1).transpose(0, 1)  # [H, n, k]
    g_v = torch.bmm(probs.permute(1, 2, 0), g_heads)  # [H, E, k]
    per_head = vectors.view(n_experts, n_heads, -1).transpose(0, 1)  # [H, E, k]
    # Experts-major, [H, E, n]: 2-3x faster than the same product with a skinny [n, E] output
    g_p = torch.bmm(per_head, g_heads.transpose(1, 2)).permute(2, 0, 1)  # [n, H, E]
    return g_v.transpose(0, 1).reshape(vectors.shape), g_p


def _mov_forward(
    h: Tensor,
    router_weight: Tensor,
    vectors: Tensor,
    heads: int | None,
    top_k: int | None,
    renormalize: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The forward of :func:`fused_mov`: ``(out [..., d], probs, logits [..., (H,) E])``."""
    n_heads = heads or 1
    lead, d = h.shape[:-1], h.shape[-1]
    cdt = compute_dtype(h)
    with no_autocast(h):
        hr = h.reshape(-1, n_heads, d // n_heads).to(cdt)
        probs, logits = route_tokens(hr, router_weight, top_k, renormalize)
        merged = _merge(probs, vectors.to(cdt))  # [n, H, k]
        # in float32 the only [n, d] tensor allocated (one head: merged, scaled in place)
        out = _times_merged(h.reshape(merged.shape), merged.to(h.dtype))
    n_experts = router_weight.shape[-1]  # explicit: a -1 is ambiguous for 0 tokens
    routed_shape = (*lead, n_heads, n_experts) if heads else (*lead, n_experts)
    return out.view(h.shape), probs.view(routed_shape), logits.view(routed_shape)


class FusedMoV(torch.autograd.Function):
    """Routed (IA)³ soft merge, ``(out, probs, logits)``; see :func:`fused_mov`."""

    @staticmethod
    def forward(
        ctx: Any,
        h: Tensor,
        router_weight: Tensor,
        vectors: Tensor,
        heads: int | None,
        top_k: int | None,
        renormalize: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        out, probs, logits = _mov_forward(h, router_weight, vectors, heads, top_k, renormalize)
        ctx.save_for_backward(h, router_weight, vectors, probs)
        ctx.heads, ctx.top_k, ctx.renormalize = heads, top_k, renormalize
        ctx.set_materialize_grads(False)
        return out, probs, logits

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, g_out: Tensor | None, g_probs: Tensor | None, g_logits: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        h, router_weight, vectors, probs = ctx.saved_tensors
        empty = no_token_grads((h, router_weight, vectors), ctx.needs_input_grad[:3])
        if empty is not None:
            return (*empty, None, None, None)
        probs = probs.reshape(-1, ctx.heads or 1, probs.shape[-1])  # [n, H, E]
        with no_autocast(h):
            g_h, g_w, g_v = _mov_backward(
                (h, router_weight, vectors, probs),
                (g_out, g_probs, g_logits),
                (ctx.top_k, ctx.renormalize),
                ctx.needs_input_grad[:3],
            )
        return g_h, g_w, g_v, None, None, None


def _mov_backward(
    saved: tuple[Tensor, Tensor, Tensor, Tensor],
    grads: tuple[Tensor | None, Tensor | None, Tensor | None],
    routing: tuple[int | None, bool],
    needs: tuple[bool, ...],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of ``h [..., d]``, ``router_weight [k, E]`` and ``vectors [E, d]``.

    ``saved`` is ``(h, router_weight, vectors, probs [n, H, E])``; ``grads`` is ``(g_out
    [..., d], g_probs, g_logits [..., (H,) E])``, each possibly None; ``routing`` is ``(top_k,
    renormalize)``; ``needs`` says which input gradients are wanted.
    """
    h, router_weight, vectors, probs = saved
    g_out, g_probs, g_logits = grads
    need_h, need_w, need_v = needs
    n_tokens, n_heads, _ = probs.shape
    d = h.shape[-1]
    cdt = probs.dtype
    vectors_c = vectors.to(cdt)
    g_merged = g_v = None
    g_p = None if g_probs is None else g_probs.reshape(probs.shape)
    if g_out is not None:
        g_merged = (g_out.reshape(n_tokens, d) * h.reshape(n_tokens, d)).to(cdt)  # [n, d]
        g_v, g_p_merge = _merge_grads(probs, vectors_c, g_merged)
        g_v = g_v.to(vectors.dtype)
        g_p = g_p_merge if g_p is None else g_p + g_p_merge
    if g_p is None:
        g_p = probs.new_zeros(probs.shape)
    if not (need_h or need_w):
        return None, None, g_v
    hr = h.reshape(n_tokens, n_heads, -1).to(cdt)
    g_l = logits_grad(probs, g_p, g_logits, full_softmax_if_masked(hr, router_weight, *routing))
    g_w = weight_grad(g_l, hr).to(router_weight.dtype) if need_w else None
    if not need_h:
        return None, g_w, g_v
    w_t = router_weight.to(cdt).T
    if g_out is None or g_merged is None:  # (one is None exactly when the other is)
        return torch.mm(g_l, w_t).view(h.shape).to(h.dtype), g_w, g_v
    # g_h = g_out * merged + g_l @ W^T, built in place (in g_merged's buffer, consumed above,
    # when the merged vectors are not contiguous).
    g_heads = g_out.reshape(n_tokens, n_heads, -1)
    spare = g_merged.view(g_heads.shape)
    g_h = _times_merged(g_heads, _merge(probs, vectors_c, out=g_merged), out=spare)
    if unrolls(g_l.shape[-1]):
        g_h = g_h + _expert_sum(g_l.view(probs.shape), w_t)
    else:
        g_h.view(n_tokens * n_heads, -1).addmm_(g_l, w_t)
    return g_h.view(h.shape).to(h.dtype), g_w, g_v


def fused_mov(
    h: Tensor,
    router_weight: Tensor,
    vectors: Tensor,
    heads: int | None = None,
    top_k: int | None = None,
    renormalize: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """MoV with a token router: ``h * (router_probs(router_logits(h)) @ vectors)``.

    Args:
      h: ``[..., d]``, any float dtype; both the router input and the scaled activation.
      router_weight: ``[d_route, E]``, ``d_route = d`` (or ``d // heads``, shared by all heads).
      vectors: ``[E, d]``, head-major (``d = heads * d_head``) when routed per head.
      heads: route each head's slice of ``h`` separately (``heads=1`` keeps a head axis).
      top_k: keep the ``top_k`` largest probabilities (None, or ``>= E``: soft merge).
      renormalize: divide the kept probabilities by their sum (else a masked softmax).
    Returns:
      ``out [..., d]`` in h's dtype, and ``probs``, ``logits`` ``[..., E]`` (``[..., heads, E]``
      per head) in float32 (float64 for float64 ``h``).
    """
    check_mov(h.shape, router_weight.shape, vectors.shape, heads)
    top_k = soft_if_all(top_k, vectors.shape[0], "fused_mov")
    if top_k is None and _triton_applies(h):
        from mixlight_torch.ops.triton_mov import triton_mov

        return triton_mov(h, router_weight, vectors, heads)
    if not wants_grad(h, router_weight, vectors):
        # Inference (e.g. generation): skip the autograd.Function and its bookkeeping.
        return _mov_forward(h, router_weight, vectors, heads or None, top_k, renormalize)
    return FusedMoV.apply(h, router_weight, vectors, heads or None, top_k, renormalize)


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_applies(h: Tensor) -> bool:
    """Whether the soft-merge MoV runs as the Triton kernel: a CUDA tensor in 32 or 16 bits,
    triton installed, not while compiling (dynamo traces the torch ops instead), and not
    turned off with ``MIXLIGHT_TRITON=0``."""
    return (
        h.is_cuda
        and h.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and not torch.compiler.is_compiling()
        and os.environ.get("MIXLIGHT_TRITON", "1") != "0"
        and _triton_installed()
    )
