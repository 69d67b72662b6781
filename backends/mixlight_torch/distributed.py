"""Training an injected model with DDP or FSDP2, and saving its adapter from every rank.

The adapter is tiny, so the base model is what needs sharding. Two layouts work unchanged on
an injected model (see ``docs/scaling.md``):

* **DDP** — ``DistributedDataParallel(model)``. Frozen parameters are ignored by DDP; only
  the adapter's gradients are all-reduced.
* **FSDP2** — :func:`shard_model` applies ``torch.distributed.fsdp.fully_shard`` to every
  transformer block, then to the root. A unit mixes frozen base weights and trainable adapter
  parameters; FSDP2 handles that (only parameters with gradients are reduce-scattered).
  Parameters become ``DTensor`` shards; during forward FSDP2 swaps in the full tensors, so
  :class:`~mixlight_torch.layers.AdapterLayer` and the fused ops see plain tensors.

``mixlight.load_adapter``, ``aux_losses`` and ``routing_stats`` work on a wrapped or sharded
model (each rank loads its own slice of every ``DTensor``; call it on every rank).
``mixlight.save_adapter`` cannot gather ``DTensor`` shards from one rank; call
:func:`save_adapter_distributed` on every rank instead: it gathers the full adapter and
writes it once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from mixlight.adapter_file import write_adapter
from mixlight_torch import model as _model

__all__ = [
    "save_adapter_distributed",
    "shard_batch",
    "shard_model",
]

Batch = TypeVar("Batch", torch.Tensor, Mapping[str, torch.Tensor])

# Module paths of the repeated transformer blocks of common HF models (T5, BERT, GPT-2, Llama).
BLOCK_PATTERN = r"(?:.*\.)?(?:block|layer|layers|h)\.\d+"


def shard_batch(batch: Batch, rank: int, world_size: int) -> Batch:
    """This rank's contiguous slice of a global batch (a tensor or a dict of tensors, split
    along dim 0). Raises ``ValueError`` when ``world_size`` does not divide the batch size,
    so that every rank's mean loss averages to the global batch's."""
    tensors = batch.values() if isinstance(batch, Mapping) else [batch]
    sizes = {int(t.shape[0]) for t in tensors}
    if len(sizes) != 1:
        raise ValueError(f"shard_batch: tensors disagree on the batch size: {sorted(sizes)}")
    (size,) = sizes
    if not 0 <= rank < world_size or size % world_size:
        raise ValueError(
            f"shard_batch: a global batch of {size} cannot be split evenly over {world_size} "
            f"ranks (rank {rank}); use a global batch size divisible by the world size"
        )
    per = size // world_size

    def part(t: torch.Tensor) -> torch.Tensor:
        return t[rank * per : (rank + 1) * per]

    if isinstance(batch, Mapping):
        return {k: part(v) for k, v in batch.items()}  # type: ignore[return-value]
    return part(batch)


def shard_model(model: nn.Module, *, block_pattern: str = BLOCK_PATTERN, **fsdp: Any) -> nn.Module:
    """FSDP2 on an injected model: ``fully_shard`` each module whose path matches
    ``block_pattern`` (outermost matches only), then the root. ``fsdp`` goes to every
    ``fully_shard`` call (``mesh=``, ``mp_policy=``, ``reshard_after_forward=``, ...).
    Returns ``model``, sharded in place; its adapter parameters become ``DTensor`` shards."""
    from torch.distributed.fsdp import fully_shard

    _model.state_of(model)
    regex = re.compile(block_pattern)
    blocks: list[str] = []
    for path, _ in model.named_modules():
        if regex.fullmatch(path) and not any(path.startswith(b + ".") for b in blocks):
            blocks.append(path)
    if not blocks:
        raise ValueError(f"shard_model: no module path matches {block_pattern!r}")
    for path in blocks:
        fully_shard(model.get_submodule(path), **fsdp)
    fully_shard(model, **fsdp)
    return model


def _full(param: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a parameter (a collective for a ``DTensor`` shard)."""
    from torch.distributed.tensor import DTensor

    tensor = param.detach()
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _agree(value: Any, what: str, group: Any) -> None:
    """Raise the same ``ValueError`` on every rank unless all ranks hold an equal ``value``."""
    values: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(values, value, group=group)
    odd = [rank for rank, v in enumerate(values) if v != values[0]]
    if odd:
        first, other = values[0], values[odd[0]]
        if isinstance(first, dict) and isinstance(other, dict):  # show the differing keys only
            keys = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            first, other = ({k: d.get(k) for k in keys} for d in (first, other))
        raise ValueError(
            f"save_adapter_distributed: ranks {odd} disagree with rank 0 on the {what}: rank 0 "
            f"has {first!r}, rank {odd[0]} has {other!r}; inject the same adapter config into "
            "the same base model on every rank"
        )


def save_adapter_distributed(
    model: nn.Module, directory: str | os.PathLike, *, group: Any = None
) -> Path:
    """``mixlight.save_adapter`` for a DDP- or FSDP2-wrapped model. Call it on every rank.

    Checks that all ranks carry the same adapter config and adapted-module shapes (a
    ``ValueError`` on every rank otherwise), gathers each full adapter tensor on every rank
    (``DTensor.full_tensor()``), writes the directory atomically on rank 0 with
    :func:`mixlight.extend.write_adapter`, and returns on every rank once rank 0 has written it (the
    broadcast of rank 0's outcome is the barrier). A write error is raised on every rank.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("save_adapter_distributed needs torch.distributed to be initialised")
    inner = _model.unwrap(model)
    state = _model.state_of(inner)
    _agree(state.config.to_dict(), "adapter config", group)
    _agree({s.path: s.shape_entry() for s in state.specs}, "adapted modules", group)
    arrays = {
        name: _full(p).to("cpu", torch.float32).numpy().copy()
        for name, p in _model.adapter_parameters(inner)
    }
    error: Exception | None = None
    if dist.get_rank(group) == 0:
        try:
            write_adapter(directory, state.config, state.specs, arrays)
        except Exception as err:  # reported to every rank below
            error = err
    outcome = [None if error is None else f"{type(error).__name__}: {error}"]
    dist.broadcast_object_list(outcome, group=group, group_src=0)
    if outcome[0] is not None:
        raise RuntimeError(
            f"save_adapter_distributed: rank 0 failed to write: {outcome[0]}"
        ) from error
    return Path(directory)
