"""Hooks for :func:`mixlight.testing.check_on_devices`: what serves a site in this backend."""

from __future__ import annotations

import torch

from mixlight_torch.layers import AdapterLayer
from mixlight_torch.ops import _sites
from mixlight_torch.ops._sites import FAST_OPS
from mixlight_torch.ops.mov import _triton_applies


def builtin_op(layer: AdapterLayer, name: str) -> bool:
    """Whether ``layer`` runs adapter ``name`` with one of this backend's own fast ops (they
    are ``torch.compile(fullgraph=True)``-clean; the core math and registered ops need not
    be)."""
    op = layer.__dict__["ops"][name]
    return op is not None and FAST_OPS.get(op) is getattr(_sites, f"_{op}", None)


def op_label(layer: AdapterLayer, name: str, h: torch.Tensor, compiled: bool) -> str:
    """What ``layer`` runs for its adapter ``name`` on activations like ``h``: ``"fast:<op>"``
    for the op the layer picked (:mod:`mixlight.fast_ops`) when this backend implements it,
    ``"triton:mov"`` where that op hands a soft-merge MoV to the Triton kernel (CUDA, eager),
    ``"core"`` for the core math."""
    op = layer.__dict__["ops"][name]
    if op is None or op not in FAST_OPS:
        return "core"
    spec = layer.specs[name]
    top_k = spec.router.top_k
    soft = top_k is None or top_k >= spec.num_experts
    if op == "mov" and builtin_op(layer, name) and soft and not compiled and _triton_applies(h):
        return "triton:mov"
    return f"fast:{op}"
