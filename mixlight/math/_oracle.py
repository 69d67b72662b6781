"""Deliberately naive per-expert loops, kept only as test oracles for the batched math."""

from __future__ import annotations

from typing import Any

import numpy as np


def naive_mov(
    h: np.ndarray, probs: np.ndarray | None, vectors: np.ndarray, heads: int | None = None
) -> np.ndarray:
    """``h * sum_e p_e v_e`` with a Python loop over experts (and heads). float64 numpy."""
    h = np.asarray(h, np.float64)
    vectors = np.asarray(vectors, np.float64)
    if probs is None:
        return h * vectors[0]
    probs = np.asarray(probs, np.float64)
    merged = np.zeros(np.broadcast_shapes(h.shape, probs.shape[: h.ndim - 1] + (h.shape[-1],)))
    d_head = h.shape[-1] // (heads or 1)
    for e in range(vectors.shape[0]):
        if heads:
            for k in range(heads):
                cols = slice(k * d_head, (k + 1) * d_head)
                merged[..., cols] += probs[..., k, e : e + 1] * vectors[e, cols]
        else:
            merged += probs[..., e : e + 1] * vectors[e]
    return h * merged


def naive_molora(
    x: np.ndarray,
    probs: np.ndarray | None,
    lora_A: np.ndarray,
    lora_B: np.ndarray,
    scale: float,
) -> np.ndarray:
    """``scale * sum_e p_e (x @ A_e) @ B_e``, one full expert output per loop step. float64."""
    x = np.asarray(x, np.float64)
    out: Any = 0.0
    for e in range(lora_A.shape[0]):
        expert_out = (x @ np.asarray(lora_A[e], np.float64)) @ np.asarray(lora_B[e], np.float64)
        weight = 1.0 if probs is None else np.asarray(probs, np.float64)[..., e : e + 1]
        out = out + weight * expert_out
    return scale * out
