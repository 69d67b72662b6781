"""Injection into any ``nn.Module`` by module-path pattern, and the model-level state."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeGuard

import numpy as np
import torch
from torch import nn

from mixlight import AdapterConfig
from mixlight._base_identity import BaseIdentity, sample_weights
from mixlight._cache_safety import cache_unsafe_sites, refuse_cached_sequence_routing
from mixlight.extend import SiteSpec, plan_sites
from mixlight.named_adapters import BASE, DEFAULT, NamedAdapters
from mixlight.presets import model_type_of, resolve_targets
from mixlight.site_math import aux_loss_terms
from mixlight.site_planning import ModuleRecord, record_module
from mixlight.site_spec import MASK_NAMES, SOURCE
from mixlight_torch import hf as _hf
from mixlight_torch.layers import AdapterLayer, AdapterSwitch


class MixlightState:
    """Attached to an injected model as ``model.mixlight_state``: its named adapters (the
    core's :class:`~mixlight.named_adapters.NamedAdapters`, replaced on every change), the
    switch its layers share, and its hooks."""

    def __init__(self, switch: AdapterSwitch) -> None:
        self.adapters = NamedAdapters(active=switch.active)
        self.switch = switch
        self.hooks: list[Any] = []
        self.aux_loss_in_output = True
        self.sequence_hooks = False

    def update(self, adapters: NamedAdapters) -> None:
        """Take ``adapters`` as the model's adapters; the layers run its active one."""
        self.adapters = adapters
        self.switch.active = adapters.active

    @property
    def active(self) -> str:
        return self.adapters.active

    @property
    def config(self) -> AdapterConfig:
        """The active adapter's config."""
        return self.adapters.config

    @property
    def specs(self) -> list[SiteSpec]:
        """The active adapter's sites."""
        return list(self.adapters.specs)

    def check_name(self, name: str) -> str:
        return self.adapters.check_name(name)

    def running_specs(self) -> list[SiteSpec]:
        """The sites the next forward runs: the active adapter's, or in a mixed batch those
        of every adapter named."""
        sites = self.adapters.site_specs
        names = self.switch.per_example or [self.active]
        return [s for n in dict.fromkeys(names) if n in sites for s in sites[n]]


def unwrap(model: nn.Module) -> nn.Module:
    """The injected model inside a DDP (``.module``) or ``torch.compile`` (``._orig_mod``)
    wrapper; ``model`` itself when it carries the adapter (FSDP2 shards in place)."""
    while "mixlight_state" not in model.__dict__:
        inner = model.__dict__.get("_orig_mod") or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


def state_of(model: nn.Module) -> MixlightState:
    state = model.__dict__.get("mixlight_state")
    if state is None:
        raise ValueError(
            f"{type(model).__name__} has no mixlight adapter; call mixlight.inject(model, config) "
            "or mixlight.load_adapter(model, directory) first"
        )
    return state


def adapter_layers(model: nn.Module, name: str | None = None) -> dict[str, AdapterLayer]:
    """The layers that carry adapter ``name`` (default: the active one), by the path of the
    module they wrap."""
    if name is None:
        state = model.__dict__.get("mixlight_state")
        name = state.active if state is not None else DEFAULT
    return {
        path: m
        for path, m in model.named_modules()
        if isinstance(m, AdapterLayer) and name in m.specs
    }


def _all_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    return {path: m for path, m in model.named_modules() if isinstance(m, AdapterLayer)}


def _plain_paths(model: nn.Module) -> list[str]:
    """The module paths the model had before injection: an adapter layer stands for the
    module it wraps, and nothing inside a layer is listed."""
    paths: list[str] = []
    inside: tuple[str, ...] = ()
    for path, module in model.named_modules():
        if not path or (inside and path.startswith(inside)):
            continue
        paths.append(path)
        if isinstance(module, AdapterLayer):
            inside = (*inside, path + ".")
    return paths


def _width(module: nn.Module | None, which: str) -> int | None:
    """Width of an ``nn.Linear`` (also one whose weight a quantization library holds) or HF
    ``Conv1D``; None for anything else."""
    if isinstance(module, nn.Linear):
        return int(module.in_features if which == "in" else module.out_features)
    weight = canonical_weight(module)
    return None if weight is None else int(weight.shape[0 if which == "in" else 1])


def _records(model: nn.Module) -> dict[str, ModuleRecord]:
    """Every module of the model as it was before injection, as plain data for the core's
    site planning (an adapter layer stands for the module it wraps)."""
    records = {}
    for path in _plain_paths(model):
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        module = parent.get_submodule(attr)
        if isinstance(module, AdapterLayer):
            module = module.base
        refusal = None
        if type(module).__module__.startswith("peft."):
            refusal = (
                f"{path} is a PEFT layer ({type(module).__module__}.{type(module).__name__}): "
                "this model is already wrapped by PEFT. Inject mixlight into the plain model "
                "instead (peft_model.unload() or peft_model.merge_and_unload() returns it), or "
                "target modules PEFT did not wrap"
            )
        records[path] = record_module(module, parent, _width, _has_params, refusal)
    return records


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def resolve_config(model: nn.Module, config: AdapterConfig) -> AdapterConfig:
    """``config`` with concrete sites for ``model``: a preset made without ``targets=``
    takes the sites of the model's family (:func:`mixlight.presets.resolve_targets`)."""
    if not config.family_defaults:
        return config
    return resolve_targets(config, model_type_of(model), _plain_paths(model))


def plan(model: nn.Module, config: AdapterConfig) -> list[SiteSpec]:
    """The sites :func:`inject` would give ``model`` for ``config``; the model is unchanged."""
    config = resolve_config(model, config)
    records = _records(model)
    if not records:
        raise TypeError(
            f"mixlight.inject adapts the submodules of a model in place, and this "
            f"{type(model).__name__} has none (a bare layer given as the whole model); wrap it, "
            "e.g. model = nn.Sequential(layer), and target its path '0'"
        )
    return plan_sites(config, records, input_sites=True)


def inject(
    model: nn.Module, config: AdapterConfig, seed: int | None = None, name: str = DEFAULT
) -> nn.Module:
    """Give the modules matched by ``config``'s sites the adapter ``name``, in place, and
    freeze everything but the active adapter.

    The first adapter of a model becomes the active one; a further name adds an inactive
    adapter beside it (switch with :func:`set_adapter`), as PEFT's ``add_adapter`` does.
    Adapter parameters are drawn from a numpy generator seeded with ``seed``, or from torch's
    RNG when None, so ``torch.manual_seed`` makes injection reproducible.
    A preset made without ``targets=`` takes the sites of the model's family (from its HF
    ``config.model_type``, see :func:`resolve_config`); the model keeps, and saves, the
    concrete config.
    """
    state = model.__dict__.get("mixlight_state")
    (state.adapters if state is not None else NamedAdapters()).check_new(
        name, "or call mixlight_torch.remove_adapters(model) first, or use a fresh model"
    )
    config = resolve_config(model, config)
    specs = plan(model, config)
    if seed is None:  # drawn on the CPU: also under ``with torch.device("meta")``
        seed = int(torch.randint(0, 2**62, (), device="cpu"))
    rng = np.random.default_rng(seed)
    if state is None:
        model.requires_grad_(False)
        state = MixlightState(AdapterSwitch(name))
        state.hooks.append(
            model.register_forward_hook(_aux_loss_into_output(state), with_kwargs=True)
        )
        model.__dict__["mixlight_state"] = state
        _hf.install_save_pretrained(model)
    for spec in specs:
        parent_path, _, attr = spec.path.rpartition(".")
        parent = model.get_submodule(parent_path)
        layer = parent.get_submodule(attr)
        if not isinstance(layer, AdapterLayer):
            layer = AdapterLayer(layer, state.switch)
            setattr(parent, attr, layer)
        layer.add(name, spec, spec.init_params(rng), parent)
        layer.adapters[name].requires_grad_(name == state.active)
    state.update(state.adapters.added(name, config, specs))
    if config.routing == "sequence" and not state.sequence_hooks:
        state.sequence_hooks = True
        state.hooks.append(model.register_forward_pre_hook(_capture_masks(state), with_kwargs=True))
        encoder = _separate_encoder(model)
        if encoder is not None:
            state.hooks.append(
                encoder.register_forward_pre_hook(
                    _capture_source_mask(state.switch), with_kwargs=True
                )
            )
    return model


def set_adapter(model: nn.Module, name: str) -> None:
    """Make adapter ``name`` the one that runs and trains; the others stay, frozen."""
    state = state_of(model)
    state.update(state.adapters.activated(name))
    for layer in _all_layers(model).values():
        for other, params in layer.adapters.items():
            params.requires_grad_(other == name)


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name``; modules no adapter targets any more get their original
    module back. Deleting the active adapter activates the first remaining one; deleting the
    last is :func:`remove_adapters`."""
    state = state_of(model)
    left = state.adapters.removed(name)
    if not left.entries:
        remove_adapters(model)
        return
    for path, layer in _all_layers(model).items():
        if name in layer.specs:
            layer.remove(name)
        if not layer.specs:
            parent_path, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent_path), attr, layer.base)
    state.update(left)
    set_adapter(model, left.active)


@contextlib.contextmanager
def adapter_per_example(model: nn.Module, names: list[str]) -> Iterator[nn.Module]:
    """Within this context each example of a batch runs its own adapter: ``names[i]`` is
    example ``i``'s adapter name, ``"__base__"`` for none (PEFT's mixed-batch inference).
    Also under ``generate``: beams and returned sequences repeat their example's name.
    Every example runs only its adapter's sites; routing statistics and router losses are
    not recorded."""
    state = state_of(model)
    names = list(names)
    for n in dict.fromkeys(names):
        if n != BASE:
            state.check_name(n)
    if not names:
        raise ValueError("adapter_per_example(model, names): names is empty; give one per example")
    previous, state.switch.per_example = state.switch.per_example, names
    try:
        yield model
    finally:
        state.switch.per_example = previous


def _aux_loss_into_output(state: MixlightState):
    """A forward hook that adds the weighted router losses of the pass to the model's
    ``loss`` output (HF ``ModelOutput.loss``, or the first element of a tuple output when
    ``labels`` were given), so HF's Trainer, accelerate and plain loops optimise them with no
    user code. Off with ``mixlight_torch.aux_loss_in_output(model, False)``; no-op when no
    running site has a non-zero loss weight or the call computed no loss."""

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not (state.aux_loss_in_output and state.switch.enabled):
            return None
        if not any(_weighted(s) for s in state.specs) or state.switch.per_example is not None:
            return None
        if isinstance(output, tuple) and kwargs.get("labels") is not None and output:
            return (output[0] + aux_loss(module), *output[1:])
        loss = getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor):
            output.loss = loss + aux_loss(module)
        return None

    return hook


def _weighted(spec: SiteSpec) -> bool:
    return spec.has_router and bool(spec.router.load_balance_weight or spec.router.z_loss_weight)


def aux_loss(model: nn.Module) -> torch.Tensor:
    """The weighted router losses of the active adapter in the last forward pass, summed."""
    total = torch.zeros(())
    for layer in adapter_layers(model).values():
        if layer.last_logits is not None:
            for term in aux_loss_terms(layer.spec, layer.last_logits).values():
                total = total.to(term.device) + term
    return total


def aux_loss_in_output(model: nn.Module, enabled: bool = True) -> None:
    """Whether the injected model adds its router losses to ``outputs.loss`` (default on;
    see :func:`_aux_loss_into_output`). Turn it off when your loop adds
    :func:`mixlight.aux_losses` itself."""
    state_of(unwrap(model)).aux_loss_in_output = bool(enabled)


def _capture_masks(state: MixlightState):
    """A forward pre-hook that hands the call's padding masks to sequence-routed sites by side
    (``attention_mask`` the source's, ``decoder_attention_mask`` the target's; a side the call
    gives no ``[batch, seq]`` mask for pools over every position), and refuses a decoding step
    that reuses a non-empty key/value cache when decoder-side sites of the running adapter
    route by sequence (they would pool over the new token alone)."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if max(_cache_length(kwargs.get(k)) for k in CACHE_KWARGS) > 0:
            specs = state.running_specs()
            if cache_unsafe_sites(specs):
                refuse_cached_sequence_routing(
                    specs, type(module).__name__, "generate(..., use_cache=False)"
                )
        state.switch.masks = {
            side: m for side, name in MASK_NAMES.items() if _is_mask(m := kwargs.get(name))
        }

    return hook


