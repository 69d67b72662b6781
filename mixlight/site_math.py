"""The core math of one site, for any array type: routing, the pooling mask, the expert
mix and the router's auxiliary losses. Backends run it where no fast op serves a site, and
the fast ops are checked against it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from mixlight.math import (
    load_balance_loss,
    pool_sequence,
    router_logits,
    router_probs,
    router_z_loss,
)
from mixlight.site_spec import MASK_NAMES, SiteSpec

Array = Any


class SiteResult(NamedTuple):
    """Output of one site: adapted output ``[..., d_out]``; float32 probabilities and logits
    ``[..., E]`` (``[..., H, E]`` per head; seq axis 1 under sequence routing), None without
    a router. A named tuple: a JAX pytree as it is, and a type ``torch.compile`` traces (it
    fails on a frozen attrs class)."""

    out: Array
    probs: Array | None
    logits: Array | None


def route(
    spec: SiteSpec, router_weight: Array, route_in: Array, mask: Array | None = None
) -> tuple[Array, Array]:
    """Routing for one site: ``(probs, logits)``; see :class:`SiteResult` for shapes."""
    if spec.routing == "sequence":
        route_in = pool_sequence(route_in, mask)
    logits = router_logits(route_in, router_weight, spec.heads)
    return router_probs(logits, spec.router.top_k, spec.router.renormalize), logits


def pooling_mask(spec: SiteSpec, masks: Mapping[str, Array], route_in: Array) -> Array | None:
    """The ``[batch, seq]`` padding mask (1 = token) with which ``spec`` pools its router
    input ``route_in [batch, seq, d]``: under sequence routing, ``masks[spec.side]`` (a
    backend captures a model call's masks by side, see :data:`MASK_NAMES`); None under token
    routing or when that side has no mask (then every position is pooled).

    Raises ``ValueError`` naming the site, the mask and both shapes when the mask does not
    cover ``route_in``'s ``[batch, seq]``.
    """
    mask = masks.get(spec.side) if spec.routing == "sequence" else None
    if mask is None:
        return None
    want, got = tuple(route_in.shape[:2]), tuple(mask.shape)
    if got != want:
        name = MASK_NAMES[spec.side]
        raise ValueError(
            f"{spec.path}: {name} has shape {list(got)}, but this sequence-routed site pools "
            f"its {spec.side}-side router input of [batch, seq] = {list(want)} with it; give "
            f"{name} the shape {list(want)} (one entry per token of the sequence it reads), "
            "or none to pool over every position"
        )
    return mask


def apply_site(
    spec: SiteSpec,
    params: Mapping[str, Array],
    x: Array,
    h: Array,
    mask: Array | None = None,
) -> SiteResult:
    """The reference forward of one site, for any array type.

    Args:
      params: by short name, shapes from :meth:`SiteSpec.param_specs`.
      x: the module's input ``[..., d_in]``.  h: its frozen output ``[..., d_out]``.
      mask: ``[batch, seq]`` padding mask, used by sequence routing only.
    """
    probs = logits = None
    if spec.has_router:
        probs, logits = route(spec, params["router"], h if spec.reads == "output" else x, mask)
    return SiteResult(spec.expert.mix(params, probs, x, h, spec.heads), probs, logits)


def aux_loss_terms(spec: SiteSpec, logits: Array) -> dict[str, Array]:
    """Weighted auxiliary losses of one site (only those with a non-zero weight)."""
    terms = {}
    if spec.router.load_balance_weight:
        k = spec.router.top_k or 1
        terms["load_balance"] = load_balance_loss(logits, k) * spec.router.load_balance_weight
    if spec.router.z_loss_weight:
        terms["z_loss"] = router_z_loss(logits) * spec.router.z_loss_weight
    return terms
