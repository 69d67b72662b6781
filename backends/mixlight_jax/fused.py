"""Fused, memory-lean MoV and MoLoRA ops: ``jax.custom_vjp`` with hand-written backward passes.

The forward of each op is the core math of :mod:`mixlight.math` (``router_logits``,
``router_probs``, ``mix_vectors``, ``lowrank_mixture``) on jax arrays, arranged for XLA on
CPU and equal to it up to float rounding: MoV sums ``probs @ vectors`` over E as a broadcast
product (fused with the scaling), MoLoRA scales the small ``B`` kernel rather than the
output and, with its own router on float32 ``x``, projects ``x`` onto the LoRA and router
kernels in one dot. What changes is what is kept for backward:

* :func:`fused_mov` keeps ``h``, the router kernel, the expert vectors and the ``[..., E]``
  probabilities. The merged ``[..., d]`` scaling vector (as wide as ``h``) is recomputed in
  backward, and so is the full softmax when the unrenormalised top-k backward needs it.
* :func:`fused_molora` keeps ``x``, ``probs`` and the two LoRA kernels; the ``[..., E*r]``
  low-rank activations are recomputed in backward. :func:`fused_routed_molora` also runs the
  token router on ``x``, so that ``x`` is kept once for both.

Both run under ``jax.jit``, ``vmap`` and ``grad``; routers compute in float32 (float64 under
``jax_enable_x64`` for float64 inputs), MoLoRA in ``x``'s dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from einops import rearrange, reduce, repeat

from mixlight._op_checks import check_molora, check_mov, soft_if_all
from mixlight.math import router_logits, router_probs

__all__ = ["fused_molora", "fused_mov", "fused_routed_molora"]

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


def _logits_grad(p, g_p, g_logits, full_softmax):
    """The logits' gradient ``[..., E]`` from those of ``p = router_probs(logits)`` and of
    the logits themselves. ``full_softmax`` is None for a softmax over the kept experts (soft,
    or renormalised top-k): ``p * (g_p - sum(g_p * p))``; for the unrenormalised top-k case
    ``p = mask * s`` it is the full softmax ``s``: ``p * g_p - s * sum(g_p * p)``."""
    dot = jnp.sum(g_p * p, axis=-1, keepdims=True)
    g_l = p * (g_p - dot) if full_softmax is None else p * g_p - full_softmax * dot
    return g_l + g_logits


_mov.defvjp(_mov_fwd, _mov_bwd)


def fused_molora(
    x: jax.Array,
    probs: jax.Array | None,
    lora_A: jax.Array,
    lora_B: jax.Array,
    scale: float,
) -> jax.Array:
    """MoLoRA delta ``scale * sum_e p_e (x @ A_e) @ B_e`` as two matmuls over the
    concatenated experts, computed and returned in x's dtype.

    Args:
      x: ``[..., d_in]``.
      probs: ``[..., E]``, broadcastable to x's leading axes (from the router, differentiated
        normally); None when ``E == 1``.
      lora_A: ``[E, d_in, r]``.  lora_B: ``[E, r, d_out]``.
      scale: the LoRA scale ``alpha / r``.
    Returns:
      ``[..., d_out]`` in x's dtype.
    """
    check_molora(x.shape, lora_A.shape, lora_B.shape, "fused_molora")
    n_experts = lora_A.shape[0]
    if probs is None and n_experts != 1:
        raise ValueError(f"fused_molora: {n_experts} experts need routing probabilities")
    if probs is not None and probs.shape[-1] != n_experts:
        raise ValueError(f"fused_molora: probs {tuple(probs.shape)} do not end in E={n_experts}")
    return _molora(x, probs, lora_A, lora_B, float(scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _molora(x, probs, lora_A, lora_B, scale):
    a_cat, b_cat = _cat_kernels(lora_A, lora_B, scale, x.dtype)
    return _mix_lowrank(x @ a_cat, probs, b_cat).astype(x.dtype)


def _molora_fwd(x, probs, lora_A, lora_B, scale):
    return _molora(x, probs, lora_A, lora_B, scale), (x, probs, lora_A, lora_B)


def _cat_kernels(lora_A, lora_B, scale, dt):
    """``A_cat [d_in, E*r]`` and ``scale * B_cat [E*r, d_out]`` in ``dt``: scaling the small
    kernel spares a pass over ``[..., d_out]`` each way (XLA does not fuse it into the dot)."""
    a_cat = rearrange(lora_A.astype(dt), "e i r -> i (e r)")
    b_cat = rearrange(lora_B.astype(dt), "e r o -> (e r) o") * jnp.asarray(scale, dt)
    return a_cat, b_cat


def _expand(probs, u0):
    """``probs [..., E]`` repeated over each expert's ``r`` columns of ``u0 [..., E*r]``, in
    ``u0``'s dtype; None for None."""
    if probs is None:
        return None
    rank = u0.shape[-1] // probs.shape[-1]
    return repeat(probs.astype(u0.dtype), "... e -> ... (e r)", r=rank)


