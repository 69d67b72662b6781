"""Fused, memory-lean MoV and MoLoRA ops with hand-written backward passes.

Each op computes exactly the core math of :mod:`mixlight.math` (``router_logits``,
``router_probs``, ``mix_vectors``, ``lowrank_mixture``) but keeps only its inputs and the
``[..., E]`` routing probabilities alive for backward; everything wider is recomputed:

* :func:`fused_mov` saves ``h``, the router kernel, the vectors and ``probs``; the merged
  ``[..., d]`` vector is recomputed in backward (one ``[.., E] x [E, d]`` contraction). Plain
  autograd would keep the merged vector (as wide as ``h``) and the logits besides.
* :func:`fused_molora` (external probabilities) and :func:`fused_routed_molora` (its own token
  router) save ``x``, the probabilities and the kernels; the ``[..., E*r]`` low-rank
  activations are recomputed in backward.

They also allocate as few activation-sized (``[tokens, d]``) tensors as they can, which on a
CPU costs as much as the arithmetic (fresh pages): MoV allocates one such tensor in forward and
one in backward, where the merged vector is rebuilt in the buffer of ``g_out * h`` once that
is consumed; MoLoRA adds the frozen output, the scale and the router's input gradient inside
one matrix product each.

The ops run with autocast disabled, so that forward and the backward recomputation see the
same dtypes: the router is always computed in float32 (float64 for float64 inputs), the LoRA
products in ``x``'s dtype. All are ``torch.compile(fullgraph=True)``-clean. On CUDA, with
triton installed, the soft-merge MoV runs as one Triton kernel per pass instead
(:mod:`mixlight_torch.triton_mov`; ``MIXLIGHT_TRITON=0`` turns it off); the torch code below
runs on every device.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from mixlight_torch._router import (
    compute_dtype,
    full_softmax_if_masked,
    is_small,
    logits_grad,
    no_autocast,
    route_tokens,
    weight_grad,
)

__all__ = ["FusedMoLoRA", "FusedMoV", "fused_molora", "fused_mov", "fused_routed_molora"]


def _wants_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# --- MoV --------------------------------------------------------------------------------------


def _merge(probs: Tensor, vectors: Tensor, out: Tensor | None = None) -> Tensor:
    """The merged vectors ``[n, H, k]``: ``probs [n, H, E]`` times ``vectors [E, d]`` per head
    (``d = H * k``, head-major), as a transposed view of one ``[H, n, k]`` product. For one
    head that view is contiguous, and is written into ``out`` (``[n, d]``, a spare buffer)
    when given. For several, consumers write the product with ``h`` or ``g_out`` contiguously
    (a strided ``out=`` for the product itself is several times slower). Small problems on
    CPU (decoding) broadcast and sum instead, giving a contiguous result."""
    n_tokens, n_heads, n_experts = probs.shape
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
    per_head_t = vectors.view(n_experts, n_heads, -1).permute(1, 2, 0)  # [H, k, E]
    g_p = torch.bmm(g_heads, per_head_t).transpose(0, 1)  # [n, H, E]
    return g_v.transpose(0, 1).reshape(vectors.shape), g_p


def check_mov_shapes(h: Tensor, router_weight: Tensor, vectors: Tensor, heads: int) -> None:
    """Raise ``ValueError`` unless ``h [..., d]``, ``router_weight [d // heads, E]`` and
    ``vectors [E, d]`` agree."""
    d = h.shape[-1]
    if d % heads:
        raise ValueError(f"fused_mov: width {d} is not divisible by heads={heads}")
    n_experts = router_weight.shape[-1]
    if router_weight.ndim != 2 or router_weight.shape[0] != d // heads:
        raise ValueError(
            f"fused_mov: router_weight has shape {tuple(router_weight.shape)}; expected "
            f"[{d // heads}, E]"
        )
    if tuple(vectors.shape) != (n_experts, d):
        raise ValueError(
            f"fused_mov: vectors has shape {tuple(vectors.shape)}; expected [{n_experts}, {d}]"
        )


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
    routed_shape = (*lead, n_heads, -1) if heads else (*lead, -1)
    return out.view(h.shape), probs.view(routed_shape), logits.view(routed_shape)


class FusedMoV(torch.autograd.Function):
    """Routed (IA)³ soft merge, ``(out, probs, logits)``; see :func:`fused_mov`."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
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
        ctx: FunctionCtx, g_out: Tensor | None, g_probs: Tensor | None, g_logits: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        h, router_weight, vectors, probs = ctx.saved_tensors
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
    g_p = probs.new_zeros(probs.shape) if g_probs is None else g_probs.reshape(probs.shape)
    if g_out is not None:
        g_merged = (g_out.reshape(n_tokens, d) * h.reshape(n_tokens, d)).to(cdt)  # [n, d]
        g_v, g_p_merge = _merge_grads(probs, vectors_c, g_merged)
        g_v = g_v.to(vectors.dtype)
        g_p = g_p + g_p_merge
    if not (need_h or need_w):
        return None, None, g_v
    hr = h.reshape(n_tokens, n_heads, -1).to(cdt)
    g_l = logits_grad(probs, g_p, g_logits, full_softmax_if_masked(hr, router_weight, *routing))
    g_w = weight_grad(g_l, hr).to(router_weight.dtype) if need_w else None
    if not need_h:
        return None, g_w, g_v
    w_t = router_weight.to(cdt).T
    if g_merged is None:
        return torch.mm(g_l, w_t).view(h.shape).to(h.dtype), g_w, g_v
    # g_h = g_out * merged + g_l @ W^T, built in place (in g_merged's buffer, consumed above,
    # when the merged vectors are not contiguous).
    g_heads = g_out.reshape(n_tokens, n_heads, -1)
    spare = g_merged.view(g_heads.shape)
    g_h = _times_merged(g_heads, _merge(probs, vectors_c, out=g_merged), out=spare)
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
    check_mov_shapes(h, router_weight, vectors, heads or 1)
    top_k = _soft_if_all(top_k, vectors.shape[0], "fused_mov")
    if top_k is None and _triton_applies(h):
        from mixlight_torch.triton_mov import triton_mov

        return triton_mov(h, router_weight, vectors, heads)
    if not _wants_grad(h, router_weight, vectors):
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


def _soft_if_all(top_k: int | None, n_experts: int, op: str) -> int | None:
    """``top_k``, or None (a soft merge) when it keeps every expert; rejects ``top_k < 1``."""
    if top_k is not None and top_k < 1:
        raise ValueError(f"{op}: top_k must be at least 1; got {top_k}")
    return None if top_k is None or top_k >= n_experts else top_k


# --- MoLoRA -----------------------------------------------------------------------------------


def _a_cat(lora_A: Tensor, dtype: torch.dtype) -> Tensor:
    """``[E, d_in, r] -> [d_in, E*r]`` in ``dtype``."""
    n_experts, d_in, rank = lora_A.shape
    return lora_A.to(dtype).permute(1, 0, 2).reshape(d_in, n_experts * rank)


def _b_cat(lora_B: Tensor, dtype: torch.dtype) -> Tensor:
    """``[E, r, d_out] -> [E*r, d_out]`` in ``dtype``."""
    return lora_B.to(dtype).reshape(-1, lora_B.shape[-1])


def _expanded_probs(probs: Tensor, rank: int, dtype: torch.dtype) -> Tensor:
    """``[..., E] -> [..., E*r]`` in ``dtype``, each probability repeated ``rank`` times."""
    return probs.to(dtype).repeat_interleave(rank, dim=-1)


def _molora_forward(
    x: Tensor,
    base: Tensor | None,
    probs: Tensor | None,
    lora_A: Tensor,
    lora_B: Tensor,
    scale: float,
) -> Tensor:
    """``base + scale * ((x @ A_cat) * p) @ B_cat``: ``[..., d_out]`` in base's dtype (x's
    without a base); ``probs`` broadcasts over x's leading axes."""
    rank, d_out = lora_B.shape[-2:]
    u = torch.matmul(x, _a_cat(lora_A, x.dtype))  # [..., E*r]
    u = u * (scale if probs is None else _expanded_probs(probs, rank, x.dtype) * scale)
    u2, b_cat = u.reshape(-1, u.shape[-1]), _b_cat(lora_B, x.dtype)
    out_shape = (*x.shape[:-1], d_out)
    if base is None:
        return torch.mm(u2, b_cat).view(out_shape)
    if base.dtype != x.dtype:
        return base + torch.mm(u2, b_cat).view(out_shape).to(base.dtype)
    return torch.addmm(base.reshape(-1, d_out), u2, b_cat).view(base.shape)


def _routed_forward(
    x: Tensor,
    base: Tensor | None,
    probs: Tensor | None,
    router_weight: Tensor | None,
    lora_A: Tensor,
    lora_B: Tensor,
    scale: float,
    top_k: int | None,
    renormalize: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(out, probs, logits)``: routes ``x`` first when ``router_weight`` is given (else
    ``probs`` is used as given and ``logits`` is None), then :func:`_molora_forward`."""
    logits = None
    with no_autocast(x):
        if router_weight is not None:
            route_in = x.reshape(-1, 1, x.shape[-1]).to(compute_dtype(x))
            probs, logits = route_tokens(route_in, router_weight, top_k, renormalize)
            probs, logits = (t.view(*x.shape[:-1], -1) for t in (probs, logits))
        out = _molora_forward(x, base, probs, lora_A, lora_B, scale)
    return out, probs, logits


class FusedMoLoRA(torch.autograd.Function):
    """Routed mixture of LoRA deltas, ``(out, probs, logits)``; see :func:`fused_molora` and
    :func:`fused_routed_molora`. Exactly one of ``probs`` (given) and ``router_weight`` (a
    token router on ``x``, computed here) is set, or neither for one expert."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        base: Tensor | None,
        probs: Tensor | None,
        router_weight: Tensor | None,
        lora_A: Tensor,
        lora_B: Tensor,
        scale: float,
        top_k: int | None,
        renormalize: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        out, probs, logits = _routed_forward(
            x, base, probs, router_weight, lora_A, lora_B, scale, top_k, renormalize
        )
        ctx.save_for_backward(x, probs, router_weight, lora_A, lora_B)
        ctx.scale, ctx.top_k, ctx.renormalize = scale, top_k, renormalize
        ctx.base_dtype = None if base is None else base.dtype
        ctx.set_materialize_grads(False)
        if router_weight is None:
            return out, None, None
        return out, probs, logits

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, g_out: Tensor | None, g_probs: Tensor | None, g_logits: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x, probs, router_weight, lora_A, lora_B = ctx.saved_tensors
        need_x, need_base, need_p, need_w, need_a, need_b = ctx.needs_input_grad[:6]
        routed = router_weight is not None
        with no_autocast(x):
            g_x, g_p, g_w, g_a, g_b = _molora_backward(
                (x, probs, router_weight, lora_A, lora_B),
                (g_out, g_probs if routed else None, g_logits),
                (ctx.scale, ctx.top_k, ctx.renormalize),
                (need_x, need_p, need_w, need_a, need_b),
            )
        g_base = g_out if need_base else None
        return g_x, g_base, g_p, g_w, g_a, g_b, None, None, None


def _molora_backward(
    saved: tuple[Tensor, Tensor | None, Tensor | None, Tensor, Tensor],
    grads: tuple[Tensor | None, Tensor | None, Tensor | None],
    routing: tuple[float, int | None, bool],
    needs: tuple[bool, ...],
) -> tuple[Tensor | None, ...]:
    """Gradients ``(x, probs, router_weight, lora_A, lora_B)`` of :class:`FusedMoLoRA`.

    ``saved`` is ``(x [..., d_in], probs [..., E] or None, router_weight [d_in, E] or None,
    lora_A, lora_B)``; ``grads`` is ``(g_out [..., d_out], g_probs, g_logits)`` (the last two
    only with a router); ``routing`` is ``(scale, top_k, renormalize)``. ``u0 = x @ A_cat``
    ``[n, E*r]`` is recomputed. With a router, its input gradient joins the LoRA's in one
    product ``[g_u0, g_logits] @ [A_cat; W]^T``, and so do the kernels' gradients.
    """
    x, probs, router_weight, lora_A, lora_B = saved
    g_out, g_probs, g_logits = grads
    scale, top_k, renormalize = routing
    need_x, need_p, need_w, need_a, need_b = needs
    n_experts, d_in, rank = lora_A.shape
    dt = x.dtype
    x2 = x.reshape(-1, d_in)
    a_cat = _a_cat(lora_A, dt)
    g_p = g_w = g_a = g_b = g_x = None
    if g_out is None and router_weight is None:
        return None, None, None, None, None
    if g_out is None:  # only the router's outputs have gradients
        g_u0 = x.new_zeros((x2.shape[0], n_experts * rank))
        g_p = probs.new_zeros(probs.shape)
    else:
        u0 = torch.matmul(x, a_cat)  # [..., E*r]
        p_rep = None if probs is None else _expanded_probs(probs, rank, dt)
        g_lead = g_out.to(dt)
        if need_b:
            u = u0 if p_rep is None else u0 * p_rep
            g_b_cat = torch.mm(
                u.reshape(-1, n_experts * rank).T, g_lead.reshape(-1, g_lead.shape[-1])
            )
            g_b = g_b_cat.mul_(scale).view(lora_B.shape).to(lora_B.dtype)
        g_u = torch.matmul(g_lead, _b_cat(lora_B, dt).T).mul_(scale)  # [..., E*r]
        if probs is not None:
            g_p = (g_u * u0).unflatten(-1, (n_experts, rank)).sum(dim=-1)
            g_p = g_p.sum_to_size(probs.shape).to(probs.dtype)
        g_u0 = (g_u if p_rep is None else g_u * p_rep).reshape(-1, n_experts * rank)
    g_l = w = None
    if router_weight is not None:
        cdt = probs.dtype
        xr = x2.to(cdt).view(-1, 1, d_in)
        probs3 = probs.reshape(-1, 1, n_experts)
        if g_probs is not None:
            g_p = g_p + g_probs
        full = full_softmax_if_masked(xr, router_weight, top_k, renormalize)
        g_l = logits_grad(probs3, g_p.reshape(probs3.shape), g_logits, full)  # [n, E]
        g_p = None
        w = router_weight.to(cdt)
        if g_l.dtype == dt:  # one product for the LoRA's and the router's gradients
            g_u0, a_cat = torch.cat([g_u0, g_l], dim=1), torch.cat([a_cat, w], dim=1)
        else:
            g_w = weight_grad(g_l, xr).to(router_weight.dtype) if need_w else None
            if need_x:
                g_x = torch.mm(g_l, w.T).to(dt)
    if need_x:
        g_x_lora = torch.mm(g_u0, a_cat.T)
        g_x = g_x_lora if g_x is None else g_x_lora.add_(g_x)
        g_x = g_x.view(x.shape)
    if need_a or (need_w and g_w is None and g_l is not None):
        g_kernels = weight_grad(g_u0, x2.view(-1, 1, d_in))  # [d_in, E*r (+ E)]
        g_a_cat = g_kernels[:, : n_experts * rank]
        g_a = g_a_cat.reshape(d_in, n_experts, rank).permute(1, 0, 2).to(lora_A.dtype)
        if g_l is not None and g_w is None:
            g_w = g_kernels[:, n_experts * rank :].to(router_weight.dtype)
    return g_x, g_p if need_p else None, g_w if need_w else None, g_a if need_a else None, g_b


def _check_molora_shapes(x: Tensor, lora_A: Tensor, lora_B: Tensor, op: str) -> None:
    n_experts, d_in, rank = lora_A.shape
    if x.shape[-1] != d_in or tuple(lora_B.shape[:2]) != (n_experts, rank):
        raise ValueError(
            f"{op}: x {tuple(x.shape)}, lora_A {tuple(lora_A.shape)} and lora_B "
            f"{tuple(lora_B.shape)} do not fit x [..., d_in], A [E, d_in, r], B [E, r, d_out]"
        )


def _check_base(base: Tensor | None, x: Tensor, lora_B: Tensor, op: str) -> None:
    want = (*x.shape[:-1], lora_B.shape[-1])
    if base is not None and tuple(base.shape) != want:
        raise ValueError(f"{op}: base has shape {tuple(base.shape)}; expected {want}")


def fused_molora(
    x: Tensor,
    probs: Tensor | None,
    lora_A: Tensor,
    lora_B: Tensor,
    scale: float,
    base: Tensor | None = None,
) -> Tensor:
    """MoLoRA ``base + scale * sum_e p_e (x @ A_e) @ B_e`` as two matmuls over the
    concatenated experts, with routing probabilities computed elsewhere (e.g. per sequence).

    Args:
      x: ``[..., d_in]``.
      probs: ``[..., E]``, broadcastable to x's leading axes (float32, from the router, with
        normal autograd); None when ``E == 1``.
      lora_A: ``[E, d_in, r]``.  lora_B: ``[E, r, d_out]``.
      scale: the LoRA scale ``alpha / r``.
      base: the frozen module's output ``[..., d_out]``, added in the same product; None
        returns the delta alone.
    Returns:
      ``[..., d_out]`` in base's dtype (x's without a base).
    """
    _check_molora_shapes(x, lora_A, lora_B, "fused_molora")
    _check_base(base, x, lora_B, "fused_molora")
    n_experts = lora_A.shape[0]
    if probs is None and n_experts != 1:
        raise ValueError(f"fused_molora: {n_experts} experts need routing probabilities")
    if probs is not None and probs.shape[-1] != n_experts:
        raise ValueError(f"fused_molora: probs {tuple(probs.shape)} do not end in E={n_experts}")
    args = (x, base, probs, None, lora_A, lora_B, float(scale), None, True)
    if not _wants_grad(x, base, probs, lora_A, lora_B):
        return _routed_forward(*args)[0]
    return FusedMoLoRA.apply(*args)[0]


def fused_routed_molora(
    x: Tensor,
    router_weight: Tensor,
    lora_A: Tensor,
    lora_B: Tensor,
    scale: float,
    top_k: int | None = None,
    renormalize: bool = True,
    base: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """MoLoRA with its own token router on ``x``: ``(out, probs, logits)``.

    ``probs = router_probs(router_logits(x, router_weight), top_k, renormalize)``, then as
    :func:`fused_molora`; the router's input gradient is computed in the same product as the
    LoRA's.

    Args:
      x: ``[..., d_in]``.  router_weight: ``[d_in, E]``.
      lora_A: ``[E, d_in, r]``.  lora_B: ``[E, r, d_out]``.  scale: ``alpha / r``.
      top_k, renormalize: as :func:`mixlight.math.router_probs`.
      base: the frozen module's output ``[..., d_out]``, or None for the delta alone.
    Returns:
      ``out [..., d_out]`` (base's dtype, else x's), and ``probs``, ``logits`` ``[..., E]``
      in float32 (float64 for float64 ``x``).
    """
    _check_molora_shapes(x, lora_A, lora_B, "fused_routed_molora")
    _check_base(base, x, lora_B, "fused_routed_molora")
    if tuple(router_weight.shape) != (x.shape[-1], lora_A.shape[0]):
        raise ValueError(
            f"fused_routed_molora: router_weight has shape {tuple(router_weight.shape)}; "
            f"expected [{x.shape[-1]}, {lora_A.shape[0]}]"
        )
    top_k = _soft_if_all(top_k, lora_A.shape[0], "fused_routed_molora")
    args = (x, base, None, router_weight, lora_A, lora_B, float(scale), top_k, renormalize)
    if not _wants_grad(x, base, router_weight, lora_A, lora_B):
        return _routed_forward(*args)  # type: ignore[return-value]
    return FusedMoLoRA.apply(*args)
