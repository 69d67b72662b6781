"""An independent reference for one site: plain Python loops over tokens, heads and experts.

Nothing here calls the code it checks: no einops, no :mod:`mixlight.math`, no
:mod:`mixlight.primitives`, no :func:`mixlight.extend.apply_site`. Only the site's *description*
(expert count, router options, widths, heads) is read from the :class:`SiteSpec`; every
number is recomputed in float64 from the definitions in the paper (§1.2, §2.2, §3.2):

- router logits ``l[e] = sum_k r[k] W[k, e]`` (per head: ``r`` is that head's slice of the
  router input, ``W [d_head, E]`` shared by all heads), computed from the float32 values of
  the router input, whatever its dtype;
- softmax over experts; top-k keeps the k largest, **ties to the lowest expert index**, and
  either renormalises the kept probabilities to sum 1 or keeps the masked softmax (the
  reference code's rule);
- sequence routing pools the router input by a masked mean over each row's tokens (a row
  with no token pools to zeros, hence uniform logits);
- mixing: (IA)³ / MoV ``out = h * sum_e p_e v_e`` (per head: head j's columns use head j's
  probabilities), LoRA / MoLoRA ``out = h + alpha / rank * sum_e p_e (x A_e) B_e``.

Gradients are derived by hand (:func:`loop_gradients`), not by automatic differentiation,
and are themselves checked against finite differences of the loop forward in the tests.
Shapes: ``x [batch, seq, d_in]``, ``h [batch, seq, d_out]``, ``mask [batch, seq]``;
probabilities ``[batch, seq or 1, E]`` or ``[batch, seq or 1, heads, E]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np


@attrs.frozen
class LoopResult:
    """The loop reference's output ``[batch, seq, d_out]`` and, with a router, its float64
    probabilities and logits (see the module docstring for their shapes); None without."""

    out: np.ndarray
    probs: np.ndarray | None
    logits: np.ndarray | None


# --- routing ------------------------------------------------------------------------------------


def loop_softmax(logits: list[float]) -> list[float]:
    """Softmax of one row of logits, shifted by its maximum. ``[E] -> [E]``."""
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    return [v / total for v in exps]


def loop_top_k(values: list[float], k: int) -> list[int]:
    """Indices of the k largest values, picked one at a time; among equal values the lowest
    index wins (a strict ``>`` scanning upwards). ``[E] -> k indices``."""
    chosen: list[int] = []
    for _ in range(min(k, len(values))):
        best = -1
        for e, v in enumerate(values):
            if e not in chosen and (best < 0 or v > values[best]):
                best = e
        chosen.append(best)
    return chosen


def loop_router_row(
    route: np.ndarray, weight: np.ndarray, top_k: int | None, renormalize: bool
) -> tuple[list[float], list[float]]:
    """``(probs, logits)`` of one router input ``route [d_route]`` with ``weight [d_route, E]``."""
    n_experts = weight.shape[1]
    logits = []
    for e in range(n_experts):
        acc = 0.0
        for k in range(weight.shape[0]):
            acc += float(route[k]) * float(weight[k, e])
        logits.append(acc)
    soft = loop_softmax(logits)
    if top_k is None or top_k >= n_experts:
        return soft, logits
    kept = loop_top_k(soft, top_k)
    probs = [soft[e] if e in kept else 0.0 for e in range(n_experts)]
    if renormalize:
        total = sum(probs)
        probs = [p / total for p in probs]
    return probs, logits


def loop_pool(route_in: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Masked mean over each row's tokens: ``[batch, seq, d] -> [batch, 1, d]`` (zeros for a
    row without tokens; every position counts when ``mask`` is None)."""
    batch, seq, width = route_in.shape
    pooled = np.zeros((batch, 1, width))
    for b in range(batch):
        count = 0.0
        for s in range(seq):
            weight = 1.0 if mask is None else float(mask[b, s])
            count += weight
            for k in range(width):
                pooled[b, 0, k] += weight * float(route_in[b, s, k])
        if count > 0:
            pooled[b, 0] /= count
    return pooled


def _head_slices(width: int, heads: int | None) -> list[slice]:
    n_heads = heads or 1
    size = width // n_heads
    return [slice(j * size, (j + 1) * size) for j in range(n_heads)]