def _separate_encoder(model: nn.Module) -> nn.Module | None:
    """An encoder-decoder's encoder (HF ``get_encoder()``), which ``generate`` calls on its
    own, before the first decoding step; None for other models. An encoder-only model's
    ``get_encoder()`` (BERT's layer stack) runs only inside the model's call and is handed a
    4-D attention mask there, so it must not replace the call's padding mask: an HF model
    whose config says it is not an encoder-decoder has no separate encoder."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", None) is False:
        return None
    get_encoder = getattr(model, "get_encoder", None)
    encoder = get_encoder() if callable(get_encoder) else None
    return encoder if isinstance(encoder, nn.Module) and encoder is not model else None


def _capture_source_mask(switch: AdapterSwitch):
    """A pre-hook on the encoder: its ``attention_mask`` is the source's mask, so the
    encoder's sequence-routed sites pool over the source's tokens also when the encoder runs
    alone (as in ``generate``), not with a previous call's mask."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        masks = {side: m for side, m in switch.masks.items() if side != SOURCE}
        switch.masks = {**masks, SOURCE: mask} if _is_mask(mask) else masks

    return hook


def _is_mask(mask: object) -> TypeGuard[torch.Tensor]:
    """Whether a call's mask argument is a ``[batch, seq]`` padding mask (HF models also take
    ready-made 4-D attention masks, which are not)."""
    return isinstance(mask, torch.Tensor) and mask.ndim == 2


