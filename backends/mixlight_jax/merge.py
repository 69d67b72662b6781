"""Folding the active adapter into the frozen weights (``mixlight.merge_and_unload``), and
measuring the mean routing to fold a routed adapter at (``mixlight.mean_routing``).

The math (each site's :class:`mixlight.experts.Merged` update at a fixed routing) lives in
:mod:`mixlight.merging`; this module only writes the updates into the kernels (seen in the
canonical ``[in, out]`` order, see :mod:`mixlight_jax._modules`) and biases of the adapted
linear modules, a stacked module's per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mixlight.experts import Merged
from mixlight.merging import Routing, RoutingMeans, site_update
from mixlight.site_planning import ACTIVATION_CONSUMERS
from mixlight.site_spec import SiteSpec
from mixlight_jax._modules import Layout, layout
from mixlight_jax.layers import AdapterLayer
from mixlight_jax.model import adapter_layers, remove_adapters, sequence_masks, state_of

MASK_KEYS = ("attention_mask", "decoder_attention_mask")  # the source's, the target's

Fold = Callable[[nnx.Module], None]  # applied to the model once its adapters are removed


def merge_and_unload(model: nnx.Module, routing: Routing | None = None) -> nnx.Module:
    """Fold the active adapter into the base weights, remove every adapter, and return the
    plain model (as PEFT's ``merge_and_unload``).

    A routed site (``E > 1``) folds at the fixed probabilities ``routing[path]`` (``[E]``, or
    ``[H, E]`` per head; see :func:`mean_routing`), an approximation; one-expert sites fold
    exactly. Every site's update is computed and checked before any weight changes, so a
    refused merge leaves the model as it was. Linear sites fold first, then activation sites
    scale their consumer's input rows, so a consumer that carries its own update (LoRA on
    ``wo``) is scaled after it, as the adapted model computes ``wo(act(x) * s)``.
    """
    state_of(model)
    linear: list[Fold] = []
    activations: list[Fold] = []
    for path, layer, spec in _sites(model):
        params = {
            n: np.asarray(jax.device_get(v[...]), np.float32) for n, v in layer.adapter.items()
        }
        if layer.layer_paths:  # one update per layer of a stack
            updates = [
                site_update(s, {n: p[i] for n, p in params.items()}, routing)
                for i, s in enumerate(layer.site_specs())
            ]
        else:
            updates = [site_update(spec, params, routing)]
        found = layout(layer.base)
        if isinstance(found, Layout):
            rows = spec.site.tensor == "input"  # an input site scales the kernel's rows
            linear.append(_linear_fold(path, found, updates, rows))
        else:
            activations.append(_activation_fold(model, path, layer.base, updates))
    remove_adapters(model)
    for fold in (*linear, *activations):
        fold(model)
    return model


def _sites(model: nnx.Module) -> Iterator[tuple[str, AdapterLayer, SiteSpec]]:
    """``(path, layer, site)`` of every layer running the active adapter."""
    for path, layer in adapter_layers(model).items():
        if layer.spec is not None:
            yield path, layer, layer.spec


def _module(model: nnx.Module, dotted: str) -> Any:
    """The submodule at a dotted path (list indices as digits)."""
    module: Any = model
    for part in dotted.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def _stacked(updates: list[Merged], field: str) -> np.ndarray | None:
    """The updates' ``scale`` or ``delta``: one array, or layers stacked on a leading axis."""
    values = [getattr(u, field) for u in updates]
    if values[0] is None:
        return None
    return values[0] if len(values) == 1 else np.stack(values)


def _linear_fold(path: str, found: Layout, updates: list[Merged], rows: bool = False) -> Fold:
    """``x @ W + b`` -> ``(x @ W + b) * scale + x @ delta`` on the canonical ``[d_in,
    d_out]`` kernel (per layer of a stack), in float32, cast back to the kernel's dtype and
    layout (sharding kept). ``rows``: the site adapts the input, ``(x * scale) @ W + b``."""
    scale, delta = _stacked(updates, "scale"), _stacked(updates, "delta")
    if rows and delta is not None:
        raise ValueError(
            f"cannot merge the adapter at {path}: it adapts the module's input with more than "
            "a scale; keep this adapter unmerged"
        )

    def fold(model: nnx.Module) -> None:
        linear = _module(model, path)
        native = linear.kernel[...]
        kernel = found.canonical_kernel(native.astype(jnp.float32))  # [(layers,) in, out]
        if rows and scale is not None:
            _write(linear.kernel, found.native_kernel(kernel * scale[..., :, None], native.shape))
            return
        if scale is not None:
            kernel = kernel * scale[..., None, :]
            if linear.bias is not None:
                bias = linear.bias[...]
                flat = bias.astype(jnp.float32).reshape(*scale.shape)
                _write(linear.bias, (flat * scale).reshape(bias.shape))
        if delta is not None:
            kernel = kernel + delta
        _write(linear.kernel, found.native_kernel(kernel, native.shape))

    return fold


