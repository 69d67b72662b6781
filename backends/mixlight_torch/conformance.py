"""Hooks for :func:`mixlight.testing.check_on_devices`: what serves a site in this backend."""

from __future__ import annotations

import torch

from mixlight_torch.layers import AdapterLayer
from mixlight_torch.ops.mov import _triton_applies


def builtin_op(layer: AdapterLayer, name: str) -> bool:
    """Whether ``layer`` runs adapter ``name`` with one of this backend's own fast ops (they
    are ``torch.compile(fullgraph=True)``-clean; the core math and registered ops need not
    be)."""
    variant = layer.variants[name]
    return variant is not None and variant.builtin


def op_label(layer: AdapterLayer, name: str, h: torch.Tensor, compiled: bool) -> str:
    """What ``layer`` runs for its adapter ``name`` on activations like ``h``: ``"fast:<op>"``
    for the fast op resolved when the adapter was added (:mod:`mixlight.fast_ops`),
    ``"triton:mov"`` where that op hands a soft-merge MoV to the Triton kernel (CUDA, eager),
    ``"core"`` for the core math."""
    variant = layer.variants[name]
    if variant is None:
        return "core"
    spec = layer.specs[name]
    top_k = spec.router.top_k
    soft = top_k is None or top_k >= spec.num_experts
    mov = variant.name == "mov" and variant.builtin
    if mov and soft and not compiled and _triton_applies(h):
        return "triton:mov"
    return f"fast:{variant.name}"
