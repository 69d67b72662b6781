"""Injection into any ``nnx.Module`` by module-path pattern, and the model-level state."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mixlight import AdapterConfig
from mixlight._base_identity import BaseIdentity, SamplePoint, sample_weights
from mixlight.extend import plan_sites
from mixlight.named_adapters import DEFAULT, NamedAdapters
from mixlight.presets import model_type_of, resolve_targets
from mixlight.site_planning import ModuleRecord, record_module
from mixlight.site_spec import SOURCE, TARGET, SiteSpec
from mixlight_jax._modules import (
    SUPPORTED,
    Entry,
    Layout,
    layout,
    listed,
    per_layer_paths,
    stack_roots,
)
from mixlight_jax.layers import AdapterLayer
from mixlight_jax.params import AdapterNamed, AdapterParam

_SEED_RANGE = 2**31 - 1
_STATE = "mixlight_state"  # the attribute an injected model carries

Path = tuple[Any, ...]  # attribute names (str) and list indices (int)


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


def _unwrapped(module: Any) -> Any:
    return module.base if isinstance(module, AdapterLayer) else module


def _width(module: Any, which: str) -> int | None:
    """Canonical input or output width of a linear-like module (``nnx.Linear``,
    ``nnx.LinearGeneral``, ``nnx.Einsum``; see :mod:`mixlight_jax._modules`), also one an
    adapter layer wraps; None for anything else."""
    found = layout(_unwrapped(module))
    if not isinstance(found, Layout):
        return None
    return found.d_in if which == "in" else found.d_out


def _has_params(module: nnx.Module) -> bool:
    return bool(jax.tree.leaves(nnx.state(module, nnx.Param)))


def _entries(model: nnx.Module) -> dict[str, Entry]:
    """Every module of the model as it was before injection, by the dotted path site
    planning and adapter files know it by: one path per layer inside a stack (see
    :mod:`mixlight_jax._modules`)."""
    paths = _plain_paths(model)
    modules = {(): model, **{p: _unwrapped(_get(model, p)) for p in paths.values()}}
    return listed(paths, stack_roots(modules))


def _records(model: nnx.Module, entries: dict[str, Entry]) -> dict[str, ModuleRecord]:
    """Every module of the model as it was before injection, as plain data for the core's
    site planning (an adapter layer stands for the module it wraps). A module with a kernel
    it cannot adapt carries its refusal (path, type, kernel shape, why); a module whose
    output has a ``(heads, head_dim)`` kernel axis pair records that head count."""
    records = {}
    for dotted, entry in entries.items():
        parent = _get(model, entry.path[:-1])
        module = _unwrapped(_child(parent, entry.path[-1]))
        found = layout(module)
        refusal = None
        if isinstance(found, Layout) and found.stack is not None and entry.layer is None:
            found = (
                f"it holds {found.stack} layers stacked by nnx.vmap, which are listed as "
                f"{dotted}.0 ... {dotted}.{found.stack - 1}: match those"
            )
        if isinstance(found, str):
            refusal = (
                f"cannot adapt {dotted}: {type(module).__name__} with kernel shape "
                f"{list(module.kernel.shape)}: {found}. mixlight's JAX backend adapts {SUPPORTED}"
            )
        record = record_module(module, parent, _width, _has_params, refusal)
        if isinstance(found, Layout) and found.heads is not None:
            record = attrs.evolve(record, heads=found.heads)
        records[dotted] = record
    return records


def _seed(seed: int | None, rngs: nnx.Rngs | None) -> int:
    """The numpy seed of :func:`inject`: ``seed``, else one drawn from ``rngs.params()``,
    else 0."""
    if rngs is not None and not isinstance(rngs, nnx.Rngs):
        raise TypeError(
            f"inject(..., rngs=) takes an nnx.Rngs, got {type(rngs).__name__}; give an int "
            "as seed= (as mixlight.inject(..., seed=) does)"
        )
    if seed is not None and rngs is not None:
        raise TypeError("inject takes seed= or rngs=, not both: one seed fixes the adapters")
    if rngs is not None:
        return int(jax.random.randint(rngs.params(), (), 0, _SEED_RANGE))
    return 0 if seed is None else int(seed)


def plan(model: nnx.Module, config: AdapterConfig) -> list[SiteSpec]:
    """The sites :func:`inject` would give ``model`` for ``config``; the model is unchanged.
    A module stacked by ``nnx.vmap`` has one site per layer (``model.layers.3.mlp.up_proj``),
    all of which must be matched alike."""
    if not _plain_paths(model):
        raise TypeError(
            f"mixlight.inject adapts the submodules of a model in place, and this "
            f"{type(model).__name__} has none (a bare layer given as the whole model); wrap it "
            "in a module that holds it as an attribute, and target that attribute's name"
        )
    entries = _entries(model)
    config = resolve_config(model, config)
    specs = plan_sites(config, _records(model, entries), input_sites=True)
    _stacks(specs, entries)
    return specs


def resolve_config(model: nnx.Module, config: AdapterConfig) -> AdapterConfig:
    """``config`` with concrete sites for ``model``: a preset made without ``targets=``
    takes the sites of the model's family (:func:`mixlight.presets.resolve_targets`)."""
    if not config.family_defaults:
        return config
    return resolve_targets(config, model_type_of(model), list(_plain_paths(model)))


