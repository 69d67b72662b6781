"""Folding the active adapter into the frozen weights (``mixlight.merge_and_unload``), and
measuring the mean routing to fold a routed adapter at (``mixlight.mean_routing``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from mixlight.experts import Merged
from mixlight.merging import Routing, RoutingMeans, site_update
from mixlight.site_spec import ACTIVATION_CONSUMERS
from mixlight_torch.model import adapter_layers, materialize, remove_adapters, state_of, unwrap

MASK_KEYS = ("attention_mask", "decoder_attention_mask")


def merge_and_unload(model: nn.Module, routing: Routing | None = None) -> nn.Module:
    """Fold the active adapter into the base weights, remove every adapter, and return the
    plain model (as PEFT's ``merge_and_unload``). Every site's update is computed and
    checked before any weight changes, so a refused merge leaves the model as it was."""
    model = unwrap(model)
    state_of(model)
    materialize(model, "merge the adapter")
    updates = []
    for path, layer in adapter_layers(model).items():
        params = {n: p.detach().float().cpu().numpy() for n, p in layer.adapter.items()}
        update = site_update(layer.spec, params, routing)
        updates.append((_target(model, path, layer.base, update), update))
    with torch.no_grad():
        for fold, update in updates:
            fold(update)
    return remove_adapters(model)


def _target(model: nn.Module, path: str, base: nn.Module, update: Merged):
    """How ``update`` folds into the module at ``path``: into a linear layer's own weight,
    or, for a parameterless activation's scaling, into the input columns of the sibling
    that consumes it (T5's ``wo``), which is what sized the site."""
    if _linear_layout(base) is not None:
        return lambda u: _fold_linear(base, u)
    parent = model.get_submodule(path.rpartition(".")[0])
    width = None if update.scale is None else update.scale.shape[0]
    for name in ACTIVATION_CONSUMERS:
        consumer = getattr(parent, name, None)
        if (
            update.delta is None
            and isinstance(consumer, nn.Linear)
            and consumer.in_features == width
        ):
            return lambda u: _scale_inputs(consumer, u.scale)
    raise ValueError(
        f"cannot merge the adapter at {path}: it wraps a {type(base).__name__}, which is not a "
        "linear layer, and no sibling consumes its output (one of "
        f"{', '.join(ACTIVATION_CONSUMERS)}); keep this adapter unmerged"
    )


def _linear_layout(module: nn.Module) -> str | None:
    """``"out_in"`` for ``nn.Linear`` (weight ``[out, in]``), ``"in_out"`` for HF ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return "out_in"
    if type(module).__name__ == "Conv1D" and isinstance(
        getattr(module, "weight", None), torch.Tensor
    ):
        return "in_out"
    return None


def _fold_linear(module: nn.Module, update: Merged) -> None:
    """``W x + b`` -> ``s * (W x + b) + delta^T x``, computed in float32 or wider."""
    weight = module.weight
    wide = torch.promote_types(weight.dtype, torch.float32)
    w = weight.to(wide) if _linear_layout(module) == "out_in" else weight.to(wide).T  # [out, in]
    bias = getattr(module, "bias", None)
    if update.scale is not None:
        s = torch.from_numpy(update.scale).to(weight.device, wide)
        w = w * s[:, None]
        if bias is not None:
            bias.copy_((bias.to(wide) * s).to(bias.dtype))
    if update.delta is not None:
        w = w + torch.from_numpy(update.delta).to(weight.device, wide).T
    weight.copy_((w if _linear_layout(module) == "out_in" else w.T).to(weight.dtype))


def _scale_inputs(consumer: nn.Linear, scale: np.ndarray) -> None:
    s = torch.from_numpy(scale).to(consumer.weight.device)
    consumer.weight.copy_((consumer.weight.float() * s[None, :]).to(consumer.weight.dtype))


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
