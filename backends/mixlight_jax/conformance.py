"""Hooks for :func:`mixlight.testing.check_on_devices`: what serves a site in this backend."""

from __future__ import annotations

from mixlight.fast_ops import fast_op
from mixlight.site_spec import SiteSpec
from mixlight_jax._sites import FAST_OPS, SiteOp


def serving_op(spec: SiteSpec) -> SiteOp | None:
    """The fast op :func:`mixlight_jax.layers.mix` runs for ``spec``; None for the core math."""
    name = fast_op(spec)
    return None if name is None else FAST_OPS.get(name)


def op_label(spec: SiteSpec) -> str:
    """What the adapter layer runs for ``spec``: ``"fast:<op>"`` for an op of this backend's
    table, ``"core"`` for the core math."""
    return "core" if serving_op(spec) is None else f"fast:{fast_op(spec)}"