def _mix_lowrank(u0, probs, b_cat):
    """``(u0 * p) @ scale B_cat``: ``u0 [..., E*r]`` -> ``[..., d_out]``."""
    p_rep = _expand(probs, u0)
    return (u0 if p_rep is None else u0 * p_rep) @ b_cat


def _molora_bwd(scale, saved, g_delta):
    """Gradients of ``x``, ``probs``, ``lora_A``, ``lora_B``; recomputes ``u0 = x @ A_cat``
    ``[..., E*r]`` in x's dtype."""
    x, probs, lora_A, lora_B = saved
    a_cat, b_cat = _cat_kernels(lora_A, lora_B, scale, x.dtype)
    g_u0, g_p, g_b = _lowrank_grads(x @ a_cat, probs, b_cat, g_delta.astype(x.dtype), scale)
    g_a = rearrange(_rows_tn(x, g_u0), "i (e r) -> e i r", e=lora_A.shape[0])
    g_p = None if g_p is None else _sum_to_shape(g_p, probs.shape).astype(probs.dtype)
    g_b = g_b.reshape(lora_B.shape).astype(lora_B.dtype)
    return (g_u0 @ a_cat.T).astype(x.dtype), g_p, g_a.astype(lora_A.dtype), g_b


def _lowrank_grads(u0, probs, b_cat, g, scale):
    """From ``g [..., d_out]``: the gradients of ``u0 [..., E*r]``, of ``probs [..., E]`` (None
    without) and of the unscaled ``B_cat [E*r, d_out]``."""
    p_rep = _expand(probs, u0)
    u = u0 if p_rep is None else u0 * p_rep
    g_b = _rows_tn(u, g) * jnp.asarray(scale, g.dtype)
    g_u = g @ b_cat.T  # [..., E*r]
    if p_rep is None:
        return g_u, None, g_b
    g_p = reduce(g_u * u0, "... (e r) -> ... e", "sum", e=probs.shape[-1])
    return g_u * p_rep, g_p, g_b


