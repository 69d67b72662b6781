"""Injection into any ``nn.Module`` by module-path pattern, and the model-level state."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from mixlight import AdapterConfig, ModuleShape, Site, SiteSpec, plan_sites
from mixlight._base_identity import BaseIdentity, sample_weights
from mixlight._cache_safety import cache_unsafe_sites, refuse_cached_sequence_routing
from mixlight.site_spec import describe_module
from mixlight_torch.layers import AdapterLayer, AdapterSwitch


class MixlightState:
    """Attached to an injected model as ``model.mixlight_state``."""

    def __init__(
        self,
        config: AdapterConfig,
        specs: list[SiteSpec],
        switch: AdapterSwitch,
        hooks: list[Any],
    ) -> None:
        self.config = config
        self.specs = specs
        self.switch = switch
        self.hooks = hooks


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


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """Adapter layers by the path of the module they wrap."""
    return {path: m for path, m in model.named_modules() if isinstance(m, AdapterLayer)}


def _width(module: nn.Module | None, which: str) -> int | None:
    """Width of an ``nn.Linear`` or HF ``Conv1D``; None for anything else."""
    if isinstance(module, nn.Linear):
        return module.in_features if which == "in" else module.out_features
    weight = getattr(module, "weight", None)  # HF Conv1D stores [in, out]
    if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor):
        return int(weight.shape[0] if which == "in" else weight.shape[1])
    return None


def _describe(model: nn.Module, path: str, site: Site) -> ModuleShape:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    module = parent.get_submodule(name)
    if isinstance(module, AdapterLayer):
        raise ValueError(f"{path} already carries a mixlight adapter")
    if type(module).__module__.startswith("peft."):
        raise TypeError(
            f"{path} is a PEFT layer ({type(module).__module__}.{type(module).__name__}): this "
            "model is already wrapped by PEFT. Inject mixlight into the plain model instead "
            "(peft_model.unload() or peft_model.merge_and_unload() returns it), or target "
            "modules PEFT did not wrap"
        )
    return describe_module(
        path, site, module, parent, _width, lambda m: any(True for _ in m.parameters())
    )


def inject(model: nn.Module, config: AdapterConfig, seed: int | None = None) -> nn.Module:
    """Wrap matched modules in :class:`AdapterLayer`s in place and freeze everything else.

    Adapter parameters are drawn from a numpy generator seeded with ``seed``, or from torch's
    RNG when None, so ``torch.manual_seed`` makes injection reproducible.
    """
    if "mixlight_state" in model.__dict__:
        raise ValueError(
            "this model already carries a mixlight adapter; call "
            "mixlight_torch.remove_adapters(model) first or use a fresh model"
        )
    paths = [p for p, _ in model.named_modules() if p]
    if not paths:
        raise TypeError(
            f"mixlight.inject adapts the submodules of a model in place, and this "
            f"{type(model).__name__} has none (a bare layer given as the whole model); wrap it, "
            "e.g. model = nn.Sequential(layer), and target its path '0'"
        )
    specs = plan_sites(config, paths, lambda path, site: _describe(model, path, site))
    if seed is None:  # drawn on the CPU: also under ``with torch.device("meta")``
        seed = int(torch.randint(0, 2**62, (), device="cpu"))
    rng = np.random.default_rng(seed)
    switch = AdapterSwitch()
    model.requires_grad_(False)
    for spec in specs:
        parent_path, _, name = spec.path.rpartition(".")
        parent = model.get_submodule(parent_path)
        layer = AdapterLayer(parent.get_submodule(name), spec, spec.init_params(rng), switch)
        setattr(parent, name, layer)
    hooks = []
    if config.routing == "sequence":
        hooks.append(
            model.register_forward_pre_hook(_capture_masks(switch, specs), with_kwargs=True)
        )
        encoder = _separate_encoder(model)
        if encoder is not None:
            hooks.append(
                encoder.register_forward_pre_hook(_capture_source_mask(switch), with_kwargs=True)
            )
    model.__dict__["mixlight_state"] = MixlightState(config, specs, switch, hooks)
    return model


def _capture_masks(switch: AdapterSwitch, specs: list[SiteSpec]):
    """A forward pre-hook that hands the call's padding masks to sequence-routed sites, and
    refuses a decoding step that reuses a non-empty key/value cache when decoder-side sites
    route by sequence (they would pool over the new token alone)."""
    unsafe = cache_unsafe_sites(specs)

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if unsafe and max(_cache_length(kwargs.get(k)) for k in CACHE_KWARGS) > 0:
            refuse_cached_sequence_routing(
                specs, type(module).__name__, "generate(..., use_cache=False)"
            )
        switch.masks = [
            m
            for m in (kwargs.get("attention_mask"), kwargs.get("decoder_attention_mask"))
            if isinstance(m, torch.Tensor) and m.ndim == 2
        ]

    return hook


def _separate_encoder(model: nn.Module) -> nn.Module | None:
    """An encoder-decoder's encoder (HF ``get_encoder()``), which ``generate`` calls on its
    own, before the first decoding step; None for other models."""
    get_encoder = getattr(model, "get_encoder", None)
    encoder = get_encoder() if callable(get_encoder) else None
    return encoder if isinstance(encoder, nn.Module) and encoder is not model else None


def _capture_source_mask(switch: AdapterSwitch):
    """A pre-hook on the encoder: its ``attention_mask`` goes first among the masks, so the
    encoder's sequence-routed sites pool over the source's tokens also when the encoder runs
    alone (as in ``generate``), not over a previous call's masks or every position."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            switch.masks = [mask, *(m for m in switch.masks if m is not mask)]

    return hook


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
    """Put the original modules back and forget the adapter (parameters stay frozen)."""
    state = state_of(model)
    for path, layer in adapter_layers(model).items():
        parent_path, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent_path), name, layer.base)
    for hook in state.hooks:
        hook.remove()
    del model.__dict__["mixlight_state"]
    return model


def materialize(model: nn.Module, action: str) -> None:
    """Give meta-injected adapters their initial values if they now have storage; refuse,
    saying what to do, while any adapter parameter is still on the meta device."""
    for path, layer in adapter_layers(model).items():
        layer.materialize()
        if any(p.is_meta for p in layer.adapter.values()):
            raise ValueError(
                f"cannot {action}: the adapter at {path} is on the meta device (no values). "
                "Give the model storage first, model.to_empty(device='cpu') (or 'cuda'), then "
                "load the base weights; the adapters then start from their initial values"
            )


def adapter_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """``(canonical name, parameter)`` pairs, canonical names as in adapter files."""
    for path, layer in adapter_layers(model).items():
        for short, param in layer.adapter.items():
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


def base_identity(model: nn.Module) -> BaseIdentity:
    """The base model's name and revision (HF ``config``) and samples of the adapted modules'
    weights; no samples when a weight has no values here (meta device, sharded)."""
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or None
    revision = getattr(config, "_commit_hash", None) or None
    weights = {}
    for path, layer in adapter_layers(model).items():
        weight = _canonical_weight(layer.base)
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


def _canonical_weight(module: nn.Module) -> torch.Tensor | None:
    """The weight of an ``nn.Linear`` or HF ``Conv1D`` as ``[d_in, d_out]``, else None."""
    if isinstance(module, nn.Linear):
        return module.weight.T
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor):
        return weight
    return None
