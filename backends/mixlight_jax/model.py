"""Injection into any ``nnx.Module`` by module-path pattern, and the model-level state."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mixlight import AdapterConfig
from mixlight._base_identity import BaseIdentity, sample_weights
from mixlight.extend import plan_sites
from mixlight.named_adapters import NamedAdapters
from mixlight.site_spec import SOURCE, TARGET, ModuleRecord, SiteSpec, record_module
from mixlight_jax.layers import AdapterLayer

_SEED_RANGE = 2**31 - 1
_STATE = "mixlight_state"  # the attribute an injected model carries

Path = tuple[Any, ...]  # attribute names (str) and list indices (int)

DEFAULT = "default"
"""The name an adapter gets when none is given (PEFT's default name)."""


MixlightState = NamedAdapters
"""What an injected model carries as ``model.mixlight_state`` (static NNX metadata)."""


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


def _plain_paths(model: nnx.Module) -> dict[str, Path]:
    """Dotted module path (HF style, ``encoder.block.0.layer.0.SelfAttention.k``) -> NNX path,
    for every submodule but the root, as the model had them before injection: an adapter
    layer stands for the module it wraps, and nothing inside a layer is listed."""
    modules = list(nnx.iter_modules(model))
    layers = {p for p, m in modules if isinstance(m, AdapterLayer)}
    return {
        ".".join(map(str, p)): p
        for p, _ in modules
        if p and not any(p[:n] in layers for n in range(1, len(p)))
    }


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


def adapter_layers(model: nnx.Module, name: str | None = None) -> dict[str, AdapterLayer]:
    """The layers that carry adapter ``name`` (default: those running the active adapter),
    by the dotted path of the module they wrap."""
    return {
        path: layer
        for path, layer in _all_layers(model).items()
        if (layer.spec is not None if name is None else name in layer.names())
    }


def _all_layers(model: nnx.Module) -> dict[str, AdapterLayer]:
    return {
        ".".join(map(str, p)): m for p, m in nnx.iter_modules(model) if isinstance(m, AdapterLayer)
    }


def _width(module: Any, which: str) -> int | None:
    """Width of an ``nnx.Linear`` (kernel ``[in, out]``), also one an adapter layer wraps;
    None for anything else."""
    if isinstance(module, AdapterLayer):
        module = module.base
    if isinstance(module, nnx.Linear):
        return int(module.kernel.shape[0 if which == "in" else 1])
    return None


def _has_params(module: nnx.Module) -> bool:
    return bool(jax.tree.leaves(nnx.state(module, nnx.Param)))


def _records(model: nnx.Module, paths: dict[str, Path]) -> dict[str, ModuleRecord]:
    """Every module of the model as it was before injection, as plain data for the core's
    site planning (an adapter layer stands for the module it wraps)."""
    records = {}
    for dotted, path in paths.items():
        parent = _get(model, path[:-1])
        module = _child(parent, path[-1])
        if isinstance(module, AdapterLayer):
            module = module.base
        records[dotted] = record_module(module, parent, _width, _has_params)
    return records


def _seed(rngs: nnx.Rngs | int | None) -> int:
    if rngs is None:
        return 0
    if isinstance(rngs, nnx.Rngs):
        return int(jax.random.randint(rngs.params(), (), 0, _SEED_RANGE))
    return int(rngs)


def plan(model: nnx.Module, config: AdapterConfig) -> list[SiteSpec]:
    """The sites :func:`inject` would give ``model`` for ``config``; the model is unchanged."""
    paths = _plain_paths(model)
    if not paths:
        raise TypeError(
            f"mixlight.inject adapts the submodules of a model in place, and this "
            f"{type(model).__name__} has none (a bare layer given as the whole model); wrap it "
            "in a module that holds it as an attribute, and target that attribute's name"
        )
    return plan_sites(config, _records(model, paths))


def inject(
    model: nnx.Module,
    config: AdapterConfig,
    *,
    rngs: nnx.Rngs | int | None = None,
    name: str = DEFAULT,
) -> nnx.Module:
    """Give the modules matched by ``config``'s sites the adapter ``name`` (wrapping them in
    :class:`AdapterLayer`s) in place, and return the model.

    The first adapter of a model becomes the active one; a further name adds an inactive
    adapter beside it (switch with :func:`set_adapter`), as PEFT's ``add_adapter`` does.
    Adapter parameters are drawn with numpy from a seed: ``rngs`` (an ``nnx.Rngs``, whose
    ``params`` stream is advanced, or an int; default 0), so injection is reproducible. The
    base model's parameters stay ``nnx.Param``; train only the active adapter with
    ``nnx.Optimizer(model, tx, wrt=mixlight_jax.AdapterParam)`` (inactive adapters are
    :class:`StoredAdapter` variables, which it leaves alone).
    """
    state = vars(model).get(_STATE) or NamedAdapters()
    state.check_new(name, "or call mixlight_jax.remove_adapters(model) first, or use a fresh model")
    specs = plan(model, config)
    paths = _plain_paths(model)
    state = state.added(name, config, specs)
    rng = np.random.default_rng(_seed(rngs))
    for spec in specs:
        path = paths[spec.path]
        layer = _get(model, path)
        if not isinstance(layer, AdapterLayer):
            layer = AdapterLayer(layer)
            _set(model, path, layer)
        layer.add(name, spec, spec.init_params(rng))
        layer.activate(state.active)
    setattr(model, _STATE, state)
    return model


def set_adapter(model: nnx.Module, name: str) -> None:
    """Make adapter ``name`` the one that runs and trains: its variables become
    :class:`AdapterParam`, every other adapter's :class:`StoredAdapter`. The trainable state
    changes, so build the ``nnx.Optimizer`` (and re-jit) after switching."""
    state = state_of(model).activated(name)
    for layer in _all_layers(model).values():
        layer.activate(name)
    setattr(model, _STATE, state)


def delete_adapter(model: nnx.Module, name: str) -> None:
    """Remove adapter ``name``; modules no adapter targets any more get their original
    module back. Deleting the active adapter activates the first remaining one; deleting the
    last is :func:`remove_adapters`."""
    state = state_of(model).removed(name)
    if not state.entries:
        remove_adapters(model)
        return
    active = state.active
    paths = _plain_paths(model)
    for dotted, layer in _all_layers(model).items():
        if name in layer.names():
            layer.remove(name)
        if layer.specs:
            layer.activate(active)
        else:
            _set(model, paths[dotted], layer.base)
    setattr(model, _STATE, state)


def remove_adapters(model: nnx.Module) -> nnx.Module:
    """Put the original modules back and forget every adapter."""
    state_of(model)
    paths = _plain_paths(model)
    for dotted, layer in _all_layers(model).items():
        _set(model, paths[dotted], layer.base)
    delattr(model, _STATE)
    return model


def adapter_parameters(
    model: nnx.Module, name: str | None = None
) -> Iterator[tuple[str, nnx.Variable]]:
    """``(canonical name, variable)`` pairs of adapter ``name`` (default: the active one),
    canonical names as in adapter files; :class:`AdapterParam` for the active adapter,
    :class:`StoredAdapter` for the others."""
    name = name if name is not None else state_of(model).active
    for dotted, layer in adapter_layers(model, name).items():
        for short, variable in layer.variables(name).items():
            yield f"{dotted}.{short}", variable


@contextlib.contextmanager
def sequence_masks(
    model: nnx.Module,
    *positional: Any,
    attention_mask: jax.Array | None = None,
    decoder_attention_mask: jax.Array | None = None,
) -> Iterator[nnx.Module]:
    """Give sequence-routed sites their ``[batch, seq]`` padding masks (1 = token) for the
    calls inside the block, by keyword: each site pools with its own side's mask,
    ``attention_mask`` for the source (the encoder's sites and the cross-attention keys and
    values, or every site of a model with one sequence) and ``decoder_attention_mask`` for
    the target (the decoder's other sites); a side with no mask pools over every position,
    and a mask whose ``[batch, seq]`` differs from a site's router input raises a
    ``ValueError`` naming the site. Use it inside a jitted function as well as outside::

        with mixlight_jax.sequence_masks(
            model, attention_mask=attention_mask, decoder_attention_mask=decoder_attention_mask
        ):
            logits = model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)
    """
    if positional:
        raise TypeError(
            f"sequence_masks(model, ...) takes its masks by keyword, got {len(positional)} "
            "positional: pass attention_mask=... (the source's, the encoder input's) and/or "
            "decoder_attention_mask=... (the target's, the decoder input's)"
        )
    given = {SOURCE: attention_mask, TARGET: decoder_attention_mask}
    masks = {side: jnp.asarray(m) for side, m in given.items() if m is not None}
    layers = [
        m
        for m in adapter_layers(model).values()
        if m.spec is not None and m.spec.routing == "sequence"
    ]
    previous = [layer.masks.get_value() for layer in layers]
    for layer in layers:
        layer.masks.set_value(masks)
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
    layers = list(_all_layers(model).values())
    previous = [layer.enabled for layer in layers]
    for layer in layers:
        layer.enabled = False
    try:
        yield model
    finally:
        for layer, enabled in zip(layers, previous, strict=True):
            layer.enabled = enabled


def base_identity(model: nnx.Module, name: str | None = None) -> BaseIdentity:
    """Samples of the ``nnx.Linear`` kernels (``[in, out]``, the canonical order) that adapter
    ``name`` (default: the active one) adapts, and the model's ``name_or_path`` when it has
    one."""
    kernels = {
        path: layer.base.kernel
        for path, layer in adapter_layers(model, name).items()
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
