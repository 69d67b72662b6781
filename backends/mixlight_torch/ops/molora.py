"""Fused MoLoRA (``fused_molora``, ``fused_routed_molora``): two matmuls over the
concatenated experts, with the token router optionally inside the op.

See :mod:`mixlight_torch.ops` for what is saved and allocated.
"""

from __future__ import annotations

from typing import Any  # ctx: torch's FunctionCtx, given the attributes forward sets

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mixlight._op_checks import check_molora, soft_if_all
from mixlight_torch.ops._precision import compute_dtype, no_autocast, wants_grad
from mixlight_torch.ops._routing import (
    full_softmax_if_masked,
    logits_grad,
    no_token_grads,
    route_tokens,
    weight_grad,
)


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
            routed_shape = (*x.shape[:-1], router_weight.shape[-1])  # no -1: 0 tokens
            probs, logits = (t.view(routed_shape) for t in (probs, logits))
        out = _molora_forward(x, base, probs, lora_A, lora_B, scale)
    return out, probs, logits


class FusedMoLoRA(torch.autograd.Function):
    """Routed mixture of LoRA deltas, ``(out, probs, logits)``; see :func:`fused_molora` and
    :func:`fused_routed_molora`. Exactly one of ``probs`` (given) and ``router_weight`` (a
    token router on ``x``, computed here) is set, or neither for one expert."""

    @staticmethod
    def forward(
        ctx: Any,
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
        ctx: Any, g_out: Tensor | None, g_probs: Tensor | None, g_logits: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x, probs, router_weight, lora_A, lora_B = ctx.saved_tensors
        need_x, need_base, need_p, need_w, need_a, need_b = ctx.needs_input_grad[:6]
        routed = router_weight is not None
        g_base = g_out if need_base else None
        given_probs = None if routed else probs
        empty = no_token_grads(
            (x, given_probs, router_weight, lora_A, lora_B),
            (need_x, need_p, need_w, need_a, need_b),
        )
        if empty is not None:
            g_x, g_p, g_w, g_a, g_b = empty
            return g_x, g_base, g_p, g_w, g_a, g_b, None, None, None
        with no_autocast(x):
            g_x, g_p, g_w, g_a, g_b = _molora_backward(
                (x, probs, router_weight, lora_A, lora_B),
                (g_out, g_probs if routed else None, g_logits),
                (ctx.scale, ctx.top_k, ctx.renormalize),
                (need_x, need_p, need_w, need_a, need_b),
            )
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
        assert probs is not None  # a router's probabilities are saved with it
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
        assert probs is not None and g_p is not None  # both set above when there is a router
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
        if router_weight is not None and g_l is not None and g_w is None:
            g_w = g_kernels[:, n_experts * rank :].to(router_weight.dtype)
    return g_x, g_p if need_p else None, g_w if need_w else None, g_a if need_a else None, g_b


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
    check_molora(x.shape, lora_A.shape, lora_B.shape, "fused_molora", None, _shape(base))
    n_experts = lora_A.shape[0]
    if probs is None and n_experts != 1:
        raise ValueError(f"fused_molora: {n_experts} experts need routing probabilities")
    if probs is not None and probs.shape[-1] != n_experts:
        raise ValueError(f"fused_molora: probs {tuple(probs.shape)} do not end in E={n_experts}")
    args = (x, base, probs, None, lora_A, lora_B, float(scale), None, True)
    if not wants_grad(x, base, probs, lora_A, lora_B):
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
    check_molora(
        x.shape,
        lora_A.shape,
        lora_B.shape,
        "fused_routed_molora",
        router_weight.shape,
        _shape(base),
    )
    top_k = soft_if_all(top_k, lora_A.shape[0], "fused_routed_molora")
    args = (x, base, None, router_weight, lora_A, lora_B, float(scale), top_k, renormalize)
    if not wants_grad(x, base, router_weight, lora_A, lora_B):
        return _routed_forward(*args)  # type: ignore[return-value]
    return FusedMoLoRA.apply(*args)


def _shape(t: Tensor | None) -> tuple[int, ...] | None:
    return None if t is None else tuple(t.shape)
