"""Routers: logits, probabilities (soft or top-k) and sequence pooling of the router input."""

from __future__ import annotations

from typing import Any

from einops import einsum, rearrange, reduce

from mixlight._backend_registry import primitives_for

Array = Any


def router_logits(route_in: Array, weight: Array, heads: int | None = None) -> Array:
    """Router logits in float32, whatever the input dtype.

    Args:
      route_in: ``[..., d]``; with ``heads``, ``d = heads * d_head``, head-major.
      weight: ``[d_route, E]``, ``d_route = d`` (or ``d_head`` per head, shared by all heads).
      heads: route each head's slice separately.
    Returns:
      ``[..., E]``, or ``[..., heads, E]`` with ``heads``.
    """
    p = primitives_for(route_in)
    r = p.to_float32(route_in)
    if heads:
        r = rearrange(r, "... (h k) -> ... h k", h=heads)
    return einsum(r, p.to_float32(weight), "... k, k e -> ... e")


def router_probs(logits: Array, top_k: int | None = None, renormalize: bool = True) -> Array:
    """Softmax over experts (last axis), optionally keeping only the ``top_k`` largest.

    ``renormalize=False`` keeps the masked softmax unnormalised, as the paper's reference code
    does (so at initialisation a top-1 MoV scales activations by about 1/E).
    """
    p = primitives_for(logits)
    probs = p.softmax(logits)
    if top_k is None or top_k >= logits.shape[-1]:
        return probs
    probs = probs * p.top_k_mask(probs, top_k)
    if renormalize:
        probs = probs / reduce(probs, "... e -> ... 1", "sum")
    return probs


def pool_sequence(route_in: Array, mask: Array | None = None) -> Array:
    """Mean of the router input over each sequence's non-padding tokens.

    Args:
      route_in: ``[batch, seq, d]``.
      mask: ``[batch, seq]``, 1 for tokens and 0 for padding (an HF ``attention_mask``); None
        averages over every position.
    Returns:
      ``[batch, 1, d]`` in float32, which broadcasts over the sequence axis.
    """
    if route_in.ndim != 3:
        raise ValueError(
            f"sequence routing needs a [batch, seq, d] router input; got shape "
            f"{tuple(route_in.shape)}"
        )
    p = primitives_for(route_in)
    r = p.to_float32(route_in)
    if mask is None:
        return reduce(r, "b s d -> b 1 d", "mean")
    if tuple(mask.shape) != tuple(route_in.shape[:2]):
        raise ValueError(
            f"sequence routing mask has shape {tuple(mask.shape)}; expected [batch, seq] = "
            f"{tuple(route_in.shape[:2])} to match the router input"
        )
    m = p.to_float32(mask)
    total = einsum(r, m, "b s d, b s -> b d")
    count = reduce(m, "b s -> b 1", "sum")
    count = count + p.cast_like(count == 0, count)  # an all-padding row pools to zeros
    return rearrange(total / count, "b d -> b 1 d")
