"""The fused MoLoRA ops (:func:`fused_molora`, :func:`fused_routed_molora`):
``jax.custom_vjp``; see :mod:`mixlight_jax.ops`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from einops import rearrange, reduce, repeat

from mixlight._op_checks import check_molora, soft_if_all
from mixlight.math import router_logits, router_probs
from mixlight_jax.ops._grads import _logits_grad, _rows_tn

__all__ = ["fused_molora", "fused_routed_molora"]


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