def _stacks(specs: list[SiteSpec], entries: dict[str, Entry]) -> dict[Path, list[SiteSpec]]:
    """The sites by the NNX path of the module they adapt (a stacked module's by layer); a
    ``ValueError`` when a site takes only some layers of a stack, or layers differently."""
    groups: dict[Path, list[SiteSpec]] = {}
    for spec in specs:
        groups.setdefault(entries[spec.path].path, []).append(spec)
    for path, group in groups.items():
        layers = entries[group[0].path].layers
        if layers is None:
            continue
        first = attrs.evolve(group[0], path="")
        if len(group) != layers or any(attrs.evolve(s, path="") != first for s in group):
            taken = sorted(int(entries[s.path].layer or 0) for s in group)
            patterns = sorted({s.site.pattern for s in group})
            raise ValueError(
                f"site pattern(s) {patterns} adapt layers {taken} of the {layers} layers that "
                f"the module {'.'.join(map(str, path))} holds stacked by nnx.vmap (one "
                "leading layer axis, run by nnx.scan): a stacked module takes one site for all "
                f"of its layers or none; match every layer alike (e.g. {group[0].path} with "
                "its layer index as \\d+) or none"
            )
    return groups


def inject(
    model: nnx.Module,
    config: AdapterConfig,
    *,
    seed: int | None = None,
    rngs: nnx.Rngs | None = None,
    name: str = DEFAULT,
) -> nnx.Module:
    """Give the modules matched by ``config``'s sites the adapter ``name`` (wrapping them in
    :class:`AdapterLayer`s) in place, and return the model.

    The first adapter of a model becomes the active one; a further name adds an inactive
    adapter beside it (switch with :func:`set_adapter`), as PEFT's ``add_adapter`` does.
    Adapter parameters are drawn with numpy from a seed, so injection is reproducible:
    ``seed`` (an int, as in :func:`mixlight.inject`), or one drawn from ``rngs`` (an
    ``nnx.Rngs``, whose ``params`` stream is advanced, as NNX constructors take it); default 0.

    Nothing is frozen: JAX has no ``requires_grad``, so the base model's parameters stay
    ``nnx.Param`` and an optimizer built on all ``nnx.Param`` would train them too. Train only
    the adapter with ``nnx.Optimizer(model, tx, wrt=mixlight_jax.trainable(model))`` and
    differentiate with ``nnx.DiffState(0, trainable(model))`` (with a single adapter,
    ``mixlight_jax.AdapterParam`` selects the same).

    Adaptable: ``nnx.Linear``, ``nnx.LinearGeneral`` (``nnx.MultiHeadAttention``'s query, key,
    value and out), ``nnx.Einsum``, parameterless activation modules, and these stacked by
    ``nnx.vmap`` for ``nnx.scan`` (one adapter per layer, stacked alike; listed and saved
    per layer, see :mod:`mixlight_jax._modules`). Any other matched module is refused with
    its path, type and kernel shape.
    """
    rng = np.random.default_rng(_seed(seed, rngs))
    state = vars(model).get(_STATE) or NamedAdapters()
    state.check_new(name, "or call mixlight_jax.remove_adapters(model) first, or use a fresh model")
    specs = plan(model, config)
    entries = _entries(model)
    groups = _stacks(specs, entries)
    state = state.added(name, resolve_config(model, config), specs)
    drawn = {spec.path: spec.init_params(rng) for spec in specs}  # in the plan's order
    for path, group in groups.items():
        layer = _get(model, path)
        if not isinstance(layer, AdapterLayer):
            found = layout(layer)
            shapes = (found.in_shape, found.out_shape) if isinstance(found, Layout) else None
            stacked = per_layer_paths(entries, path) if entries[group[0].path].layers else ()
            layer = AdapterLayer(layer, shapes, stacked)
            _set(model, path, layer)
        params = drawn[group[0].path]
        if layer.layer_paths:
            params = {n: np.stack([drawn[s.path][n] for s in group]) for n in params}
        layer.add(name, group[0], params)
        layer.activate(state.active)
    setattr(model, _STATE, state)
    return model