def loop_route(
    spec: Any, weight: np.ndarray, route_in: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(probs, logits)`` for a site: ``[batch, seq or 1, (heads,) E]`` float64."""
    if spec.routing == "sequence":
        route_in = loop_pool(route_in, mask)
    batch, seq, width = route_in.shape
    heads = spec.heads
    slices = _head_slices(width, heads)
    n_experts = weight.shape[1]
    probs = np.zeros((batch, seq, len(slices), n_experts))
    logits = np.zeros_like(probs)
    top_k, renormalize = spec.router.top_k, spec.router.renormalize
    for b in range(batch):
        for s in range(seq):
            for j, cols in enumerate(slices):
                p, lg = loop_router_row(route_in[b, s, cols], weight, top_k, renormalize)
                probs[b, s, j], logits[b, s, j] = p, lg
    if not heads:
        probs, logits = probs[:, :, 0], logits[:, :, 0]
    return probs, logits


# A relative gap between the k-th and (k+1)-th logit below this is a near-tie: float32 may
# order it differently from the float64 reference (exact ties are kept: both sides see 0).
NEAR_TIE = 1e-4


def top_k_margin(spec: Any, logits: np.ndarray) -> float:
    """The smallest non-zero gap between the k-th and (k+1)-th largest logit of any row (inf
    for soft routing). A tiny non-zero gap is a near-tie that float32 may order differently;
    a zero gap is an exact tie, which the lowest-index rule settles the same everywhere."""
    top_k = spec.router.top_k
    if top_k is None or top_k >= logits.shape[-1]:
        return math.inf
    gaps = []
    for row in logits.reshape(-1, logits.shape[-1]):
        ordered = sorted((float(v) for v in row), reverse=True)
        gap = ordered[top_k - 1] - ordered[top_k]
        if gap > 0:
            gaps.append(gap / (1.0 + abs(ordered[top_k - 1])))
    return min(gaps, default=math.inf)


# --- mixing -------------------------------------------------------------------------------------


def loop_vectors(
    params: Mapping[str, np.ndarray],
    probs: np.ndarray | None,
    x: np.ndarray,
    h: np.ndarray,
    heads: int | None,
) -> np.ndarray:
    """(IA)³ / MoV for one token: ``h [d] * merged [d]``; ``probs [E]`` or ``[heads, E]``."""
    vectors = params["vectors"]
    width = h.shape[0]
    out = np.zeros(width)
    for j, cols in enumerate(_head_slices(width, heads)):
        for c in range(cols.start, cols.stop):
            merged = 0.0
            for e in range(vectors.shape[0]):
                p = 1.0 if probs is None else float(probs[j, e] if heads else probs[e])
                merged += p * float(vectors[e, c])
            out[c] = float(h[c]) * merged
    return out


def loop_low_rank(
    params: Mapping[str, np.ndarray],
    probs: np.ndarray | None,
    x: np.ndarray,
    h: np.ndarray,
    heads: int | None,
    scale: float,
) -> np.ndarray:
    """LoRA / MoLoRA for one token: ``h [d_out] + scale * sum_e p_e (x A_e) B_e``."""
    a_all, b_all = params["lora_A"], params["lora_B"]
    out = np.array(h, np.float64)
    for e in range(a_all.shape[0]):
        p = 1.0 if probs is None else float(probs[e])
        for r in range(a_all.shape[2]):
            u = float(np.dot(x, a_all[e, :, r]))
            out += scale * p * u * b_all[e, r]
    return out


def _low_rank_scale(expert: Any) -> float:
    return float(expert.alpha) / int(expert.rank)


def token_mixer(expert: Any) -> Callable[..., np.ndarray]:
    """The per-token loop ``mix(params, probs, x, h, heads) -> out`` for an expert kind.

    Built-in kinds have theirs here; a custom kind may declare ``loop_reference`` with that
    signature (float64 numpy, one token: ``x [d_in]``, ``h [d_out]``, ``probs [E]`` or
    ``[heads, E]`` or None). Without one, its own ``mix`` is used on numpy (routing is then
    still checked independently, its mixing rule only against itself).
    """
    if expert.kind == "vectors":
        return loop_vectors
    if expert.kind == "low_rank":
        scale = _low_rank_scale(expert)
        return lambda params, probs, x, h, heads: loop_low_rank(params, probs, x, h, heads, scale)
    declared: Callable[..., np.ndarray] | None = getattr(expert, "loop_reference", None)
    if declared is not None:
        return declared
    return lambda params, probs, x, h, heads: np.asarray(
        expert.mix(params, None if probs is None else probs[None], x[None], h[None], heads)[0],
        np.float64,
    )


def _as64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32).astype(np.float64) if a.dtype != np.float64 else a


def loop_reference(case: Any) -> LoopResult:
    """The loop reference of a :class:`~mixlight.testing.SiteCase` (float64)."""
    spec = case.spec
    params = {n: _as64(p) for n, p in case.params.items()}
    x, h = _as64(case.x), _as64(case.h)
    probs = logits = None
    if spec.num_experts > 1:
        route_in = h if spec.reads == "output" else x
        probs, logits = loop_route(spec, params["router"], route_in, case.mask)
    mixer = token_mixer(spec.expert)
    batch, seq = h.shape[:2]
    out = np.zeros(h.shape)
    for b in range(batch):
        for s in range(seq):
            p = None if probs is None else probs[b, min(s, probs.shape[1] - 1)]
            out[b, s] = mixer(params, p, x[b, s], h[b, s], spec.heads)
    return LoopResult(out, probs, logits)
