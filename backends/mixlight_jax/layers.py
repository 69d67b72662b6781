"""The NNX adapter layer: wraps a frozen module and applies the active named adapter's routed
mixture at that site."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import jax
import jax.numpy as jnp
import numpy as np
from flax import errors, nnx

from mixlight.extend import SiteResult, SiteSpec
from mixlight.fast_ops import FastOpVariant, resolve_fast_op, run_site
from mixlight.site_math import pooling_mask
from mixlight_jax._plugin import plugin
from mixlight_jax.params import AdapterParam, sharding_metadata


class RoutingTrace(nnx.Intermediate):
    """The last forward's routing probabilities or logits (float32, ``[..., E]`` or
    ``[..., H, E]``), None before the first call. An NNX intermediate:
    ``nnx.state(model, nnx.Intermediate)`` selects the traces and
    ``nnx.pop(model, nnx.Intermediate)`` takes them out (the next call records anew). Model
    state, so it survives ``nnx.jit`` and comes out of ``nnx.scan`` stacked."""


class SequenceMasks(nnx.Variable):
    """``[batch, seq]`` padding masks for sequence routing by side, ``{"source": mask,
    "target": mask}`` (a side left out pools over every position; see
    :func:`mixlight_jax.sequence_masks`)."""


def mix(
    spec: SiteSpec,
    params: Mapping[str, jax.Array],
    x: jax.Array,
    h: jax.Array,
    mask: jax.Array | None = None,
) -> SiteResult:
    """One site's output on jax arrays, as an adapter added now runs it: its fast op where
    the core assigns one that this backend implements (:mod:`mixlight.fast_ops`), else the
    core's :func:`mixlight.extend.apply_site`. Same signature and result as ``apply_site``."""
    return run_site(resolve_fast_op(spec, plugin.name), spec, params, x, h, mask)


