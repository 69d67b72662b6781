"""The NNX adapter layer: wraps a frozen module and applies one site's routed mixture."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import errors, nnx

from mixlight import LowRank, SiteResult, SiteSpec, Vectors, apply_site
from mixlight.site_spec import route, select_mask
from mixlight_jax.fused import fused_molora, fused_mov, fused_routed_molora
from mixlight_jax.params import adapter_param

# SiteResult is a pytree, so that ``mix`` and ``mixlight.apply_site`` can be jitted as they are.
jax.tree_util.register_pytree_node(
    SiteResult,
    lambda r: ((r.out, r.probs, r.logits), None),
    lambda _, children: SiteResult(*children),
)


class RoutingTrace(nnx.Variable):
    """The last forward's routing probabilities or logits (float32, ``[..., E]`` or
    ``[..., H, E]``), None before the first call. Model state, so it survives ``nnx.jit``."""


class SequenceMasks(nnx.Variable):
    """``[batch, seq]`` padding masks for sequence routing (a tuple; see
    :func:`mixlight_jax.sequence_masks`)."""


def mix(
    spec: SiteSpec,
    params: Mapping[str, jax.Array],
    x: jax.Array,
    h: jax.Array,
    mask: jax.Array | None = None,
) -> SiteResult:
    """One site's output on jax arrays: the fused ops where they apply (token-routed MoV on
    the output, low-rank experts with token routing or none), else the core's
    :func:`mixlight.apply_site`.
    Same signature and result as ``apply_site``."""
    token = spec.routing == "token"
    if isinstance(spec.expert, Vectors) and spec.reads == "output" and token and spec.has_router:
        r = spec.router
        return SiteResult(
            *fused_mov(h, params["router"], params["vectors"], spec.heads, r.top_k, r.renormalize)
        )
    if isinstance(spec.expert, LowRank) and token:
        if spec.has_router and spec.reads == "input" and not spec.heads:
            r, lora = spec.router, (params["lora_A"], params["lora_B"], spec.expert.scale)
            routed = fused_routed_molora(x, params["router"], *lora, r.top_k, r.renormalize)
            return SiteResult(h + routed[0].astype(h.dtype), routed[1], routed[2])
        probs: jax.Array | None = None
        logits: jax.Array | None = None
        if spec.has_router:
            probs, logits = route(spec, params["router"], h if spec.reads == "output" else x)
        delta = fused_molora(x, probs, params["lora_A"], params["lora_B"], spec.expert.scale)
        return SiteResult(h + delta.astype(h.dtype), probs, logits)
    return apply_site(spec, params, x, h, mask)


class AdapterLayer(nnx.Module):
    """A frozen ``base`` module (an ``nnx.Linear`` or an activation) plus one site's adapter.

    ``__call__(x)`` returns the adapted ``base(x)``: ``x [..., d_in] -> [..., d_out]``.
    Parameters live in ``self.adapter`` (an ``nnx.Dict`` of :class:`AdapterParam`, float32)
    under their short canonical names (``router``, ``vectors``, ``lora_A``, ``lora_B``).
    Attributes the base module has (``kernel``, ``in_features``, ...) stay readable through the
    layer. The last forward's routing is kept in ``last_probs`` / ``last_logits``
    (:class:`RoutingTrace`) for :func:`mixlight.aux_losses` and :func:`mixlight.routing_stats`;
    inside a raw JAX loop (``lax.while_loop`` over the model, as in greedy decoding) it is not
    recorded, since NNX state cannot change there.
    """

    def __init__(self, base: nnx.Module, spec: SiteSpec, params: Mapping[str, np.ndarray]):
        axes = {name: p.axes for name, p in spec.param_specs().items()}
        self.base = base
        self.spec = spec
        self.enabled = True
        self.adapter = nnx.Dict({n: adapter_param(a, axes[n]) for n, a in params.items()})
        self.last_probs = RoutingTrace(None)
        self.last_logits = RoutingTrace(None)
        if spec.routing == "sequence":
            self.masks = SequenceMasks(())

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the layer lacks: fall back to the wrapped module.
        if name.startswith("_") or name == "base" or "base" not in vars(self):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self.base, name)

    def __call__(self, x: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        h = self.base(x, *args, **kwargs)
        if not self.enabled:  # no routing ran: no statistics from this pass
            self._record(None, None)
            return h
        params = {name: p[...] for name, p in self.adapter.items()}
        result = mix(self.spec, params, x, h, self._mask(h if self.spec.reads == "output" else x))
        if result.probs is not None and result.probs.size == 0:  # 0 tokens: nothing routed
            self._record(None, None)
        else:
            self._record(result.probs, result.logits)
        return result.out

    def _record(self, probs: jax.Array | None, logits: jax.Array | None) -> None:
        try:
            self.last_probs.set_value(probs)
            self.last_logits.set_value(logits)
        except errors.TraceContextError:
            pass

    def _mask(self, route_in: jax.Array) -> jax.Array | None:
        """The ``[batch, seq]`` mask matching ``route_in [batch, seq, d]`` under sequence
        routing, else None (pool over every position)."""
        masks = self.masks.get_value() if self.spec.routing == "sequence" else ()
        return select_mask(masks, route_in)
