"""Adapter parameters as their own NNX variable type, so filters can pick them out.

Every named adapter's parameters are :class:`AdapterParam`, at ``adapters.<name>.<short
name>`` inside their adapter layer. ``nnx.state(model, AdapterParam)`` selects them all;
:func:`mixlight_jax.trainable` gives the filter of one adapter,
``nnx.All(AdapterParam, AdapterNamed(name))``, for ``nnx.Optimizer(model, tx, wrt=...)``
and ``nnx.DiffState(0, ...)`` (with one adapter, ``AdapterParam`` itself selects the same).
Each carries the logical axis names of its
:class:`mixlight.extend.ParamSpec` (``expert``, ``embed``, ``rank``, ``mlp``) as ``out_sharding``
metadata, resolved to mesh axes the usual Flax way::

    with nnx.logical_axis_rules([("expert", "model"), ("embed", None), ...]):
        shardings = nnx.get_named_sharding(nnx.state(model, AdapterParam), mesh)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx


class AdapterParam(nnx.Param):
    """A trainable adapter parameter (router kernel, expert vectors, LoRA factors), float32."""


@dataclasses.dataclass(frozen=True)
class AdapterNamed:
    """NNX filter: the variables of adapter ``name`` (path ``..., "adapters", name, short``).
    Not ``nnx.PathContains(name)``, which also matches an adapter layer whose module path
    holds ``name`` (an adapter named ``"v"`` on T5's ``...SelfAttention.v``)."""

    name: str

    def __call__(self, path: tuple[Any, ...], value: Any) -> bool:
        return tuple(path[-3:-1]) == ("adapters", self.name)


def adapter_param(value: np.ndarray, axes: tuple[str, ...]) -> AdapterParam:
    """Wrap a float32 array; ``axes`` (one logical name per dimension, or empty) become its
    sharding metadata. Sharding is not applied at creation, so no mesh is needed."""
    return AdapterParam(jnp.asarray(value, jnp.float32), **sharding_metadata(axes))


def sharding_metadata(axes: tuple[str, ...]) -> dict[str, Any]:
    """The variable metadata naming ``axes`` (none when empty), not applied at creation."""
    return {"out_sharding": tuple(axes), "eager_sharding": False} if axes else {}
