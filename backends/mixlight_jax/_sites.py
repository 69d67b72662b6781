"""This backend's table of fast ops by the names :mod:`mixlight.fast_ops` assigns to sites.

Each entry runs one site: ``(spec, params, x [..., d_in], h [..., d_out]) -> (out [...,
d_out], probs, logits)``, with ``probs``/``logits`` ``[..., (H,) E]`` or None. The JAX
backend has no ``scale`` entry: XLA fuses the core math of a one-vector site by itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax

from mixlight.site_math import route

from mixlight.site_spec import SiteSpec
from mixlight_jax.fused import fused_molora, fused_mov, fused_routed_molora

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


FAST_OPS: dict[str, SiteOp] = {"mov": _mov, "routed_molora": _routed_molora, "molora": _molora}


def implement_fast_op(name: str, op: SiteOp) -> None:
    """Run sites that :func:`mixlight.fast_ops.fast_op` assigns ``name`` with ``op`` in JAX
    (for a custom expert kind's op; see :func:`mixlight.extend.register_fast_op`)."""
    FAST_OPS[name] = op


@contextlib.contextmanager
def core_math_only() -> Iterator[None]:
    """Within the block, sites that JAX traces run the core math with plain autodiff, as if
    this backend had no fast ops (for comparisons; a function jitted inside keeps that)."""
    saved = dict(FAST_OPS)
    FAST_OPS.clear()
    try:
        yield
    finally:
        FAST_OPS.update(saved)
