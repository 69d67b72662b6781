"""This backend's own fast ops by the names :mod:`mixlight.fast_ops` assigns to sites,
declared on its plugin (:mod:`mixlight_torch._plugin`).

Each entry runs one site: ``(spec, params, x [..., d_in], h [..., d_out]) -> (out [...,
d_out], probs, logits)``, with ``probs``/``logits`` ``[..., (H,) E]`` or None.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from mixlight import fast_ops
from mixlight.site_math import route
from mixlight.site_spec import SiteSpec
from mixlight_torch._plugin import plugin
from mixlight_torch.ops.molora import fused_molora, fused_routed_molora
from mixlight_torch.ops.mov import fused_mov

SiteOp = Callable[[SiteSpec, Mapping[str, Tensor], Tensor, Tensor], tuple[Tensor, Any, Any]]


def _scale(spec: SiteSpec, p: Mapping[str, Tensor], x: Tensor, h: Tensor):
    return h * p["vectors"][0].to(h.dtype), None, None


def _mov(spec: SiteSpec, p: Mapping[str, Tensor], x: Tensor, h: Tensor):
    r = spec.router
    return fused_mov(h, p["router"], p["vectors"], spec.heads, r.top_k, r.renormalize)


def _routed_molora(spec: SiteSpec, p: Mapping[str, Tensor], x: Tensor, h: Tensor):
    r, scale = spec.router, spec.expert.scale  # type: ignore[attr-defined]
    return fused_routed_molora(
        x, p["router"], p["lora_A"], p["lora_B"], scale, r.top_k, r.renormalize, base=h
    )


def _molora(spec: SiteSpec, p: Mapping[str, Tensor], x: Tensor, h: Tensor):
    probs = logits = None
    if spec.has_router:
        probs, logits = route(spec, p["router"], h if spec.reads == "output" else x)
    scale = spec.expert.scale  # type: ignore[attr-defined]
    return fused_molora(x, probs, p["lora_A"], p["lora_B"], scale, base=h), probs, logits


BUILTIN_OPS: Mapping[str, SiteOp] = types.MappingProxyType(
    {"scale": _scale, "mov": _mov, "routed_molora": _routed_molora, "molora": _molora}
)
"""Read-only: ops a user adds go to the core's registry (:func:`implement_fast_op`)."""


def implement_fast_op(name: str, op: SiteOp) -> None:
    """Run sites that :func:`mixlight.extend.fast_op` assigns ``name`` with ``op`` in torch
    (for a custom expert kind's op; see :func:`mixlight.extend.register_fast_op`). Adapters
    added afterwards run it."""
    fast_ops.implement_fast_op(plugin.name, name, op)
