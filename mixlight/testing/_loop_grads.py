"""Hand-derived gradients of the loop reference (:mod:`mixlight.testing._loops`), in loops.

For a loss ``L = sum(g_out * out)`` this gives ``dL/dx``, ``dL/dh`` and ``dL/d<param>`` for
every adapter parameter of a built-in expert kind, float64, each the shape of its input.
The rules, per token (and per head for the router):

- MoV ``out_c = h_c m_c`` with ``m_c = sum_e p[j(c), e] v[e, c]``: ``dh_c = g_c m_c``,
  ``dv[e, c] = g_c h_c p[j(c), e]``, ``dp[j, e] = sum_{c in head j} g_c h_c v[e, c]``;
- MoLoRA ``out = h + s sum_e p_e (x A_e) B_e``: ``dh = g``, ``dp_e = s g.(u_e B_e)``,
  ``dB_e = s p_e u_e g^T``, ``dA_e = x (s p_e B_e g)^T``, ``dx = sum_e A_e (s p_e B_e g)``;
- softmax (and renormalised top-k, a softmax over the kept experts):
  ``dl_j = p_j (dp_j - sum_i p_i dp_i)``; unrenormalised top-k ``p = keep * s``:
  ``dl_j = keep_j s_j dp_j - s_j sum_i keep_i s_i dp_i`` (the mask itself is constant);
- logits ``l = r W``: ``dW += r^T dl``, ``dr = W dl``; sequence pooling hands ``dr`` back
  to each token in proportion ``mask / count`` (nothing for a row without tokens).

A custom expert kind has no hand-derived rule: its mixing gradients (``dx``, ``dh``, its
parameters' and ``dp``) come from float64 central differences of its per-token loop
(:func:`mixlight.testing._loops.token_mixer`: its ``loop_reference``, else its ``mix`` on
numpy), token by token, and its routing gradients from the hand-derived router rules above.
Central differences cost two loop calls per input element and token: keep such cases small.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mixlight.testing._loops import (
    _as64,
    _head_slices,
    _low_rank_scale,
    loop_route,
    loop_softmax,
    loop_top_k,
    token_mixer,
)

Params = Mapping[str, np.ndarray]  # a site's parameters by short name
Grads = dict[str, np.ndarray]  # gradients by short name (and "x", "h"), accumulated in place
BUILT_IN = ("vectors", "low_rank")
"""The kinds whose gradients are derived by hand; every other kind's mixing gradients come
from central differences (:func:`_numeric_token_grad`)."""


def _router_row_grad(
    logits: np.ndarray, g_probs: np.ndarray, top_k: int | None, renormalize: bool
) -> list[float]:
    """``dL/dlogits [E]`` of one router row from ``dL/dprobs [E]``."""
    n_experts = len(logits)
    soft = loop_softmax([float(v) for v in logits])
    keep = [1.0] * n_experts
    if top_k is not None and top_k < n_experts:
        kept = loop_top_k(soft, top_k)
        keep = [1.0 if e in kept else 0.0 for e in range(n_experts)]
    if top_k is None or top_k >= n_experts or renormalize:
        total = sum(keep[e] * soft[e] for e in range(n_experts))
        p = [keep[e] * soft[e] / total for e in range(n_experts)]
        dot = sum(p[i] * float(g_probs[i]) for i in range(n_experts))
        return [p[e] * (float(g_probs[e]) - dot) for e in range(n_experts)]
    dot = sum(keep[i] * soft[i] * float(g_probs[i]) for i in range(n_experts))
    return [keep[e] * soft[e] * float(g_probs[e]) - soft[e] * dot for e in range(n_experts)]


def _vectors_token_grad(
    params: Params,
    grads: Grads,
    probs: np.ndarray | None,
    g_probs: np.ndarray | None,
    h: np.ndarray,
    g: np.ndarray,
    heads: int | None,
) -> np.ndarray:
    """Accumulate one MoV token's ``dv`` and ``dp`` (in place); return its ``dh``."""
    vectors = params["vectors"]
    g_h = np.zeros(h.shape)
    for j, cols in enumerate(_head_slices(h.shape[0], heads)):
        for c in range(cols.start, cols.stop):
            merged = 0.0
            for e in range(vectors.shape[0]):
                p = 1.0 if probs is None else float(probs[j, e] if heads else probs[e])
                merged += p * float(vectors[e, c])
                grads["vectors"][e, c] += float(g[c]) * float(h[c]) * p
                if g_probs is not None:
                    term = float(g[c]) * float(h[c]) * float(vectors[e, c])
                    if heads:
                        g_probs[j, e] += term
                    else:
                        g_probs[e] += term
            g_h[c] = float(g[c]) * merged
    return g_h