# Where HF models take a key/value cache (``cache`` in transformers >= 5, else the older name).
CACHE_KWARGS = ("cache", "past_key_values")


def _cache_length(cache: Any) -> int:
    """Tokens held by an HF key/value cache (a ``Cache`` object or legacy tuples); 0 for None."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return len(cache)


def remove_adapters(model: nn.Module) -> nn.Module:
    """Put the original modules back and forget every adapter (parameters stay frozen)."""
    state = state_of(model)
    for path, layer in _all_layers(model).items():
        parent_path, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent_path), name, layer.base)
    for hook in state.hooks:
        hook.remove()
    del model.__dict__["mixlight_state"]
    _hf.uninstall_save_pretrained(model)
    return model


def materialize(model: nn.Module, action: str, name: str | None = None) -> None:
    """Give meta-injected adapters their initial values if they now have storage; refuse,
    saying what to do, while adapter ``name``'s parameters are still on the meta device."""
    for path, layer in adapter_layers(model, name).items():
        layer.materialize()
        if any(p.is_meta for p in layer.params_of(name or layer.switch.active).values()):
            raise ValueError(
                f"cannot {action}: the adapter at {path} is on the meta device (no values). "
                "Give the model storage first, model.to_empty(device='cpu') (or 'cuda'), then "
                "load the base weights; the adapters then start from their initial values"
            )