def _activation_fold(model: nnx.Module, path: str, base: nnx.Module, updates: list[Merged]) -> Fold:
    """A parameterless activation's ``scale [d]`` (``[layers, d]`` in a stack) folded into
    the input rows of the sibling linear module that consumes its output (T5's ``wo``: the
    one that sized the site)."""
    parent, _, _ = path.rpartition(".")
    update = updates[0]
    consumer = _consumer(_module(model, parent) if parent else model, update)
    if consumer is None or update.scale is None:
        raise ValueError(
            f"cannot merge the adapter at {path}: it wraps a {type(base).__name__}, which is "
            "not a linear module, and no sibling linear module consumes its output (one of "
            f"{', '.join(ACTIVATION_CONSUMERS)}, of input width {_width(update)}); keep this "
            "adapter unmerged"
        )
    target, scale = f"{parent}.{consumer}" if parent else consumer, _stacked(updates, "scale")
    assert scale is not None

    def fold(model: nnx.Module) -> None:
        module = _module(model, target)
        found = layout(module)
        assert isinstance(found, Layout)
        native = module.kernel[...]
        kernel = found.canonical_kernel(native.astype(jnp.float32)) * scale[..., :, None]
        _write(module.kernel, found.native_kernel(kernel, native.shape))

    return fold


def _width(update: Merged) -> int | None:
    return None if update.scale is None else int(update.scale.shape[0])


def _consumer(parent: Any, update: Merged) -> str | None:
    """The attribute name of ``parent``'s linear module (or adapted one) whose input width
    is the scale's, for a scale-only update; else None."""
    if update.scale is None or update.delta is not None:
        return None
    for name in ACTIVATION_CONSUMERS:
        module = getattr(parent, name, None)
        if isinstance(module, AdapterLayer):
            module = module.base
        found = layout(module)
        if isinstance(found, Layout) and found.d_in == update.scale.shape[0]:
            return name
    return None


def _write(variable: nnx.Variable, value: jax.Array) -> None:
    """Store ``value`` in ``variable`` with the variable's dtype and sharding."""
    old = variable[...]
    variable.set_value(jax.device_put(jnp.asarray(value).astype(old.dtype), old.sharding))


def mean_routing(model: nnx.Module, batches: Iterable[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Each routed site's mean routing probability over the real tokens of ``batches``
    (dicts of keyword arguments for ``model(**batch)``; their ``attention_mask`` and
    ``decoder_attention_mask`` mark the tokens, and also give sequence-routed sites their
    padding masks). Returns ``{site path: [E] or [H, E]}`` for
    :func:`mixlight.merge_and_unload`."""
    state_of(model)
    means = RoutingMeans()
    for batch in batches:
        _forward(model, dict(batch))
        source, target = (_mask(batch.get(k)) for k in MASK_KEYS)
        for _, layer, spec in _sites(model):
            traced = layer.routing()[0]
            if traced is None:
                continue
            probs = np.asarray(jax.device_get(traced), np.float32)
            if not layer.layer_paths:
                means.add(spec, probs, source, target)
            for i, layer_spec in enumerate(layer.site_specs()):  # a stack's: [layers, ...]
                if layer.layer_paths:
                    means.add(layer_spec, probs[i], source, target)
    return means.result()


@nnx.jit
def _forward(model: nnx.Module, batch: dict[str, Any]) -> None:
    """One forward pass, which records every site's routing in the model (sequence-routed
    sites pool with the batch's masks, each with its side's)."""
    with sequence_masks(model, **{k: batch.get(k) for k in MASK_KEYS}):
        model(**batch)


def _mask(mask: Any) -> np.ndarray | None:
    return None if mask is None else np.asarray(jax.device_get(mask))
