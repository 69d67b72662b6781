"""The primitive table for ``torch.Tensor``."""

import torch

from mixlight.extend import Primitives


def top_k_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """``[..., n] -> [..., k]``: indices of the k largest entries, ties to the lower index
    (as numpy's stable sort and ``lax.top_k``). ``torch.topk`` does not promise an order
    among equal values (on CPU it picks expert 2 of 4 zeros first), so this sorts stably."""
    return x.sort(dim=-1, descending=True, stable=True).indices[..., :k]


def _top_k_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.zeros_like(x).scatter(-1, top_k_indices(x, k), 1.0)


def _to_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


TORCH_PRIMITIVES = Primitives(
    name="torch",
    softmax=lambda x: torch.softmax(x, dim=-1),
    logsumexp=lambda x: torch.logsumexp(x, dim=-1),
    top_k_mask=_top_k_mask,
    to_float32=_to_float32,
    cast_like=lambda x, ref: x.to(ref.dtype),
)
