"""The JAX training state as checkpoint arrays (:mod:`mixlight_tune.checkpoint`) and back:
the trainable weights and the ``nnx.Optimizer`` state, each leaf named by its pytree path.

Dropout draws its masks from a key of the seed, the step and the micro-batch, so there is no
RNG state; the adapters' routing traces (``nnx.Intermediate``) are not saved. On a
mesh the leaves are gathered whole (from every process) and put back with each leaf's own
sharding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from mixlight_tune.checkpoint import Checkpoint, ResumeError


def _parts(model: Any, optimizer: Any, wrt: Any) -> dict[str, tuple[Any, Any]]:
    """``prefix -> (state, owner)``."""
    return {
        "model": (nnx.state(model, wrt), model),
        "optimizer": (nnx.state(optimizer), optimizer),
    }


def train_state(
    model: Any, optimizer: Any, wrt: Any, host: Callable[[Any], np.ndarray] = np.asarray
) -> dict[str, np.ndarray]:
    """The trainable weights (``model/<path>``) and optimiser state (``optimizer/<path>``),
    each leaf read whole with ``host``."""
    arrays = {}
    for prefix, (state, _) in _parts(model, optimizer, wrt).items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
            arrays[f"{prefix}/{jax.tree_util.keystr(path)}"] = host(leaf)
    return arrays


def restore(
    model: Any,
    optimizer: Any,
    wrt: Any,
    checkpoint: Checkpoint,
    put: Callable[[Any, Any], Any] | None = None,
) -> None:
    """Put a checkpoint's state back (in place), each leaf with the dtype and sharding of
    the leaf it replaces (``put(value, sharding)`` places it)."""
    for prefix, (state, target) in _parts(model, optimizer, wrt).items():
        saved = checkpoint.group(prefix)
        leaves, tree = jax.tree_util.tree_flatten_with_path(state)
        names = [jax.tree_util.keystr(path) for path, _ in leaves]
        if set(names) != set(saved):
            raise ResumeError(
                f"the checkpoint's {prefix} state does not fit this run; delete it to start over"
            )
        values = []
        for (_, leaf), name in zip(leaves, names, strict=True):
            value = np.asarray(saved[name]).astype(leaf.dtype)
            sharding = getattr(leaf, "sharding", None)
            values.append(
                jax.device_put(value, sharding)
                if put is None or sharding is None
                else put(value, sharding)
            )
        nnx.update(target, jax.tree_util.tree_unflatten(tree, values))
