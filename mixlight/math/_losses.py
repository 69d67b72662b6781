"""Router auxiliary losses and routing statistics."""

from __future__ import annotations

from typing import Any

import numpy as np
from einops import einsum, rearrange, reduce

from mixlight._backend_registry import primitives_for

Array = Any


def load_balance_loss(logits: Array, top_k: int = 1) -> Array:
    """Switch-Transformer load balancing: ``E * sum_e f_e * P_e``.

    ``f_e`` is the fraction of top-k assignments that go to expert e (top-1 for soft merging),
    ``P_e`` the mean softmax probability of expert e, both over every token (and head).
    Equals 1 when routing is uniform. logits: ``[..., E]`` -> scalar, float32.
    """
    p = primitives_for(logits)
    flat = rearrange(p.to_float32(logits), "... e -> (...) e")
    probs = p.softmax(flat)
    fraction = reduce(p.top_k_mask(probs, top_k), "n e -> e", "mean") / top_k
    mean_prob = reduce(probs, "n e -> e", "mean")
    return einsum(fraction, mean_prob, "e, e ->") * flat.shape[-1]


def router_z_loss(logits: Array) -> Array:
    """ST-MoE router z-loss: mean over tokens of ``logsumexp(logits) ** 2``. -> scalar."""
    p = primitives_for(logits)
    lse = p.logsumexp(p.to_float32(logits))
    return reduce(lse * lse, "... -> ", "mean")


def routing_summary(probs: np.ndarray) -> dict[str, Any]:
    """Numpy statistics of routing probabilities ``[..., E]``.

    Returns mean probability per expert ``[E]``, the share of tokens whose top expert is e
    ``[E]``, and the mean per-token entropy in nats.
    """
    flat = np.asarray(probs, np.float64).reshape(-1, probs.shape[-1])
    safe = np.where(flat > 0, flat, 1.0)
    return {
        "mean_prob": flat.mean(axis=0),
        "top1_share": np.bincount(flat.argmax(-1), minlength=flat.shape[-1]) / len(flat),
        "entropy": float(-(flat * np.log(safe)).sum(-1).mean()),
    }
