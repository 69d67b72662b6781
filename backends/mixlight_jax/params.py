"""Adapter parameters as their own NNX variable type, so filters can pick them out.

``nnx.Optimizer(model, optax_tx, wrt=AdapterParam)`` trains only adapters,
``nnx.state(model, AdapterParam)`` selects them, and ``nnx.DiffState(0, AdapterParam)``
differentiates only them. Each carries the logical axis names of its
:class:`mixlight.extend.ParamSpec` (``expert``, ``embed``, ``rank``, ``mlp``) as ``out_sharding``
metadata, resolved to mesh axes the usual Flax way::

    with nnx.logical_axis_rules([("expert", "model"), ("embed", None), ...]):
        shardings = nnx.get_named_sharding(nnx.state(model, AdapterParam), mesh)
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx


class AdapterParam(nnx.Param):
    """A trainable adapter parameter (router kernel, expert vectors, LoRA factors), float32."""


def adapter_param(value: np.ndarray, axes: tuple[str, ...]) -> AdapterParam:
    """Wrap a float32 array; ``axes`` (one logical name per dimension, or empty) become its
    sharding metadata. Sharding is not applied at creation, so no mesh is needed."""
    return AdapterParam(jnp.asarray(value, jnp.float32), **sharding_metadata(axes))


def sharding_metadata(axes: tuple[str, ...]) -> dict[str, Any]:
    """The variable metadata naming ``axes`` (none when empty), not applied at creation."""
    return {"out_sharding": tuple(axes), "eager_sharding": False} if axes else {}