def _low_rank_token_grad(
    params: Params,
    grads: Grads,
    probs: np.ndarray | None,
    g_probs: np.ndarray | None,
    x: np.ndarray,
    g: np.ndarray,
    scale: float,
) -> np.ndarray:
    """Accumulate one MoLoRA token's ``dA``, ``dB`` and ``dp`` (in place); return its ``dx``."""
    a_all, b_all = params["lora_A"], params["lora_B"]
    g_x = np.zeros(x.shape)
    for e in range(a_all.shape[0]):
        p = 1.0 if probs is None else float(probs[e])
        for r in range(a_all.shape[2]):
            u = float(np.dot(x, a_all[e, :, r]))
            bg = float(np.dot(b_all[e, r], g))
            grads["lora_B"][e, r] += scale * p * u * g
            grads["lora_A"][e, :, r] += scale * p * bg * x
            g_x += scale * p * bg * a_all[e, :, r]
            if g_probs is not None:
                g_probs[e] += scale * u * bg
    return g_x


def _step(value: float) -> float:
    """The central-difference step for an input of ``value`` (float64: truncation error
    ~step^2, rounding ~1e-16 / step)."""
    return 1e-5 * (1.0 + abs(value))


def _numeric_token_grad(
    mixer: Callable[..., Any],
    params: Params,
    grads: Grads,
    probs: np.ndarray | None,
    g_probs: np.ndarray | None,
    x: np.ndarray,
    h: np.ndarray,
    g: np.ndarray,
    heads: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One token's mixing gradients by float64 central differences of ``g . mixer(...)``:
    accumulate its parameters' and ``dp`` (in place); return ``(dx, dh)``."""

    def phi(p: Params, pr: np.ndarray | None, xx: np.ndarray, hh: np.ndarray) -> float:
        return float(np.dot(g, np.asarray(mixer(p, pr, xx, hh, heads), np.float64)))

    def diff(arr: np.ndarray, call: Callable[[], float]) -> np.ndarray:
        out = np.zeros(arr.shape)
        flat, grad = arr.reshape(-1), out.reshape(-1)
        for i in range(flat.size):
            keep = flat[i]
            step = _step(keep)
            flat[i] = keep + step
            up = call()
            flat[i] = keep - step
            down = call()
            flat[i] = keep
            grad[i] = (up - down) / (2 * step)
        return out

    x, h = np.array(x, np.float64), np.array(h, np.float64)
    local = {n: np.array(v, np.float64) for n, v in params.items()}
    pr = None if probs is None else np.array(probs, np.float64)
    g_x = diff(x, lambda: phi(local, pr, x, h))
    g_h = diff(h, lambda: phi(local, pr, x, h))
    for name, value in local.items():
        if name != "router":
            grads[name] += diff(value, lambda: phi(local, pr, x, h))
    if pr is not None and g_probs is not None:
        g_probs += diff(pr, lambda: phi(local, pr, x, h))
    return g_x, g_h


def loop_gradients(case: Any, g_out: np.ndarray, numeric: bool = False) -> dict[str, np.ndarray]:
    """``{"x": dL/dx, "h": dL/dh, <param>: dL/d<param>}`` for ``L = sum(g_out * out)``.

    The built-in kinds' mixing gradients are derived by hand; a custom kind's (or, with
    ``numeric``, every kind's) come from float64 central differences of its per-token loop
    (see the module docstring). Routing gradients are always the hand-derived ones.
    ``g_out [batch, seq, d_out]``.
    """
    spec = case.spec
    kind = spec.expert.kind
    numeric = numeric or kind not in BUILT_IN
    mixer = token_mixer(spec.expert) if numeric else None
    params = {n: _as64(p) for n, p in case.params.items()}
    x, h, g_out = _as64(case.x), _as64(case.h), np.asarray(g_out, np.float64)
    grads = {"x": np.zeros(x.shape), "h": np.zeros(h.shape)}
    grads.update({n: np.zeros(p.shape) for n, p in params.items()})
    routed = spec.num_experts > 1
    route_in = h if spec.reads == "output" else x
    probs = logits = g_probs = None
    if routed:
        probs, logits = loop_route(spec, params["router"], route_in, case.mask)
        g_probs = np.zeros(probs.shape)
    batch, seq = h.shape[:2]
    for b in range(batch):
        for s in range(seq):
            row = 0 if probs is None else min(s, probs.shape[1] - 1)
            p = None if probs is None else probs[b, row]
            gp = None if g_probs is None else g_probs[b, row]
            if mixer is not None:
                g_x, g_h = _numeric_token_grad(
                    mixer, params, grads, p, gp, x[b, s], h[b, s], g_out[b, s], spec.heads
                )
                grads["x"][b, s] += g_x
                grads["h"][b, s] += g_h
            elif kind == "vectors":
                grads["h"][b, s] += _vectors_token_grad(
                    params, grads, p, gp, h[b, s], g_out[b, s], spec.heads
                )
            else:
                grads["h"][b, s] += g_out[b, s]
                grads["x"][b, s] += _low_rank_token_grad(
                    params, grads, p, gp, x[b, s], g_out[b, s], _low_rank_scale(spec.expert)
                )
    if logits is not None and g_probs is not None:  # routed
        _router_backward(spec, params, route_in, case.mask, logits, g_probs, grads)
    return grads


def _router_backward(
    spec: Any,
    params: Params,
    route_in: np.ndarray,
    mask: np.ndarray | None,
    logits: np.ndarray,
    g_probs: np.ndarray,
    grads: Grads,
) -> None:
    """Add the router's share: ``dL/drouter`` and ``dL/d(route_in)`` into ``grads``."""
    weight = params["router"]
    g_route_target = grads["h" if spec.reads == "output" else "x"]
    batch, seq, width = route_in.shape
    slices = _head_slices(width, spec.heads)
    sequence = spec.routing == "sequence"
    rows = np.zeros((batch, 1, width)) if sequence else route_in
    if sequence:
        from mixlight.testing._loops import loop_pool

        rows = loop_pool(route_in, mask)
    g_rows = np.zeros(rows.shape)
    for b in range(rows.shape[0]):
        for s in range(rows.shape[1]):
            for j, cols in enumerate(slices):
                lg = logits[b, s, j] if spec.heads else logits[b, s]
                gp = g_probs[b, s, j] if spec.heads else g_probs[b, s]
                g_l = _router_row_grad(lg, gp, spec.router.top_k, spec.router.renormalize)
                r = rows[b, s, cols]
                for e, gle in enumerate(g_l):
                    grads["router"][:, e] += r * gle
                    g_rows[b, s, cols] += weight[:, e] * gle
    if not sequence:
        g_route_target += g_rows
        return
    for b in range(batch):
        weights = [1.0 if mask is None else float(mask[b, s]) for s in range(seq)]
        count = sum(weights)
        if count == 0:
            continue
        for s in range(seq):
            g_route_target[b, s] += g_rows[b, 0] * weights[s] / count
