"""The torch training state as checkpoint arrays (:mod:`mixlight_tune.checkpoint`) and back:
trainable weights by parameter name, the optimiser's per-parameter state (tensors as arrays,
Python numbers as JSON scalars) and torch's CPU RNG state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from mixlight_tune.checkpoint import Checkpoint, ResumeError

if TYPE_CHECKING:
    from torch.distributed.checkpoint.state_dict import DictValueType

# A full optimiser state dict's "state": each parameter's name -> its state (tensors and
# numbers). torch types it as the union of every state-dict shape.
_ParamStates = dict[str, dict[str, Any]]


def _names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The parameter name of each optimiser parameter, in the optimiser's index order."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as numpy; bfloat16 (which numpy lacks) as its exact float32 values, cast back
    to the parameter's dtype on restore (``copy_``, and the optimiser's own state loading)."""
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.cpu().numpy()


def train_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, scalars)`` of the model's trainable weights, the optimiser and the RNG."""
    names = _names(model, optimizer)
    arrays = {
        f"model/{n}": _array(p.detach()) for n, p in model.named_parameters() if p.requires_grad
    }
    scalars: dict[str, Any] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                arrays[f"optimizer/{names[index]}/{key}"] = _array(value.detach())
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


def _options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True)


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A parameter's or state's full value (a collective for a ``DTensor`` shard)."""
    tensor = tensor.detach()
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def train_state_sharded(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """:func:`train_state` of an FSDP2-sharded model, in the same layout (whole arrays by
    parameter name): every rank gathers, rank 0 writes. Collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    arrays = {
        f"model/{n}": _array(_whole(p)) for n, p in model.named_parameters() if p.requires_grad
    }
    scalars: dict[str, Any] = {}
    saved = get_optimizer_state_dict(model, optimizer, options=_options())["state"]
    for name, state in cast(_ParamStates, saved).items():
        for key, value in state.items():
            if torch.is_tensor(value):
                arrays[f"optimizer/{name}/{key}"] = _array(_whole(value))
            else:
                scalars[f"{name}/{key}"] = value
    arrays["rng/torch"] = torch.get_rng_state().numpy()
    return arrays, scalars


def restore_sharded(
    model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: Checkpoint
) -> None:
    """:func:`restore` into an FSDP2-sharded model: each rank copies its own slice of every
    weight, and the optimiser state goes through torch's distributed state-dict API."""
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = dict(model.named_parameters())
    weights = checkpoint.group("model")
    if weights.keys() != {n for n, p in params.items() if p.requires_grad}:
        raise ResumeError("the checkpoint's weights do not fit this model; delete it to start over")
    with torch.no_grad():
        for name, array in weights.items():
            param = params[name]
            value = torch.from_numpy(array.copy()).to(param.device, param.dtype)
            if isinstance(param, DTensor):
                value = distribute_tensor(
                    value, param.device_mesh, param.placements, src_data_rank=None
                )
            param.copy_(value)
    state: _ParamStates = {}
    for key, array in checkpoint.group("optimizer").items():
        name, item = key.rsplit("/", 1)
        state.setdefault(name, {})[item] = torch.from_numpy(array.copy())
    for key, value in checkpoint.scalars.items():
        name, item = key.rsplit("/", 1)
        state.setdefault(name, {})[item] = value
    groups = get_optimizer_state_dict(model, optimizer, options=_options())["param_groups"]
    states = cast("DictValueType", state)  # (dict is invariant: see _ParamStates)
    set_optimizer_state_dict(
        model, optimizer, {"state": states, "param_groups": groups}, options=_options()
    )
    torch.set_rng_state(torch.from_numpy(checkpoint.arrays["rng/torch"].copy()))
