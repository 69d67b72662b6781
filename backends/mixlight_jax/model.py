"""Injection into any ``nnx.Module`` by module-path pattern, and the model-level state."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mixlight import AdapterConfig, ModuleShape, Site, SiteSpec, plan_sites
from mixlight._base_identity import BaseIdentity, sample_weights
from mixlight.site_spec import describe_module
from mixlight_jax.layers import AdapterLayer
from mixlight_jax.params import AdapterParam

_SEED_RANGE = 2**31 - 1
_STATE = "mixlight_state"  # the attribute an injected model carries

Path = tuple[Any, ...]  # attribute names (str) and list indices (int)


@attrs.frozen
class MixlightState:
    """Attached to an injected model as ``model.mixlight_state`` (static NNX metadata)."""

    config: AdapterConfig
    specs: tuple[SiteSpec, ...]


def is_injected(model: nnx.Module) -> bool:
    return _STATE in vars(model)


def state_of(model: nnx.Module) -> MixlightState:
    state = vars(model).get(_STATE)
    if state is None:
        raise ValueError(
            f"{type(model).__name__} has no mixlight adapter; call mixlight.inject(model, config) "
            "or mixlight.load_adapter(model, directory) first"
        )
    return state


def _paths(model: nnx.Module) -> dict[str, Path]:
    """Dotted module path (HF style, ``encoder.block.0.layer.0.SelfAttention.k``) -> NNX path,
    for every submodule but the root."""
    return {".".join(map(str, p)): p for p, _ in nnx.iter_modules(model) if p}


def _child(parent: Any, part: str | int) -> Any:
    return parent[part] if isinstance(part, int) else getattr(parent, part)


def _get(model: nnx.Module, path: Path) -> Any:
    for part in path:
        model = _child(model, part)
    return model


def _set(model: nnx.Module, path: Path, module: nnx.Module) -> None:
    parent, last = _get(model, path[:-1]), path[-1]
    if isinstance(last, int):
        parent[last] = module
    else:
        setattr(parent, last, module)


def adapter_layers(model: nnx.Module) -> dict[str, AdapterLayer]:
    """Adapter layers by the dotted path of the module they wrap."""
    return {
        ".".join(map(str, p)): m for p, m in nnx.iter_modules(model) if isinstance(m, AdapterLayer)
    }


def _width(module: Any, which: str) -> int | None:
    """Width of an ``nnx.Linear`` (kernel ``[in, out]``); None for anything else."""
    if isinstance(module, nnx.Linear):
        return int(module.kernel.shape[0 if which == "in" else 1])
    return None


def _has_params(module: nnx.Module) -> bool:
    return bool(jax.tree.leaves(nnx.state(module, nnx.Param)))


def _describe(model: nnx.Module, path: Path, site: Site) -> ModuleShape:
    dotted = ".".join(map(str, path))
    parent = _get(model, path[:-1])
    module = _child(parent, path[-1])
    if isinstance(module, AdapterLayer):
        raise ValueError(f"{dotted} already carries a mixlight adapter")
    return describe_module(dotted, site, module, parent, _width, _has_params)


def _seed(rngs: nnx.Rngs | int | None) -> int:
    if rngs is None:
        return 0
    if isinstance(rngs, nnx.Rngs):
        return int(jax.random.randint(rngs.params(), (), 0, _SEED_RANGE))
    return int(rngs)


def inject(
    model: nnx.Module, config: AdapterConfig, *, rngs: nnx.Rngs | int | None = None
) -> nnx.Module:
    """Wrap matched modules in :class:`AdapterLayer`s in place and return the model.

    Adapter parameters are drawn with numpy from a seed: ``rngs`` (an ``nnx.Rngs``, whose
    ``params`` stream is advanced, or an int; default 0), so injection is reproducible. The
    base model's parameters stay ``nnx.Param``; train only the adapters with
    ``nnx.Optimizer(model, tx, wrt=mixlight_jax.AdapterParam)``.
    """
    if is_injected(model):
        raise ValueError(
            "this model already carries a mixlight adapter; call "
            "mixlight_jax.remove_adapters(model) first or use a fresh model"
        )
    paths = _paths(model)
    if not paths:
        raise TypeError(
            f"mixlight.inject adapts the submodules of a model in place, and this "
            f"{type(model).__name__} has none (a bare layer given as the whole model); wrap it "
            "in a module that holds it as an attribute, and target that attribute's name"
        )
    specs = plan_sites(config, paths, lambda p, site: _describe(model, paths[p], site))
    rng = np.random.default_rng(_seed(rngs))
    for spec in specs:
        path = paths[spec.path]
        _set(model, path, AdapterLayer(_get(model, path), spec, spec.init_params(rng)))
    setattr(model, _STATE, MixlightState(config, tuple(specs)))
    return model


def remove_adapters(model: nnx.Module) -> nnx.Module:
    """Put the original modules back and forget the adapter."""
    state_of(model)
    paths = _paths(model)
    for dotted, layer in adapter_layers(model).items():
        _set(model, paths[dotted], layer.base)
    delattr(model, _STATE)
    return model


def adapter_parameters(model: nnx.Module) -> Iterator[tuple[str, AdapterParam]]:
    """``(canonical name, parameter)`` pairs, canonical names as in adapter files."""
    for dotted, layer in adapter_layers(model).items():
        for short, param in layer.adapter.items():
            yield f"{dotted}.{short}", param


@contextlib.contextmanager
def sequence_masks(model: nnx.Module, *masks: jax.Array) -> Iterator[nnx.Module]:
    """Give sequence-routed sites their ``[batch, seq]`` padding masks (1 = token) for the
    calls inside the block, e.g. ``attention_mask`` and ``decoder_attention_mask``; each site
    uses the mask whose shape matches its router input's ``[batch, seq]``, and pools over
    every position when none does. Use it inside a jitted function as well as outside::

        with mixlight_jax.sequence_masks(model, attention_mask, decoder_attention_mask):
            logits = model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)
    """
    layers = [m for m in adapter_layers(model).values() if m.spec.routing == "sequence"]
    previous = [layer.masks.get_value() for layer in layers]
    kept = tuple(jnp.asarray(m) for m in masks if m is not None)
    for layer in layers:
        layer.masks.set_value(kept)
    try:
        yield model
    finally:
        for layer, old in zip(layers, previous, strict=True):
            layer.masks.set_value(old)


@contextlib.contextmanager
def disable_adapters(model: nnx.Module) -> Iterator[nnx.Module]:
    """Run the frozen base model inside the block. Each layer's ``enabled`` flag is static NNX
    metadata, so ``nnx.jit`` compiles the disabled model separately (once) and never mixes
    the two up."""
    state_of(model)
    layers = list(adapter_layers(model).values())
    previous = [layer.enabled for layer in layers]
    for layer in layers:
        layer.enabled = False
    try:
        yield model
    finally:
        for layer, enabled in zip(layers, previous, strict=True):
            layer.enabled = enabled


def base_identity(model: nnx.Module) -> BaseIdentity:
    """Samples of the adapted ``nnx.Linear`` kernels (``[in, out]``, the canonical order) and
    the model's ``name_or_path`` when it has one."""
    kernels = {
        path: layer.base.kernel
        for path, layer in adapter_layers(model).items()
        if isinstance(layer.base, nnx.Linear)
    }
    samples = sample_weights(
        {path: (int(k.shape[0]), int(k.shape[1])) for path, k in kernels.items()},
        lambda p: np.asarray(
            jax.device_get(kernels[p.path][...][np.array(p.rows), np.array(p.cols)]), np.float32
        ),
    )
    dtype = str(next(iter(kernels.values()))[...].dtype) if kernels else None
    return BaseIdentity(getattr(model, "name_or_path", None), None, samples, dtype)
