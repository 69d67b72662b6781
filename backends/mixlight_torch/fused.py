"""Fused, memory-lean MoV and MoLoRA ops with hand-written backward passes.

Both ops compute exactly the core math of :mod:`mixlight.math` (``router_logits``,
``router_probs``, ``mix_vectors``, ``lowrank_mixture``) but keep only the inputs and the
``[..., E]`` routing probabilities alive for backward; everything wider is recomputed:

* :func:`fused_mov` saves ``h``, the router kernel, the expert vectors and ``probs``. The
  merged ``[..., d]`` scaling vector is recomputed in backward (one ``[.., E] x [E, d]``
  contraction), and so are the logits, when the unrenormalised top-k backward needs the full
  softmax. A plain autograd graph would keep the merged vector (``d`` floats per token, as
  wide as ``h``) and the logits besides.
* :func:`fused_molora` saves ``x``, ``probs`` and the two LoRA kernels; the ``[..., E*r]``
  low-rank activations are recomputed in backward.

The ops run with autocast disabled, so that forward and the backward recomputation see the
same dtypes: the router is always computed in float32 (float64 for float64 inputs), MoLoRA in
``x``'s dtype. Both are ``torch.compile(fullgraph=True)``-clean. No Triton kernel is provided;
the torch code below runs on every device.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["FusedMoLoRA", "FusedMoV", "fused_molora", "fused_mov"]


def no_autocast(t: Tensor) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on ``t``'s device type (free when it is off)."""
    if torch.is_autocast_enabled(t.device.type):
        return torch.autocast(device_type=t.device.type, enabled=False)
    return contextlib.nullcontext()


def _compute_dtype(h: Tensor) -> torch.dtype:
    """float32 for half and single precision, float64 for float64 inputs."""
    return torch.promote_types(h.dtype, torch.float32)


def _mask_top_k(probs: Tensor, top_k: int | None, renormalize: bool) -> Tensor:
    """``router_probs`` after the softmax: ``[..., E] -> [..., E]``; keeps the ``top_k``
    largest (ties to the lower index, as ``torch.topk``), renormalised to sum 1 or not."""
    if top_k is None:
        return probs
    keep = torch.zeros_like(probs).scatter_(-1, probs.topk(top_k, dim=-1).indices, 1.0)
    probs = probs * keep
    if renormalize:
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def _softmax_backward(probs: Tensor, g_probs: Tensor, full_softmax: Tensor | None) -> Tensor:
    """Gradient of the logits from the gradient of ``probs``; all ``[n, H, E]``.

    ``full_softmax`` is None for the soft and renormalised top-k cases (a softmax over the kept
    entries: ``p * (g - sum(g * p))``); for the unrenormalised top-k case ``p = mask * s`` it is
    the full softmax ``s`` and the gradient is ``p * g - s * sum(g * p)``.
    """
    dot = (g_probs * probs).sum(dim=-1, keepdim=True)
    if full_softmax is None:
        return probs * (g_probs - dot)
    return probs * g_probs - full_softmax * dot


