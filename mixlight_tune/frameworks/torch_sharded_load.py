"""An FSDP2 run's base read once: rank 0 loads the checkpoint (on the CPU), every other rank
builds the model on the meta device (no weights in memory), all shard it with
``fully_shard``, and rank 0's full weights (the base and the adapters it initialised) are
broadcast into every rank's shards with ``set_model_state_dict(broadcast_from_rank0=True)``.
A process's memory then holds its shard of the base; rank 0 also the CPU copy it read, until
the broadcast ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist
import transformers
from torch import nn

from mixlight_torch.model import adapter_layers

if TYPE_CHECKING:
    from torch.distributed.checkpoint.state_dict import ValueType


def empty_model(path: Path, dtype: torch.dtype | None) -> transformers.PreTrainedModel:
    """The checkpoint's architecture on the meta device: shapes, no weights, its LM head
    tied or not as rank 0's loaded model (:func:`.torch_meta.meta_model`)."""
    from mixlight_tune.frameworks.torch_meta import meta_model

    return meta_model(path, dtype)


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer by its module path: the names the sharded load
    matches (``state_dict()``'s hooks rename an adapted module's ``base.weight``)."""
    out: dict[str, torch.Tensor] = dict(model.named_parameters())
    for path, module in model.named_modules():
        for name, buffer in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                out[f"{path}.{name}" if path else name] = buffer
    return out


def fill_shards(model: nn.Module, full: dict[str, torch.Tensor], device: torch.device) -> None:
    """After ``fully_shard``: give meta ranks real (empty) shards, then fill every rank's
    shards from ``full`` (rank 0's :func:`full_weights`; ``{}`` elsewhere) and copy the buffers no
    state dict holds (a rotary embedding's ``inv_freq``) from rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if dist.get_rank() != 0:
        for layer in adapter_layers(model).values():  # rank 0's values come instead
            for name in list(layer.adapters):
                layer.mark_loaded(name)
        model.to_empty(device=device)
    # not strict: a tied weight (T5's embeddings) is sent once, under its first name
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    # torch types the state dict as a dict of its whole value union, which a dict of
    # tensors is not to mypy (dict is invariant)
    state = cast("dict[str, ValueType]", full)
    missing, unexpected = set_model_state_dict(model, state, options=options)
    aliases = set(dict(model.named_parameters(remove_duplicate=False))) - set(
        dict(model.named_parameters())
    )
    if unexpected or set(missing) - aliases:
        raise RuntimeError(
            f"the sharded load did not match the model: missing {sorted(set(missing) - aliases)}"
            f", unexpected {sorted(unexpected)}"
        )
    saved = set(model.state_dict())
    for name, buffer in model.named_buffers():
        if name not in saved:
            dist.broadcast(buffer.data, src=0)
