"""Mixing rules: a routed soft merge of (IA)³ vectors, and a routed mixture of LoRA deltas."""

from __future__ import annotations

from typing import Any

from einops import einsum, rearrange, repeat

from mixlight._backend_registry import primitives_for

Array = Any


def merge_vectors(probs: Array | None, vectors: Array, heads: int | None = None) -> Array:
    """The per-token merged scaling vector, float32.

    Args:
      probs: ``[..., E]``, or ``[..., heads, E]`` per head; None when ``E == 1`` (no router).
      vectors: ``[E, d]``, ``d = heads * d_head`` head-major when per head.
    Returns:
      ``[..., d]`` (``[d]`` without a router).
    """
    if probs is None:
        if vectors.shape[0] != 1:
            raise ValueError(
                f"{vectors.shape[0]} experts need routing probabilities; got probs=None"
            )
        return vectors[0]
    if heads:
        per_head = rearrange(vectors, "e (h k) -> e h k", h=heads)
        merged = einsum(probs, per_head, "... h e, e h k -> ... h k")
        return rearrange(merged, "... h k -> ... (h k)")
    return einsum(probs, vectors, "... e, e d -> ... d")


def mix_vectors(h: Array, probs: Array | None, vectors: Array, heads: int | None = None) -> Array:
    """MoV: ``h * (probs @ vectors)``; h ``[..., d]`` -> ``[..., d]`` in h's dtype."""
    p = primitives_for(h)
    merged = merge_vectors(probs, p.to_float32(vectors), heads)
    return h * p.cast_like(merged, h)


def lowrank_mixture(
    x: Array,
    probs: Array | None,
    lora_A: Array,
    lora_B: Array,
    scale: float,
    like: Array | None = None,
) -> Array:
    """MoLoRA delta: ``scale * sum_e p_e (x @ A_e) @ B_e`` as two contractions over the
    concatenated experts, never materialising per-expert outputs ``[..., E, d_out]``.

    Args:
      x: ``[..., d_in]``.
      probs: ``[..., E]`` (broadcastable to x's leading axes); None when ``E == 1``.
      lora_A: ``[E, d_in, r]``.  lora_B: ``[E, r, d_out]``.
      like: cast the result to this array's dtype (default: x's).
    Returns:
      ``[..., d_out]``.
    """
    p = primitives_for(x)
    rank = lora_A.shape[-1]
    a_cat = rearrange(p.cast_like(lora_A, x), "e i r -> i (e r)")
    b_cat = rearrange(p.cast_like(lora_B, x), "e r o -> (e r) o")
    u = einsum(x, a_cat, "... i, i f -> ... f")  # [..., E*r]
    if probs is not None:
        u = u * p.cast_like(repeat(probs, "... e -> ... (e r)", r=rank), x)
    elif lora_A.shape[0] != 1:
        raise ValueError(f"{lora_A.shape[0]} experts need routing probabilities; got None")
    delta = einsum(u, b_cat, "... f, f o -> ... o") * scale
    return p.cast_like(delta, x if like is None else like)