def _check_mov_shapes(h: Tensor, router_weight: Tensor, vectors: Tensor, heads: int) -> None:
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
    lead, d, n_experts = h.shape[:-1], h.shape[-1], vectors.shape[0]
    cdt = _compute_dtype(h)
    with no_autocast(h):
        hr = h.reshape(-1, n_heads, d // n_heads).to(cdt)
        logits = torch.einsum("nhk,ke->nhe", hr, router_weight.to(cdt))
        probs = _mask_top_k(torch.softmax(logits, dim=-1), top_k, renormalize)
        per_head = vectors.to(cdt).reshape(n_experts, n_heads, d // n_heads)
        merged = torch.einsum("nhe,ehk->nhk", probs, per_head)
        out = h * merged.reshape(h.shape).to(h.dtype)
    routed_shape = (*lead, n_heads, n_experts) if heads else (*lead, n_experts)
    return out, probs.reshape(routed_shape), logits.reshape(routed_shape)


class FusedMoV(torch.autograd.Function):
    """Routed (IA)³ soft merge, ``(out, probs, logits)``; see :func:`fused_mov`.

    Internally a router without heads is a single head: tokens are flattened to ``n`` and
    every tensor is per head, ``h [n, H, k]``, ``probs [n, H, E]``, ``vectors [E, H, k]``.
    """

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
        # Only the inputs and the [.., E] probabilities: the merged [n, d] vector (and the
        # logits, for the unrenormalised top-k backward) are recomputed in backward.
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
        masked_softmax = ctx.top_k is not None and not ctx.renormalize
        with no_autocast(h):
            g_h, g_w, g_v = _mov_backward(
                (h, router_weight, vectors, probs),
                (g_out, g_probs, g_logits),
                masked_softmax,
                ctx.needs_input_grad[:3],
            )
        return g_h, g_w, g_v, None, None, None


def _mov_backward(
    saved: tuple[Tensor, Tensor, Tensor, Tensor],
    grads: tuple[Tensor | None, Tensor | None, Tensor | None],
    masked_softmax: bool,
    needs: tuple[bool, ...],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of ``h [..., d]``, ``router_weight [k, E]`` and ``vectors [E, d]``.

    ``saved`` is ``(h, router_weight, vectors, probs [n, H, E])``; ``grads`` is ``(g_out
    [..., d], g_probs, g_logits [..., (H,) E])``, each possibly None; ``needs`` says which
    input gradients are wanted. ``masked_softmax`` (unrenormalised top-k) recomputes the
    logits from ``h`` and the router kernel, for the full softmax its backward needs.
    """
    h, router_weight, vectors, probs = saved
    g_out, g_probs, g_logits = grads
    need_h, need_w, need_v = needs
    n_tokens, n_heads, n_experts = probs.shape
    d_head = h.shape[-1] // n_heads
    cdt = probs.dtype
    per_head = vectors.to(cdt).reshape(n_experts, n_heads, d_head)
    g_merged = None
    if g_out is not None:
        g_merged = (g_out * h).reshape(n_tokens, n_heads, d_head).to(cdt)
    g_v = None
    if need_v and g_merged is not None:
        g_v = torch.einsum("nhe,nhk->ehk", probs, g_merged).reshape(vectors.shape)
        g_v = g_v.to(vectors.dtype)
    if not (need_h or need_w):
        return None, None, g_v
    g_p = probs.new_zeros(probs.shape) if g_probs is None else g_probs.reshape(probs.shape)
    if g_merged is not None:
        g_p = g_p + torch.einsum("nhk,ehk->nhe", g_merged, per_head)
    hr = h.reshape(n_tokens, n_heads, d_head).to(cdt)
    w = router_weight.to(cdt)
    full = torch.softmax(torch.einsum("nhk,ke->nhe", hr, w), dim=-1) if masked_softmax else None
    g_l = _softmax_backward(probs, g_p, full)
    if g_logits is not None:
        g_l = g_l + g_logits.reshape(probs.shape)
    flat_l = g_l.reshape(-1, n_experts)  # [n*H, E]
    g_w = None
    if need_w:
        # (g_l^T @ h)^T rather than h^T @ g_l: the same product, ~7x faster on CPU (MKL is
        # slow with a long inner dimension and a skinny output).
        g_w = (flat_l.T @ hr.reshape(-1, d_head)).T.to(router_weight.dtype)
    g_h = None
    if need_h:
        if g_out is None:
            g_h = (flat_l @ w.T).reshape(h.shape).to(h.dtype)
        else:
            merged = torch.einsum("nhe,ehk->nhk", probs, per_head).reshape(h.shape)
            direct = (g_out * merged.to(h.dtype)).reshape(-1, d_head).to(cdt)
            g_h = torch.addmm(direct, flat_l, w.T).reshape(h.shape).to(h.dtype)
    return g_h, g_w, g_v


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
    _check_mov_shapes(h, router_weight, vectors, heads or 1)
    if top_k is not None and top_k < 1:
        raise ValueError(f"fused_mov: top_k must be at least 1; got {top_k}")
    if top_k is not None and top_k >= vectors.shape[0]:
        top_k = None
    if not (
        torch.is_grad_enabled()
        and (h.requires_grad or router_weight.requires_grad or vectors.requires_grad)
    ):
        # Inference (e.g. generation): skip the autograd.Function and its bookkeeping.
        return _mov_forward(h, router_weight, vectors, heads or None, top_k, renormalize)
    return FusedMoV.apply(h, router_weight, vectors, heads or None, top_k, renormalize)


class FusedMoLoRA(torch.autograd.Function):
    """Routed mixture of LoRA deltas; see :func:`fused_molora`."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        probs: Tensor | None,
        lora_A: Tensor,
        lora_B: Tensor,
        scale: float,
    ) -> Tensor:
        with no_autocast(x):
            u = _molora_hidden(x, lora_A, probs)
            delta = torch.matmul(u, _b_cat(lora_B, x.dtype)) * scale
        ctx.save_for_backward(x, probs, lora_A, lora_B)
        ctx.scale = scale
        return delta

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g_delta: Tensor) -> tuple[Tensor | None, ...]:
        x, probs, lora_A, lora_B = ctx.saved_tensors
        with no_autocast(x):
            grads = _molora_backward(
                x, probs, lora_A, lora_B, g_delta * ctx.scale, ctx.needs_input_grad[:4]
            )
        return (*grads, None)


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


def _molora_hidden(x: Tensor, lora_A: Tensor, probs: Tensor | None) -> Tensor:
    """The routed low-rank activations ``(x @ A_cat) * p``, ``[..., E*r]`` in x's dtype."""
    u = torch.matmul(x, _a_cat(lora_A, x.dtype))
    if probs is None:
        return u
    return u * _expanded_probs(probs, lora_A.shape[-1], x.dtype)


def _molora_backward(
    x: Tensor,
    probs: Tensor | None,
    lora_A: Tensor,
    lora_B: Tensor,
    g_delta: Tensor,
    needs: tuple[bool, ...],
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of ``x``, ``probs``, ``lora_A``, ``lora_B``, given the scaled ``g_delta``
    ``[..., d_out]``; recomputes ``u0 = x @ A_cat`` ``[..., E*r]``."""
    need_x, need_p, need_a, need_b = needs
    n_experts, d_in, rank = lora_A.shape
    dt = x.dtype
    u0 = torch.matmul(x, _a_cat(lora_A, dt))
    p_rep = None if probs is None else _expanded_probs(probs, rank, dt)
    u = u0 if p_rep is None else u0 * p_rep
    x2, g2 = x.reshape(-1, d_in), g_delta.reshape(-1, g_delta.shape[-1])
    g_b = None
    if need_b:
        g_b = (u.reshape(-1, n_experts * rank).T @ g2).reshape(lora_B.shape).to(lora_B.dtype)
    g_u = torch.matmul(g_delta, _b_cat(lora_B, dt).T)  # [..., E*r]
    g_p = None
    if need_p and probs is not None:
        g_p = (g_u * u0).unflatten(-1, (n_experts, rank)).sum(dim=-1)
        g_p = g_p.sum_to_size(probs.shape).to(probs.dtype)
    g_u0 = g_u if p_rep is None else g_u * p_rep
    g_x = torch.matmul(g_u0, _a_cat(lora_A, dt).T) if need_x else None
    g_a = None
    if need_a:
        g_a_cat = x2.T @ g_u0.reshape(-1, n_experts * rank)  # [d_in, E*r]
        g_a = g_a_cat.reshape(d_in, n_experts, rank).permute(1, 0, 2).to(lora_A.dtype)
    return g_x, g_p, g_a, g_b


def fused_molora(
    x: Tensor, probs: Tensor | None, lora_A: Tensor, lora_B: Tensor, scale: float
) -> Tensor:
    """MoLoRA delta ``scale * sum_e p_e (x @ A_e) @ B_e`` as two matmuls over the
    concatenated experts, computed and returned in x's dtype.

    Args:
      x: ``[..., d_in]``.
      probs: ``[..., E]``, broadcastable to x's leading axes (float32, from the router, with
        normal autograd); None when ``E == 1``.
      lora_A: ``[E, d_in, r]``.  lora_B: ``[E, r, d_out]``.
      scale: the LoRA scale ``alpha / r``.
    Returns:
      ``[..., d_out]`` in x's dtype.
    """
    n_experts, d_in, rank = lora_A.shape
    if x.shape[-1] != d_in or tuple(lora_B.shape[:2]) != (n_experts, rank):
        raise ValueError(
            f"fused_molora: x {tuple(x.shape)}, lora_A {tuple(lora_A.shape)} and lora_B "
            f"{tuple(lora_B.shape)} do not fit x [..., d_in], A [E, d_in, r], B [E, r, d_out]"
        )
    if probs is None and n_experts != 1:
        raise ValueError(f"fused_molora: {n_experts} experts need routing probabilities")
    if probs is not None and probs.shape[-1] != n_experts:
        raise ValueError(f"fused_molora: probs {tuple(probs.shape)} do not end in E={n_experts}")
    return FusedMoLoRA.apply(x, probs, lora_A, lora_B, float(scale))
