"""This backend's own fast ops by the names :mod:`mixlight.fast_ops` assigns to sites,
declared on its plugin (:mod:`mixlight_jax._plugin`).

Each entry runs one site: ``(spec, params, x [..., d_in], h [..., d_out]) -> (out [...,
d_out], probs, logits)``, with ``probs``/``logits`` ``[..., (H,) E]`` or None. The JAX
backend has no ``scale`` entry: XLA fuses the core math of a one-vector site by itself.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any

import jax

from mixlight import fast_ops
from mixlight.site_math import route
from mixlight.site_spec import SiteSpec
from mixlight_jax._plugin import plugin
from mixlight_jax.ops.molora import fused_molora, fused_routed_molora
from mixlight_jax.ops.mov import fused_mov

SiteOp = Callable[
    [SiteSpec, Mapping[str, jax.Array], jax.Array, jax.Array], tuple[jax.Array, Any, Any]
]


def _mov(spec: SiteSpec, p: Mapping[str, jax.Array], x: jax.Array, h: jax.Array):
    r = spec.router
    return fused_mov(h, p["router"], p["vectors"], spec.heads, r.top_k, r.renormalize)


def _routed_molora(spec: SiteSpec, p: Mapping[str, jax.Array], x: jax.Array, h: jax.Array):
    r, scale = spec.router, spec.expert.scale  # type: ignore[attr-defined]
    delta, probs, logits = fused_routed_molora(
        x, p["router"], p["lora_A"], p["lora_B"], scale, r.top_k, r.renormalize
    )
    return h + delta.astype(h.dtype), probs, logits


def _molora(spec: SiteSpec, p: Mapping[str, jax.Array], x: jax.Array, h: jax.Array):
    probs = logits = None
    if spec.has_router:
        probs, logits = route(spec, p["router"], h if spec.reads == "output" else x)
    scale = spec.expert.scale  # type: ignore[attr-defined]
    delta = fused_molora(x, probs, p["lora_A"], p["lora_B"], scale)
    return h + delta.astype(h.dtype), probs, logits


BUILTIN_OPS: Mapping[str, SiteOp] = types.MappingProxyType(
    {"mov": _mov, "routed_molora": _routed_molora, "molora": _molora}
)
"""Read-only: ops a user adds go to the core's registry (:func:`implement_fast_op`)."""


def implement_fast_op(name: str, op: SiteOp) -> None:
    """Run sites that :func:`mixlight.extend.fast_op` assigns ``name`` with ``op`` in JAX
    (for a custom expert kind's op; see :func:`mixlight.extend.register_fast_op`). Adapters
    added afterwards run it."""
    fast_ops.implement_fast_op(plugin.name, name, op)