def adapter_parameters(
    model: nn.Module, name: str | None = None
) -> Iterator[tuple[str, nn.Parameter]]:
    """``(canonical name, parameter)`` pairs of adapter ``name`` (default: the active one),
    canonical names as in adapter files."""
    for path, layer in adapter_layers(model, name).items():
        for short, param in layer.params_of(name or layer.switch.active).items():
            yield f"{path}.{short}", param


@contextlib.contextmanager
def check_finite(model: nn.Module) -> Iterator[nn.Module]:
    """Within this context every adapter layer checks its input and its base module's output
    for NaN/inf and raises ``FloatingPointError`` naming the site path (costs a reduction per
    site, so it is off by default)."""
    switch = state_of(model).switch
    previous, switch.check_finite = switch.check_finite, True
    try:
        yield model
    finally:
        switch.check_finite = previous


def base_identity(model: nn.Module, adapter: str | None = None) -> BaseIdentity:
    """The base model's name and revision (HF ``config``) and samples of the weights of the
    modules ``adapter`` (default: the active one) adapts; no samples when a weight has no
    values here (meta device, sharded)."""
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or None
    revision = getattr(config, "_commit_hash", None) or None
    weights = {}
    for path, layer in adapter_layers(model, adapter).items():
        weight = canonical_weight(layer.base)
        if weight is not None:
            if weight.is_meta or type(weight).__name__ == "DTensor":
                return BaseIdentity(name, revision)
            weights[path] = weight
    samples = sample_weights(
        {path: (int(w.shape[0]), int(w.shape[1])) for path, w in weights.items()},
        lambda p: weights[p.path][list(p.rows), list(p.cols)].detach().float().cpu().numpy(),
    )
    dtype = str(next(iter(weights.values())).dtype).removeprefix("torch.") if weights else None
    return BaseIdentity(name, revision, samples, dtype)


def canonical_weight(module: nn.Module | None) -> torch.Tensor | None:
    """The weight of an ``nn.Linear`` or HF ``Conv1D`` (also one an adapter layer wraps) as
    ``[d_in, d_out]`` (a view: writes reach the module), else None; None too for a weight a
    quantization library holds (:func:`quantized_weight`), which has no such view."""
    if isinstance(module, AdapterLayer):
        module = module.base
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or quantized_weight(weight):
        return None
    if isinstance(module, nn.Linear):
        return weight.T
    if type(module).__name__ == "Conv1D":
        return weight
    return None


def quantized_weight(weight: torch.Tensor) -> bool:
    """Whether ``weight`` is held by a tensor subclass of a quantization library (torchao's
    ``Int8Tensor``, bitsandbytes' ``Int8Params``/``Params4bit``, ...) rather than a plain or
    sharded (``DTensor``) float tensor: its module still runs, but its values are not there
    to read, sample or merge into."""
    kind = type(weight)
    if kind in (torch.Tensor, nn.Parameter) or kind.__name__ == "DTensor":
        return False
    return kind.__module__.partition(".")[0] in ("torchao", "bitsandbytes", "optimum") or (
        not weight.is_floating_point()
    )
