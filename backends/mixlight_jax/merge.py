"""Folding the active adapter into the frozen weights (``mixlight.merge_and_unload``), and
measuring the mean routing to fold a routed adapter at (``mixlight.mean_routing``).

The math (each site's :class:`mixlight.experts.Merged` update at a fixed routing) lives in
:mod:`mixlight.merging`; this module only writes the updates into ``nnx.Linear`` kernels
(``[in, out]``) and biases.
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
from mixlight.site_spec import ACTIVATION_CONSUMERS, SiteSpec
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
        update = site_update(spec, params, routing)
        if isinstance(layer.base, nnx.Linear):
            linear.append(_linear_fold(path, update))
        else:
            activations.append(_activation_fold(model, path, layer.base, update))
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


def _linear_fold(path: str, update: Merged) -> Fold:
    """``x @ W + b`` -> ``(x @ W + b) * scale + x @ delta``, in float32, cast back to the
    kernel's dtype (sharding kept)."""

    def fold(model: nnx.Module) -> None:
        linear = _module(model, path)
        kernel = linear.kernel[...].astype(jnp.float32)  # [in, out]
        if update.scale is not None:
            kernel = kernel * update.scale[None, :]
            if linear.bias is not None:
                _write(linear.bias, linear.bias[...].astype(jnp.float32) * update.scale)
        if update.delta is not None:
            kernel = kernel + update.delta
        _write(linear.kernel, kernel)

    return fold


def _activation_fold(model: nnx.Module, path: str, base: nnx.Module, update: Merged) -> Fold:
    """A parameterless activation's ``scale [d]`` folded into the input rows of the sibling
    ``nnx.Linear`` that consumes its output (T5's ``wo``: the one that sized the site)."""
    parent, _, _ = path.rpartition(".")
    consumer = _consumer(_module(model, parent) if parent else model, update)
    if consumer is None or update.scale is None:
        raise ValueError(
            f"cannot merge the adapter at {path}: it wraps a {type(base).__name__}, which is "
            "not an nnx.Linear, and no sibling nnx.Linear consumes its output (one of "
            f"{', '.join(ACTIVATION_CONSUMERS)}, of input width {_width(update)}); keep this "
            "adapter unmerged"
        )
    target, scale = f"{parent}.{consumer}" if parent else consumer, update.scale

    def fold(model: nnx.Module) -> None:
        kernel = _module(model, target).kernel
        _write(kernel, kernel[...].astype(jnp.float32) * scale[:, None])

    return fold


def _width(update: Merged) -> int | None:
    return None if update.scale is None else int(update.scale.shape[0])


def _consumer(parent: Any, update: Merged) -> str | None:
    """The attribute name of ``parent``'s ``nnx.Linear`` (or adapted one) whose input width
    is the scale's, for a scale-only update; else None."""
    if update.scale is None or update.delta is not None:
        return None
    for name in ACTIVATION_CONSUMERS:
        module = getattr(parent, name, None)
        if isinstance(module, AdapterLayer):
            module = module.base
        if isinstance(module, nnx.Linear) and module.kernel.shape[0] == update.scale.shape[0]:
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
        for _, layer, spec in _sites(model):
            probs = layer.last_probs.get_value()
            if probs is not None:
                probs = np.asarray(jax.device_get(probs), np.float32)
                source, target = (_mask(batch.get(k)) for k in MASK_KEYS)
                means.add(spec, probs, source, target)
    return means.result()


@nnx.jit
def _forward(model: nnx.Module, batch: dict[str, Any]) -> None:
    """One forward pass, which records every site's routing in the model (sequence-routed
    sites pool with the batch's masks, each with its side's)."""
    with sequence_masks(model, **{k: batch.get(k) for k in MASK_KEYS}):
        model(**batch)


def _mask(mask: Any) -> np.ndarray | None:
    return None if mask is None else np.asarray(jax.device_get(mask))
