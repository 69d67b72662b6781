"""Hooks for :func:`mixlight.testing.check_on_devices`: what serves a site in this backend."""

from __future__ import annotations

from mixlight.fast_ops import fast_op
from mixlight.site_spec import SiteSpec
from mixlight_jax._sites import FAST_OPS


def op_label(spec: SiteSpec) -> str:
    """What the adapter layer runs for ``spec`` (as :func:`mixlight_jax.layers.mix` picks
    it): ``"fast:<op>"`` for an op of this backend's table, ``"core"`` for the core math."""
    name = fast_op(spec)
    return f"fast:{name}" if name is not None and name in FAST_OPS else "core"
