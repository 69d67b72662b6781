"""Hooks for :func:`mixlight.testing.check_on_devices`: what serves a site in this backend."""

from __future__ import annotations

from mixlight_jax.layers import AdapterLayer


def op_label(layer: AdapterLayer) -> str:
    """What ``layer`` runs for its active adapter: ``"fast:<op>"`` for the fast op resolved
    when the adapter was added (:mod:`mixlight.fast_ops`), ``"core"`` for the core math."""
    variant = layer.variant
    return "core" if variant is None else f"fast:{variant.name}"