def trainable(model: nnx.Module, name: str | None = None) -> nnx.filterlib.Filter:
    """The NNX filter of adapter ``name``'s parameters (default: the active adapter's), for
    ``nnx.Optimizer(model, tx, wrt=trainable(model))`` and
    ``nnx.DiffState(0, trainable(model))``: ``nnx.All(AdapterParam, AdapterNamed(name))``.
    It names the adapter, so an optimizer built with it trains (and decays) that adapter only,
    whichever is active later: keep one optimizer per adapter across :func:`set_adapter`.
    ``AdapterParam`` alone selects every adapter's parameters."""
    state = state_of(model)
    return nnx.All(AdapterParam, AdapterNamed(state.check_name(name or state.active)))


def set_adapter(model: nnx.Module, name: str) -> None:
    """Make adapter ``name`` the one that runs. No variable changes (every adapter's
    parameters are :class:`AdapterParam` at their own path), so an optimizer built with
    ``wrt=trainable(model, name)`` stays valid; ``nnx.jit`` retraces for the new active
    adapter (static metadata)."""
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
) -> Iterator[tuple[str, nnx.Variable, int | None]]:
    """``(canonical name, variable, layer)`` of adapter ``name`` (default: the active one),
    canonical names as in adapter files (each an :class:`AdapterParam`). ``layer`` is None,
    or, for a module stacked by ``nnx.vmap``, the index along the variable's leading layer
    axis that the name stands for (one variable then serves every layer's name)."""
    name = name if name is not None else state_of(model).active
    for dotted, layer in adapter_layers(model, name).items():
        paths = layer.layer_paths or (dotted,)
        for short, variable in layer.variables(name).items():
            for i, path in enumerate(paths):
                yield f"{path}.{short}", variable, (i if layer.layer_paths else None)


def _host(value: Any) -> np.ndarray:
    """A device array's whole value on this host. An array spanning several processes (a
    multi-host mesh) is gathered from all of them: every process must then make the same
    calls in the same order (``save_adapter`` on every process)."""
    if getattr(value, "is_fully_addressable", True):
        return np.asarray(jax.device_get(value))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(value, tiled=True))


def adapter_arrays(model: nnx.Module, name: str | None = None) -> dict[str, np.ndarray]:
    """Adapter ``name``'s parameters (default: the active one's) as float32 numpy arrays by
    canonical name, a stacked module's one per layer."""
    values: dict[int, np.ndarray] = {}
    arrays = {}
    for key, variable, layer in adapter_parameters(model, name):
        if id(variable) not in values:
            values[id(variable)] = np.array(_host(variable[...]), np.float32)
        value = values[id(variable)]
        arrays[key] = value if layer is None else np.array(value[layer])
    return arrays


