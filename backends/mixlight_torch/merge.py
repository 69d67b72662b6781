"""Folding the active adapter into the frozen weights (``mixlight.merge_and_unload``), and
measuring the mean routing to fold a routed adapter at (``mixlight.mean_routing``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mixlight.experts import Merged
from mixlight.merging import Routing, RoutingMeans, site_update
from mixlight.site_planning import ACTIVATION_CONSUMERS
from mixlight_torch.model import (
    adapter_layers,
    canonical_weight,
    materialize,
    quantized_weight,
    remove_adapters,
    state_of,
    unwrap,
)

MASK_KEYS = ("attention_mask", "decoder_attention_mask")


def merge_and_unload(model: nn.Module, routing: Routing | None = None) -> nn.Module:
    """Fold the active adapter into the base weights, remove every adapter, and return the
    plain model (as PEFT's ``merge_and_unload``). Every site's update is computed and
    checked before any weight changes, so a refused merge leaves the model as it was.
    Linear sites fold first, then activation sites scale their consumer's input rows, so a
    consumer with its own update (LoRA on ``wo``) is scaled after it, as the adapted model
    computes ``wo(act(x) * s)``; a site that scales a linear layer's input
    (``Site(tensor="input")``) scales that layer's input rows in the same way."""
    model = unwrap(model)
    state_of(model)
    materialize(model, "merge the adapter")
    linear, activations = [], []
    layers = adapter_layers(model)
    for path, layer in layers.items():
        _refuse_quantized(path, layer.base)
    for path, layer in layers.items():
        params = {n: p.detach().float().cpu().numpy() for n, p in layer.adapter.items()}
        update = site_update(layer.spec, params, routing)
        weight = canonical_weight(layer.base)
        if weight is not None and layer.spec.site.tensor == "input":
            _refuse_input_delta(path, update)
            activations.append((weight, update))  # scales its own input rows
        elif weight is not None:
            linear.append((weight, getattr(layer.base, "bias", None), update))
        else:
            activations.append((_consumer_weight(model, path, layer.base, update), update))
    with torch.no_grad():
        for weight, bias, update in linear:
            _fold(weight, bias, update)
        for weight, update in activations:
            _fold(weight.T, None, update)  # the consumer's input rows: its [out, in] columns
    return remove_adapters(model)


def _consumer_weight(model: nn.Module, path: str, base: nn.Module, update: Merged) -> Tensor:
    """The ``[d_in, d_out]`` weight of the sibling that consumes the activation at ``path``
    (T5's ``wo``; what sized the site), into whose inputs its scaling folds."""
    parent = model.get_submodule(path.rpartition(".")[0])
    width = None if update.scale is None else update.scale.shape[0]
    for name in ACTIVATION_CONSUMERS:
        weight = canonical_weight(getattr(parent, name, None))
        if update.delta is None and weight is not None and weight.shape[0] == width:
            return weight
    raise ValueError(
        f"cannot merge the adapter at {path}: it wraps a {type(base).__name__}, which is not a "
        "linear layer, and no sibling consumes its output (one of "
        f"{', '.join(ACTIVATION_CONSUMERS)}); keep this adapter unmerged"
    )


def _refuse_quantized(path: str, base: nn.Module) -> None:
    weight = getattr(base, "weight", None)
    if isinstance(weight, Tensor) and quantized_weight(weight):
        raise ValueError(
            f"cannot merge the adapter at {path}: its base weight is quantized "
            f"({type(weight).__name__}), and folding the adapter into it would quantize the "
            "update away; merge into an unquantized copy of the base model (load it in "
            "float, mixlight.load_adapter, merge_and_unload, then quantize), or keep the "
            "adapter unmerged"
        )


def _refuse_input_delta(path: str, update: Merged) -> None:
    if update.delta is not None:
        raise ValueError(
            f"cannot merge the adapter at {path}: it adapts the layer's input with an additive "
            "update, which no change of this layer's weights computes; keep it unmerged"
        )


def _fold(weight: Tensor, bias: Tensor | None, update: Merged) -> None:
    """``x @ W + b`` -> ``(x @ W + b) * s + x @ delta`` in place, computed in float32 or
    wider; ``weight`` is ``[d_in, d_out]`` (a view of the module's own layout)."""
    wide = torch.promote_types(weight.dtype, torch.float32)
    w = weight.to(wide)
    if update.scale is not None:
        s = torch.from_numpy(update.scale).to(weight.device, wide)
        w = w * s
        if bias is not None:
            bias.copy_((bias.to(wide) * s).to(bias.dtype))
    if update.delta is not None:
        w = w + torch.from_numpy(update.delta).to(weight.device, wide)
    weight.copy_(w.to(weight.dtype))


def mean_routing(model: nn.Module, batches: Iterable[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Each routed site's mean routing probability over the real tokens of ``batches``
    (dicts of keyword arguments for ``model(**batch)``; their ``attention_mask``,
    ``decoder_attention_mask`` or ``labels != -100`` mark the tokens), run without gradients.
    Returns ``{site path: [E] or [H, E]}`` for :func:`mixlight.merge_and_unload`."""
    inner = unwrap(model)
    state_of(inner)
    means = RoutingMeans()
    with torch.no_grad():
        for batch in batches:
            model(**batch)
            source, target = (_mask(batch.get(k)) for k in MASK_KEYS)
            labels = batch.get("labels")
            if target is None and isinstance(labels, torch.Tensor):
                target = (labels != -100).cpu().numpy()
            for layer in adapter_layers(inner).values():
                if layer.last_probs is not None:
                    probs = layer.last_probs.float().cpu().numpy()
                    means.add(layer.spec, probs, source, target)
    return means.result()


def _mask(t: Any) -> np.ndarray | None:
    return t.cpu().numpy() if isinstance(t, torch.Tensor) else None
