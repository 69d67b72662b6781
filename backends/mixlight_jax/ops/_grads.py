"""Backward pieces the fused MoV and MoLoRA ops share."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _rows_tn(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a [..., i]``, ``b [..., j]`` -> ``a^T b [i, j]``, summed over every leading axis.

    One 2-D dot contracting the rows, so that XLA on CPU reads both operands as they lie
    (contracting several axes at once first copies a transposed ``[..., d]``). Its library
    call is ~6x faster with the narrow operand on the left, so a wide ``a`` is computed as
    ``(b^T a)^T``; the barrier keeps XLA from folding that transpose back into the dot.
    """
    a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    contract = (((0,), (0,)), ((), ()))
    if a2.shape[1] <= b2.shape[1]:
        return jax.lax.dot_general(a2, b2, contract)
    return jax.lax.optimization_barrier(jax.lax.dot_general(b2, a2, contract)).T


def _logits_grad(p, g_p, g_logits, full_softmax):
    """The logits' gradient ``[..., E]`` from those of ``p = router_probs(logits)`` and of
    the logits themselves. ``full_softmax`` is None for a softmax over the kept experts (soft,
    or renormalised top-k): ``p * (g_p - sum(g_p * p))``; for the unrenormalised top-k case
    ``p = mask * s`` it is the full softmax ``s``: ``p * g_p - s * sum(g_p * p)``."""
    dot = jnp.sum(g_p * p, axis=-1, keepdims=True)
    g_l = p * (g_p - dot) if full_softmax is None else p * g_p - full_softmax * dot
    return g_l + g_logits