def set_adapter_arrays(
    model: nnx.Module, arrays: Mapping[str, np.ndarray], name: str | None = None
) -> None:
    """Write ``arrays`` (by canonical name, as :func:`adapter_arrays` gives them) into
    adapter ``name`` (default: the active one), keeping each variable's dtype and sharding;
    a stacked module's layers are stacked back along its leading axis."""
    stacked: dict[int, tuple[nnx.Variable, dict[int, np.ndarray]]] = {}
    for key, variable, layer in adapter_parameters(model, name):
        if layer is None:
            _write(variable, arrays[key])
        else:
            stacked.setdefault(id(variable), (variable, {}))[1][layer] = arrays[key]
    for variable, layers in stacked.values():
        _write(variable, np.stack([layers[i] for i in range(len(layers))]))


def _write(variable: nnx.Variable, value: Any) -> None:
    old = variable[...]
    variable.set_value(jax.device_put(jnp.asarray(value, old.dtype), old.sharding))


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
    the target (the decoder's other sites); a side with no mask keeps an enclosing block's
    (or pools over every position), and a mask whose ``[batch, seq]`` differs from a site's
    router input raises a ``ValueError`` naming the site. The NNX T5 opens such a block
    itself with the masks it is called with; for other models, use it inside a jitted
    function as well as outside::

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
    for layer, old in zip(layers, previous, strict=True):
        n = len(layer.layer_paths)  # a stack's scan hands each step one layer's copy
        given_here = (
            {s: jnp.broadcast_to(m, (n, *m.shape)) for s, m in masks.items()} if n else masks
        )
        layer.masks.set_value({**old, **given_here})  # sides not given keep the enclosing
    try:
        yield model
    finally:
        for layer, old in zip(layers, previous, strict=True):
            layer.masks.set_value(old)


@contextlib.contextmanager
def no_routing_trace(model: nnx.Module) -> Iterator[nnx.Module]:
    """Run the model inside the block without recording its routing: every adapter layer's
    trace is cleared (None) on entry, so :func:`mixlight.routing_stats` and
    :func:`mixlight.aux_losses` report nothing from these calls rather than an earlier one's.
    What a raw JAX loop over the model needs (``jax.lax.fori_loop`` / ``while_loop``, as
    :func:`mixlight_jax.t5.greedy_generate` decodes), where NNX state cannot change and an
    adapter layer that records raises instead; enter it outside the loop, inside a jitted
    function or not. Each layer's ``recording`` flag is static NNX metadata, so ``nnx.jit``
    compiles the unrecorded model separately. A model without adapters runs unchanged."""
    layers = list(_all_layers(model).values())
    previous = [layer.recording for layer in layers]
    for layer in layers:
        layer.recording = True
        layer._record(None, None)
        layer.recording = False
    try:
        yield model
    finally:
        for layer, recording in zip(layers, previous, strict=True):
            layer.recording = recording


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
    """Samples of the kernels that adapter ``name`` (default: the active one) adapts, read in
    the canonical ``[d_in, d_out]`` order (a stacked module's per layer), and the model's
    ``name_or_path`` when it has one."""
    kernels: dict[str, tuple[nnx.Variable, Layout, int | None]] = {}
    for path, layer in adapter_layers(model, name).items():
        found = layout(layer.base)
        if isinstance(found, Layout):
            for i, p in enumerate(layer.layer_paths or (path,)):
                kernel = layer.base.kernel  # type: ignore[attr-defined]  # layout() found it
                kernels[p] = (kernel, found, i if layer.layer_paths else None)

    def gather(point: SamplePoint) -> np.ndarray:
        kernel, found, layer = kernels[point.path]
        index = found.native_index(np.array(point.rows), np.array(point.cols))
        if layer is not None:
            index = (np.full(len(point.rows), layer), *index)
        return np.asarray(_host(kernel[...][index]), np.float32)

    samples = sample_weights(
        {path: (found.d_in, found.d_out) for path, (_, found, _) in kernels.items()}, gather
    )
    dtype = str(next(iter(kernels.values()))[0][...].dtype) if kernels else None
    return BaseIdentity(getattr(model, "name_or_path", None), None, samples, dtype)
