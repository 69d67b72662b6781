"""The fused MoV op (:func:`fused_mov`): ``jax.custom_vjp``; see :mod:`mixlight_jax.ops`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from einops import rearrange, repeat

from mixlight._op_checks import check_mov, soft_if_all
from mixlight.math import router_logits, router_probs
from mixlight_jax.ops._grads import _logits_grad, _rows_tn

__all__ = ["fused_mov"]

BROADCAST_MAX_EXPERTS = 16
"""Up to this many experts MoV without heads merges ``probs @ vectors`` as a broadcast sum
(measured on CPU: 1.8x (IA)³ at E=10 against 2.5x as a dot; at E=60 the sum was 2x slower)."""


def fused_mov(
    h: jax.Array,
    router_weight: jax.Array,
    vectors: jax.Array,
    heads: int | None = None,
    top_k: int | None = None,
    renormalize: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array]:
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
      per head) in float32.
    """
    check_mov(h.shape, router_weight.shape, vectors.shape, heads)
    n_experts = router_weight.shape[-1]
    top_k = soft_if_all(top_k, n_experts, "fused_mov")
    return _mov(h, router_weight, vectors, heads or None, top_k, bool(renormalize))


def _mov_forward(h, router_weight, vectors, heads, top_k, renormalize):
    logits = router_logits(h, router_weight, heads)
    probs = router_probs(logits, top_k, renormalize)
    merged = _expert_sum(_per_head(probs, h, heads), vectors.astype(probs.dtype))
    return h * merged.astype(h.dtype), probs, logits


def _per_head(probs: jax.Array, h: jax.Array, heads: int | None) -> jax.Array:
    """``probs [..., E]`` or ``[..., H, E]`` as ``[..., H, E]`` (``H = 1`` without heads)."""
    return probs.reshape(*h.shape[:-1], heads or 1, probs.shape[-1])


def _expert_sum(coef: jax.Array, rows: jax.Array) -> jax.Array:
    """``sum_e coef[..., h, e] * rows[e, (h k)]``: ``coef [..., H, E]``, ``rows [E, H*k]``
    -> ``[..., H*k]``.

    A broadcast product summed over E rather than a dot: XLA on CPU fuses it, with the
    elementwise work around it, into one pass over ``[..., d]``, where a dot with a skinny
    ``[E, d]`` side is a library call that writes its ``[..., d]`` result out first. Above
    :data:`BROADCAST_MAX_EXPERTS` experts the arithmetic outweighs that pass, and per head
    (``H > 1``) XLA merged a T5's sites' sums into one fusion that wrote out their broadcast
    ``[..., H, E, k]`` operands: a dot in both cases.
    """
    per_head = rearrange(rows, "e (h k) -> h e k", h=coef.shape[-2])
    if rows.shape[0] > BROADCAST_MAX_EXPERTS or coef.shape[-2] > 1:
        return rearrange(jnp.einsum("...he,hek->...hk", coef, per_head), "... h k -> ... (h k)")
    return rearrange(jnp.sum(coef[..., None] * per_head, axis=-2), "... h k -> ... (h k)")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _mov(h, router_weight, vectors, heads, top_k, renormalize):
    return _mov_forward(h, router_weight, vectors, heads, top_k, renormalize)


def _mov_fwd(h, router_weight, vectors, heads, top_k, renormalize):
    out, probs, logits = _mov_forward(h, router_weight, vectors, heads, top_k, renormalize)
    return (out, probs, logits), (h, router_weight, vectors, probs)


def _mov_bwd(heads, top_k, renormalize, saved, grads):
    """Gradients of ``h [..., d]``, ``router_weight [k, E]`` and ``vectors [E, d]`` from those of
    ``out``, ``probs`` and ``logits``. Works per head: ``[..., H, k]`` and ``[..., H, E]``."""
    h, router_weight, vectors, probs = saved
    g_out, g_probs, g_logits = grads
    # The barrier keeps XLA from sharing the merged vector with the forward's: then neither
    # pass writes it out, each fuses it into its own loop over [..., d].
    probs, vectors = jax.lax.optimization_barrier((probs, vectors))
    n_heads, cdt = heads or 1, probs.dtype
    split = functools.partial(rearrange, pattern="... (h k) -> ... h k", h=n_heads)
    p = _per_head(probs, h, heads)  # [..., H, E]
    g_merged = split((g_out * h).astype(cdt))  # [..., H, k]
    g_v = _head_tn(p, g_merged).reshape(vectors.shape)
    g_p = g_probs.reshape(p.shape) + _head_nt(g_merged, split(vectors.astype(cdt)))
    full = None
    if top_k is not None and not renormalize:  # p = mask * softmax: needs the full softmax
        full = jax.nn.softmax(router_logits(h, router_weight, n_heads), axis=-1)
    g_l = _logits_grad(p, g_p, g_logits.reshape(p.shape), full)
    g_w = _rows_tn(split(h.astype(cdt)), g_l)
    route_rows = repeat(router_weight.astype(cdt).T, "e k -> e (h k)", h=n_heads)
    merged = _expert_sum(p, vectors.astype(cdt))  # recomputed, [..., d]
    g_h = _expert_sum(g_l, route_rows).astype(h.dtype) + g_out * merged.astype(h.dtype)
    return g_h, g_w.astype(router_weight.dtype), g_v.astype(vectors.dtype)


def _head_tn(p: jax.Array, g: jax.Array) -> jax.Array:
    """``p [..., H, E]``, ``g [..., H, k]`` -> ``[E, H, k]`` summed over the leading axes."""
    if p.shape[-2] == 1:
        return _rows_tn(p, g)[:, None, :]
    return jnp.einsum("...he,...hk->ehk", p, g)


def _head_nt(g: jax.Array, rows: jax.Array) -> jax.Array:
    """``g [..., H, k]``, ``rows [E, H, k]`` -> ``[..., H, E]`` (per head ``g @ rows^T``)."""
    if g.shape[-2] == 1:
        return (g[..., 0, :] @ rows[:, 0, :].T)[..., None, :]
    return jnp.einsum("...hk,ehk->...he", g, rows)


_mov.defvjp(_mov_fwd, _mov_bwd)
