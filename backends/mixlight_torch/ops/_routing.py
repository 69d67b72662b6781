"""The token router inside the fused ops: forward, and backward to the logits.

Tokens are flattened and every tensor is per head (a router without heads is one head):
``route_in [n, H, k]``, router kernel ``[k, E]``, ``probs`` and ``logits`` ``[n, H, E]``.
The math is :func:`mixlight.math.router_logits` and :func:`mixlight.math.router_probs`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixlight_torch.ops._precision import is_small
from mixlight_torch.primitives import top_k_indices


def mask_top_k(probs: Tensor, top_k: int | None, renormalize: bool) -> Tensor:
    """``router_probs`` after the softmax: ``[..., E] -> [..., E]``; keeps the ``top_k``
    largest (ties to the lower index), renormalised to sum 1 or not."""
    if top_k is None:
        return probs
    keep = torch.zeros_like(probs).scatter_(-1, top_k_indices(probs, top_k), 1.0)
    probs = probs * keep
    if renormalize:
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def _softmax_small(logits: Tensor) -> Tensor:
    """``softmax(logits, -1)`` from elementwise ops and reductions (no parallel region for
    small inputs)."""
    exp = (logits - logits.amax(dim=-1, keepdim=True)).exp_()
    return exp.div_(exp.sum(dim=-1, keepdim=True))


def route_tokens(
    route_in: Tensor, weight: Tensor, top_k: int | None, renormalize: bool
) -> tuple[Tensor, Tensor]:
    """``(probs, logits)``, both ``[n, H, E]``, from ``route_in [n, H, k]`` (already in the
    router's dtype) and ``weight [k, E]``."""
    n_tokens, n_heads, d_route = route_in.shape
    weight = weight.to(route_in.dtype)
    if is_small(route_in, route_in.numel() * weight.shape[-1]):
        logits = (route_in.unsqueeze(-1) * weight).sum(dim=-2)
        return mask_top_k(_softmax_small(logits), top_k, renormalize), logits
    n_experts = weight.shape[-1]
    if route_in.device.type == "cpu":
        # Experts-major on CPU: the product gets a wide output ([E, n*H]; MKL is slow on a
        # skinny one) and the softmax runs across rows, vectorised over tokens (a softmax
        # along a last axis of E ~ 10 is several times slower). Measured in HISTORY.md.
        logits_t = torch.mm(weight.T, route_in.reshape(-1, d_route).T)
        probs = torch.softmax(logits_t, dim=0).T.contiguous().view(n_tokens, n_heads, n_experts)
        logits = logits_t.T.contiguous().view(n_tokens, n_heads, n_experts)
        return mask_top_k(probs, top_k, renormalize), logits
    logits = torch.mm(route_in.reshape(-1, d_route), weight).view(n_tokens, n_heads, n_experts)
    return mask_top_k(torch.softmax(logits, dim=-1), top_k, renormalize), logits


def logits_grad(
    probs: Tensor,
    g_probs: Tensor,
    g_logits: Tensor | None,
    full_softmax: Tensor | None,
) -> Tensor:
    """The gradient of the logits, ``[n * H, E]``, from those of ``probs`` and (directly) of
    ``logits``, all ``[n, H, E]`` (``g_logits`` may be None).

    ``full_softmax`` is None for the soft and renormalised top-k cases (a softmax over the kept
    entries: ``p * (g - sum(g * p))``); for the unrenormalised top-k case ``p = mask * s`` it is
    the full softmax ``s``, and the gradient is ``p * g - s * sum(g * p)``.
    """
    dot = (g_probs * probs).sum(dim=-1, keepdim=True)
    if full_softmax is None:
        g_l = probs * (g_probs - dot)
    else:
        g_l = probs * g_probs - full_softmax * dot
    if g_logits is not None:
        g_l = g_l + g_logits.reshape(probs.shape)
    return g_l.reshape(-1, probs.shape[-1])


def full_softmax_if_masked(
    route_in: Tensor, weight: Tensor, top_k: int | None, renormalize: bool
) -> Tensor | None:
    """The unmasked softmax ``[n, H, E]`` that the unrenormalised top-k backward needs
    (recomputed from the router input), else None."""
    if top_k is None or renormalize:
        return None
    return route_tokens(route_in, weight, None, True)[0]


def weight_grad(g_l: Tensor, route_in: Tensor) -> Tensor:
    """The router kernel's gradient ``[k, E]`` from ``g_l [n * H, E]`` and ``route_in [n, H,
    k]``, computed as ``(g_l^T @ x)^T``: the same product as ``x^T @ g_l``, several times
    faster on CPU (MKL is slow with a long inner dimension and a skinny output)."""
    return torch.mm(g_l.T, route_in.reshape(g_l.shape[0], -1)).T


def no_token_grads(
    inputs: tuple[Tensor | None, ...], needs: tuple[bool, ...]
) -> tuple[Tensor | None, ...] | None:
    """Zero gradients for ``inputs`` (None where not needed) when the batch has no tokens
    (``inputs[0]`` is the activation ``[..., d]``), else None: a batch of 0 tokens
    contributes nothing, and the reshapes of the general backward are ambiguous for it."""
    if inputs[0] is None or inputs[0].shape[:-1].numel() != 0:
        return None
    return tuple(
        torch.zeros_like(t) if t is not None and need else None
        for t, need in zip(inputs, needs, strict=True)
    )
