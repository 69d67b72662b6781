"""The torch training state as checkpoint arrays (:mod:`mixlight_tune.checkpoint`) and back:
trainable weights by parameter name, the optimiser's per-parameter state (tensors as arrays,
Python numbers as JSON scalars) and torch's CPU RNG state."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mixlight_tune.checkpoint import Checkpoint, ResumeError


def _names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The parameter name of each optimiser parameter, in the optimiser's index order."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for group in optimizer.param_groups for p in group["params"]]


def train_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, scalars)`` of the model's trainable weights, the optimiser and the RNG."""
    names = _names(model, optimizer)
    arrays = {
        f"model/{n}": p.detach().cpu().numpy()
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    scalars: dict[str, Any] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                arrays[f"optimizer/{names[index]}/{key}"] = value.detach().cpu().numpy()
            else:
                scalars[f"{names[index]}/{key}"] = value
    arrays["rng/torch"] = torch.get_rng_state().numpy()
    return arrays, scalars


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: Checkpoint) -> None:
    """Put a checkpoint's weights, optimiser state and RNG state back (in place)."""
    params = dict(model.named_parameters())
    index = {n: i for i, n in enumerate(_names(model, optimizer))}
    weights = checkpoint.group("model")
    if weights.keys() != {n for n, p in params.items() if p.requires_grad}:
        raise ResumeError("the checkpoint's weights do not fit this model; delete it to start over")
    with torch.no_grad():
        for name, array in weights.items():
            params[name].copy_(torch.from_numpy(array))
    state: dict[int, dict[str, Any]] = {}
    for key, array in checkpoint.group("optimizer").items():
        name, item = key.rsplit("/", 1)
        state.setdefault(index[name], {})[item] = torch.from_numpy(array.copy())
    for key, value in checkpoint.scalars.items():
        name, item = key.rsplit("/", 1)
        state.setdefault(index[name], {})[item] = value
    saved = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    torch.set_rng_state(torch.from_numpy(checkpoint.arrays["rng/torch"].copy()))