def fused_routed_molora(
    x: jax.Array,
    router_weight: jax.Array,
    lora_A: jax.Array,
    lora_B: jax.Array,
    scale: float,
    top_k: int | None = None,
    renormalize: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """MoLoRA with its own token router on ``x``: ``(delta, probs, logits)``.

    ``probs = router_probs(router_logits(x, router_weight), top_k, renormalize)``, then the
    delta of :func:`fused_molora`. Keeps ``x``, the kernels and ``probs`` for backward (``x``
    once, for the LoRA and the router); the router's input gradient is added to the LoRA's.

    Args:
      x: ``[..., d_in]``.  router_weight: ``[d_in, E]``.
      lora_A: ``[E, d_in, r]``.  lora_B: ``[E, r, d_out]``.  scale: ``alpha / r``.
      top_k, renormalize: as :func:`mixlight.math.router_probs`.
    Returns:
      ``delta [..., d_out]`` in x's dtype; ``probs``, ``logits`` ``[..., E]`` float32.
    """
    check_molora(x.shape, lora_A.shape, lora_B.shape, "fused_routed_molora", router_weight.shape)
    n_experts = lora_A.shape[0]
    top_k = soft_if_all(top_k, n_experts, "fused_routed_molora")
    return _routed_molora(x, router_weight, lora_A, lora_B, float(scale), top_k, bool(renormalize))


def _routed_molora_forward(x, router_weight, lora_A, lora_B, scale, top_k, renormalize):
    a_cat, b_cat = _cat_kernels(lora_A, lora_B, scale, x.dtype)
    u0, logits = _project(x, a_cat, router_weight)
    probs = router_probs(logits, top_k, renormalize)
    return _mix_lowrank(u0, probs, b_cat).astype(x.dtype), probs, logits


def _project(x, a_cat, router_weight):
    """``(x @ A_cat [..., E*r], router logits [..., E])``: one dot over ``x`` with the
    kernels side by side when ``x`` is float32 (the router's dtype), else two."""
    if x.dtype != jnp.float32:
        return x @ a_cat, router_logits(x, router_weight)
    z = x @ jnp.concatenate([a_cat, router_weight.astype(x.dtype)], axis=1)
    return z[..., : a_cat.shape[1]], z[..., a_cat.shape[1] :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _routed_molora(x, router_weight, lora_A, lora_B, scale, top_k, renormalize):
    return _routed_molora_forward(x, router_weight, lora_A, lora_B, scale, top_k, renormalize)


def _routed_molora_fwd(x, router_weight, lora_A, lora_B, scale, top_k, renormalize):
    outs = _routed_molora_forward(x, router_weight, lora_A, lora_B, scale, top_k, renormalize)
    return outs, (x, router_weight, lora_A, lora_B, outs[1])


def _routed_molora_bwd(scale, top_k, renormalize, saved, grads):
    """Gradients of ``x``, ``router_weight``, ``lora_A``, ``lora_B``: the LoRA part as
    :func:`fused_molora`'s, then the router's, whose input gradient joins the LoRA's (for
    float32 ``x`` in the same dots: ``[g_u0, g_logits]`` against ``[A_cat, W]``)."""
    x, router_weight, lora_A, lora_B, probs = saved
    g_delta, g_probs, g_logits = grads
    a_cat, b_cat = _cat_kernels(lora_A, lora_B, scale, x.dtype)
    u0, _ = _project(x, a_cat, router_weight)  # the forward's own dot, shared under jit
    g_u0, g_p, g_b = _lowrank_grads(u0, probs, b_cat, g_delta.astype(x.dtype), scale)
    full = None
    if top_k is not None and not renormalize:
        full = jax.nn.softmax(router_logits(x, router_weight), axis=-1)
    g_l = _logits_grad(probs, g_p.astype(probs.dtype) + g_probs, g_logits, full)  # [..., E]
    n_lora = a_cat.shape[1]
    if x.dtype == jnp.float32:
        g_z = jnp.concatenate([g_u0, g_l.astype(x.dtype)], axis=-1)
        g_x = g_z @ jnp.concatenate([a_cat, router_weight.astype(x.dtype)], axis=1).T
        g_aw = _rows_tn(x, g_z)
        g_a, g_w = g_aw[:, :n_lora], g_aw[:, n_lora:]
    else:
        cdt = probs.dtype
        g_x = g_u0 @ a_cat.T + (g_l @ router_weight.astype(cdt).T).astype(x.dtype)
        g_a, g_w = _rows_tn(x, g_u0), _rows_tn(x.astype(cdt), g_l)
    g_a = rearrange(g_a, "i (e r) -> e i r", e=lora_A.shape[0])
    g_b = g_b.reshape(lora_B.shape).astype(lora_B.dtype)
    return g_x.astype(x.dtype), g_w.astype(router_weight.dtype), g_a.astype(lora_A.dtype), g_b


_routed_molora.defvjp(_routed_molora_fwd, _routed_molora_bwd)


def _sum_to_shape(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Undo broadcasting: sum ``x`` over the axes that ``shape`` lacks or has as 1."""
    x = x.sum(axis=tuple(range(x.ndim - len(shape)))) if x.ndim > len(shape) else x
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1)
    return x.sum(axis=axes, keepdims=True) if axes else x


_molora.defvjp(_molora_fwd, _molora_bwd)
