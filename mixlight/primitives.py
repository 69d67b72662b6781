"""The few array primitives einops lacks, one table per backend.

The core math calls ``primitives_for(array)`` and never imports a framework; each backend
hands its table to the registry (see :mod:`mixlight._backend_registry`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

Array = Any


@attrs.frozen
class Primitives:
    """Array operations over the last axis, for one array type.

    softmax(x): ``[..., n] -> [..., n]``.
    logsumexp(x): ``[..., n] -> [...]``.
    top_k_mask(x, k): ``[..., n] -> [..., n]``, 1 at the k largest entries, else 0, x's dtype.
    to_float32(x): float32 (float64 stays float64, so float64 checks keep their precision).
    cast_like(x, ref): x in ref's dtype.
    """

    name: str
    softmax: Callable[[Array], Array]
    logsumexp: Callable[[Array], Array]
    top_k_mask: Callable[[Array, int], Array]
    to_float32: Callable[[Array], Array]
    cast_like: Callable[[Array, Array], Array]


def _np_softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    out: np.ndarray = z / z.sum(axis=-1, keepdims=True)
    return out


def _np_logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    out: np.ndarray = (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[..., 0]
    return out


def _np_top_k_mask(x: np.ndarray, k: int) -> np.ndarray:
    # A stable descending sort: ties go to the lower expert index, as torch.topk and lax.top_k do.
    order = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    mask = np.zeros_like(x)
    np.put_along_axis(mask, order, 1, axis=-1)
    return mask


NUMPY_PRIMITIVES = Primitives(
    name="numpy",
    softmax=_np_softmax,
    logsumexp=_np_logsumexp,
    top_k_mask=_np_top_k_mask,
    to_float32=lambda x: np.asarray(x, np.promote_types(x.dtype, np.float32)),
    cast_like=lambda x, ref: np.asarray(x, ref.dtype),
)