class AdapterLayer(nnx.Module):
    """A frozen ``base`` module (an ``nnx.Linear``, ``nnx.LinearGeneral``, ``nnx.Einsum`` or
    an activation, possibly stacked by ``nnx.vmap``) plus, per named adapter that targets it,
    one site's adapter.

    ``__call__(x)`` returns ``base(x)`` adapted by the active adapter, or ``base(x)`` itself
    when the active adapter does not target this module: ``x [..., *in_shape] -> [...,
    *out_shape]``, seen by the site as ``[..., d_in] -> [..., d_out]`` (the trailing axes
    flattened in order, the canonical layout; ``shapes = (in_shape, out_shape)``). A site
    with ``tensor="input"`` adapts ``x`` instead and returns ``base(adapted x)``.
    Built empty around ``base``; :meth:`add` gives it adapters, :meth:`activate` picks the
    one that runs.

    A stacked ``base`` (every parameter with a leading layer axis, run by ``nnx.scan``) has
    ``layer_paths``, the module path of each of its layers (``model.layers.3.mlp.up_proj``);
    its adapter's parameters carry the same leading axis (logical axis name ``layers``), so
    each scan step runs its own layer's adapter, and its routing traces come out stacked
    ``[layers, ...]``. ``spec`` is then the first layer's site (every layer's site is the
    same but for its path; :meth:`site_specs` lists them).

    Every adapter's parameters live in ``self.adapters[name]`` (an ``nnx.Dict`` of
    :class:`AdapterParam`, float32) under their short canonical names (``router``,
    ``vectors``, ``lora_A``, ``lora_B``), whether it runs or not, so switching the active
    adapter changes no variable and an optimizer built for one adapter
    (``wrt=mixlight_jax.trainable(model, name)``) stays valid across switches. The active
    adapter's are also ``self.adapter``, its site ``self.spec`` (None when it does not target
    this module). ``self.specs`` holds ``(name, SiteSpec)`` for every adapter here, in the
    order they were added (a tuple: static NNX metadata), ``self.active`` the active
    adapter's name, and ``self.variants`` ``(name, FastOpVariant | None)``: what each runs,
    its fast op or the core math (None), resolved once, when it was added
    (:func:`mixlight.fast_ops.resolve_fast_op`).
    Attributes the base module has (``kernel``, ``in_features``, ...) stay readable through the
    layer. The last forward's routing is kept in ``last_probs`` / ``last_logits``
    (:class:`RoutingTrace`, read with :meth:`routing`) for :func:`mixlight.aux_losses` and
    :func:`mixlight.routing_stats`, under ``nnx.jit`` and ``nnx.scan`` as eagerly; inside
    ``nnx.capture(f, nnx.Intermediate)`` each call's routing is also sown as
    ``routing_probs`` / ``routing_logits``. A raw JAX loop (``jax.lax.fori_loop`` /
    ``while_loop`` / ``scan`` closing over the model) cannot change NNX state, so a call there
    raises a ``RuntimeError`` saying what works instead: NNX's loops with the model in the carry,
    or :func:`mixlight_jax.no_routing_trace`, which records nothing (``recording`` False, static
    NNX metadata) and leaves no stale trace.
    """

    def __init__(
        self,
        base: nnx.Module,
        shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
        layer_paths: tuple[str, ...] = (),
    ):
        self.base = base
        self.shapes = shapes  # None: [..., d_in] -> [..., d_out] as the site says
        self.layer_paths = tuple(layer_paths)
        self.enabled = True
        self.recording = True
        self.specs: tuple[tuple[str, SiteSpec], ...] = ()
        self.variants: tuple[tuple[str, FastOpVariant | None], ...] = ()
        self.active: str | None = None
        self.adapters: nnx.Dict = nnx.Dict({})
        self.last_probs = RoutingTrace(None)
        self.last_logits = RoutingTrace(None)
        self.masks = SequenceMasks({})

    @property
    def spec(self) -> SiteSpec | None:
        """The active adapter's site here; None when it does not target this module."""
        return dict(self.specs).get(self.active) if self.active is not None else None

    @property
    def variant(self) -> FastOpVariant | None:
        """What the active adapter runs here: its fast op, or None for the core math (and
        when it does not target this module)."""
        return dict(self.variants).get(self.active) if self.active is not None else None

    def site_specs(self, name: str | None = None) -> tuple[SiteSpec, ...]:
        """Adapter ``name``'s site here (default: the active adapter's), one per layer of a
        stacked module; empty when that adapter does not target this module."""
        name = self.active if name is None else name
        spec = None if name is None else dict(self.specs).get(name)
        if spec is None:
            return ()
        if not self.layer_paths:
            return (spec,)
        return tuple(attrs.evolve(spec, path=path) for path in self.layer_paths)

    def names(self) -> list[str]:
        """The adapters that target this module, in the order they were added."""
        return [name for name, _ in self.specs]

    @property
    def adapter(self) -> nnx.Dict:
        """The active adapter's variables by short name (empty when it does not target this
        module)."""
        return self.adapters[self.active] if self.active is not None else nnx.Dict({})

    def variables(self, name: str) -> nnx.Dict:
        """Adapter ``name``'s variables by short name."""
        return self.adapters[name]

    def add(self, name: str, spec: SiteSpec, params: Mapping[str, np.ndarray]) -> None:
        """Give this module the adapter ``name`` with initial values ``params`` (each with a
        leading layer axis when the module is stacked); :meth:`activate` runs it."""
        if name in self.names():
            raise ValueError(f"{spec.path} already carries the mixlight adapter {name!r}")
        stacked = ("layers",) if self.layer_paths else ()
        self.specs = (*self.specs, (name, spec))
        self.variants = (*self.variants, (name, resolve_fast_op(spec, plugin.name)))
        self.adapters[name] = nnx.Dict(
            {
                n: AdapterParam(
                    jnp.asarray(a, jnp.float32), **sharding_metadata(stacked + _axes(spec, n))
                )
                for n, a in params.items()
            }
        )

    def activate(self, name: str) -> None:
        """Make ``name`` the adapter that runs here (no variable changes); a name that does
        not target this module leaves it running as its base module."""
        self.active = name if name in self.names() else None

    def remove(self, name: str) -> None:
        """Forget adapter ``name`` here (the active one: the module then runs as its base)."""
        del self.adapters[name]
        if name == self.active:
            self.active = None
        self.specs = tuple((n, s) for n, s in self.specs if n != name)
        self.variants = tuple((n, v) for n, v in self.variants if n != name)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the layer lacks: fall back to the wrapped module.
        if name.startswith("_") or name == "base" or "base" not in vars(self):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self.base, name)

    def __call__(self, x: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        spec = self.spec
        if not self.enabled or spec is None:  # no routing ran: no statistics from this pass
            self._record(None, None)
            return self.base(x, *args, **kwargs)
        params = {  # nnx.capture gives every module, this nnx.Dict too, its __captures__
            name: p[...] for name, p in self.adapter.items() if isinstance(p, nnx.Variable)
        }
        self._check_call(spec, params, args, kwargs)
        xs = self._flat(x, 0, spec.d_in)
        if spec.site.tensor == "input":  # adapt the input; the module runs on the result
            result = self._mix(spec, params, xs, xs)
            return self.base(result.out.reshape(x.shape), *args, **kwargs)
        h = self.base(x, *args, **kwargs)
        return self._mix(spec, params, xs, self._flat(h, 1, spec.d_out)).out.reshape(h.shape)

    def _mix(
        self, spec: SiteSpec, params: Mapping[str, jax.Array], x: jax.Array, h: jax.Array
    ) -> SiteResult:
        """The site on flat ``x [..., d_in]`` and ``h [..., d_out]`` (the adapted tensor),
        its routing recorded."""
        mask = pooling_mask(spec, self.masks.get_value(), h if spec.reads == "output" else x)
        result = run_site(self.variant, spec, params, x, h, mask)
        if result.probs is not None and result.probs.size == 0:  # 0 tokens: nothing routed
            self._record(None, None)
        else:
            self._record(result.probs, result.logits)
        return result

    def _flat(self, a: jax.Array, which: int, width: int) -> jax.Array:
        """The module's input (``which`` 0) or output (1) with its trailing axes flattened to
        the site's ``width``; a ``ValueError`` when they are not the module's."""
        trailing = self.shapes[which] if self.shapes is not None else (width,)
        n = len(trailing)
        if a.ndim < n or tuple(a.shape[a.ndim - n :]) != tuple(trailing):
            kind = ("input", "output")[which]
            raise ValueError(
                f"{type(self.base).__name__} adapted by mixlight: its {kind} has shape "
                f"{list(a.shape)}, which does not end with the {list(trailing)} the adapter was "
                "built for"
            )
        return a if n == 1 else a.reshape(*a.shape[: a.ndim - n], width)

    def _check_call(
        self, spec: SiteSpec, params: Mapping[str, jax.Array], args: Any, kwargs: Any
    ) -> None:
        """Refuse calls the adapter cannot follow: a stacked module run whole (outside
        ``nnx.scan``/``nnx.vmap``), an ``nnx.Einsum`` called with another equation."""
        if self.layer_paths:
            shapes = spec.param_specs()
            if any(p.ndim != len(shapes[n].shape) for n, p in params.items()):
                raise ValueError(
                    f"the {type(self.base).__name__} of {self.layer_paths[0]} ... "
                    f"{self.layer_paths[-1]} holds {len(self.layer_paths)} layers stacked by "
                    "nnx.vmap, and was called whole; run it one "
                    "layer at a time under nnx.scan (or nnx.vmap), as the adapter is stacked "
                    "the same way"
                )
        if isinstance(self.base, nnx.Einsum):
            given = kwargs.get("einsum_str", args[0] if args else None)
            if given is not None and given.replace(" ", "") != self.base.einsum_str:
                raise ValueError(
                    f"this nnx.Einsum is adapted for its equation {self.base.einsum_str!r}; "
                    f"it was called with {given!r}: call it with its own equation"
                )

    def routing(self) -> tuple[jax.Array | None, jax.Array | None]:
        """The last forward's ``(probs, logits)`` (None where none was recorded, or where
        ``nnx.pop(model, nnx.Intermediate)`` took them)."""
        return self._trace("last_probs"), self._trace("last_logits")

    def _trace(self, name: str) -> jax.Array | None:
        trace = vars(self).get(name)
        return trace.get_value() if isinstance(trace, RoutingTrace) else None

    def _record(self, probs: jax.Array | None, logits: jax.Array | None) -> None:
        """Keep this call's routing (and sow it into an enclosing ``nnx.capture``)."""
        if not self.recording:
            return
        try:
            if probs is not None and hasattr(self, "__captures__"):  # inside nnx.capture
                self.sow(nnx.Intermediate, "routing_probs", probs)
                if logits is not None:
                    self.sow(nnx.Intermediate, "routing_logits", logits)
            for name, value in (("last_probs", probs), ("last_logits", logits)):
                trace = vars(self).get(name)
                if not isinstance(trace, RoutingTrace):  # popped by nnx.pop: record anew
                    setattr(self, name, RoutingTrace(value))
                elif value is not None or trace.get_value() is not None:
                    trace.set_value(value)
        except errors.TraceContextError as error:
            where = self.spec.path if self.spec is not None else type(self.base).__name__
            raise RuntimeError(
                f"mixlight cannot record the routing of {where} here: the model was called "
                "under a raw JAX transform that NNX state cannot change in (jax.grad, jax.vjp "
                "or jax.value_and_grad of a merged model; a jax.lax.fori_loop, while_loop or "
                "scan closing over it), so mixlight.routing_stats and mixlight.aux_losses would "
                "report an earlier call. Use NNX's transforms (nnx.grad, nnx.value_and_grad, "
                "nnx.jit; nnx.fori_loop, nnx.while_loop or nnx.scan with the model in the "
                "carry, after one call before the loop so its traces hold the loop's shapes), "
                "or run it inside `with mixlight_jax.no_routing_trace(model):`, which records "
                "no routing (as mixlight_jax.t5.greedy_generate does)"
            ) from error


def _axes(spec: SiteSpec, short: str) -> tuple[str, ...]:
    """The logical axis names of parameter ``short`` of ``spec``."""
    return spec.param_specs()[short].axes
