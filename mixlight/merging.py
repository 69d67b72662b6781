"""Merging adapters into the frozen weights: each site's update at a fixed routing, and the
mean routing of a dataset to fix it at.

A one-expert adapter ((IA)³, LoRA, MoV/MoLoRA with E = 1) merges exactly. A routed adapter
routes every token its own way; merged at one routing distribution (for example the mean
routing over a task's data: a static per-task export) it is an approximation, whose cost
``docs/huggingface.md`` measures on the demo's tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mixlight.experts import Merged
from mixlight.site_spec import SOURCE, SiteSpec

Routing = Mapping[str, np.ndarray]
"""Fixed routing per site path: ``[E]``, or ``[H, E]`` for per-head routers."""


def site_update(
    spec: SiteSpec, params: Mapping[str, np.ndarray], routing: Routing | None
) -> Merged:
    """Site ``spec``'s adapter as a :class:`Merged` update; a routed site takes its fixed
    probabilities from ``routing[spec.path]``."""
    probs = None
    if spec.has_router:
        probs = (routing or {}).get(spec.path)
        if probs is None:
            raise ValueError(
                f"{spec.path} routes between {spec.num_experts} experts per token, so it merges "
                "only at a fixed routing (an approximation): measure one with "
                "routing = mixlight.mean_routing(model, batches) and pass "
                "merge_and_unload(model, routing=routing)"
            )
        probs = _checked(spec, np.asarray(probs, np.float32))
    return spec.expert.merged(params, probs, spec.heads)


def _checked(spec: SiteSpec, probs: np.ndarray) -> np.ndarray:
    want = (spec.heads, spec.num_experts) if spec.heads else (spec.num_experts,)
    if probs.shape != want:
        raise ValueError(
            f"routing[{spec.path!r}] has shape {list(probs.shape)}; this site needs "
            f"{list(want)} ({'[heads, experts]' if spec.heads else '[experts]'})"
        )
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or np.abs(probs.sum(-1) - 1).max() > 1e-3:
        raise ValueError(
            f"routing[{spec.path!r}] is not a probability distribution over experts "
            "(non-negative, summing to 1 on the last axis)"
        )
    return probs


class RoutingMeans:
    """Accumulates each site's mean routing probability over the real tokens of several
    forward passes (padding, where a ``[batch, seq]`` mask fits, is left out)."""

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] = {}
        self._counts: dict[str, float] = {}

    def add(
        self,
        spec: SiteSpec,
        probs: np.ndarray,
        source_mask: Any | None = None,
        target_mask: Any | None = None,
    ) -> None:
        """Site ``spec``'s ``probs [..., E]`` (``[..., H, E]`` per head) from one pass.

        ``source_mask`` / ``target_mask``: the call's ``[batch, seq]`` padding masks (1 =
        token) of the source (encoder) and target (decoder) sequences. Each site is weighed
        by its side's mask (``spec.side``: encoder sites and cross-attention keys/values read
        the source); a mask that does not fit the leading axes (or none) counts every
        position."""
        lead = probs.shape[: probs.ndim - (2 if spec.heads else 1)]
        mask = source_mask if spec.side == SOURCE else target_mask
        fits = mask is not None and tuple(np.shape(mask)) == tuple(lead)
        weight = np.asarray(mask, np.float64) if fits else np.ones(lead, np.float64)
        flat = probs.reshape(-1, *probs.shape[len(lead) :]).astype(np.float64)
        total = np.tensordot(weight.reshape(-1), flat, axes=1)
        self._sums[spec.path] = self._sums.get(spec.path, 0) + total
        self._counts[spec.path] = self._counts.get(spec.path, 0.0) + float(weight.sum())

    def result(self) -> dict[str, np.ndarray]:
        """Mean routing per site path, float32, each row summing to 1."""
        return {
            path: (total / max(self._counts[path], 1e-9)).astype(np.float32)
            for path, total in self._sums.items()
        }
