"""The JAX training state as checkpoint arrays (:mod:`mixlight_tune.checkpoint`) and back:
the trainable weights, the ``nnx.Optimizer`` state and the model's other variables (the
adapters' last-forward caches, which a jitted step takes as inputs: restoring them makes a
resumed step the same program on the same bits), each leaf named by its pytree path.
Training draws no random numbers (the JAX T5 has no dropout), so there is no RNG state."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mixlight_tune.checkpoint import Checkpoint, ResumeError


def _parts(model: Any, optimizer: Any, wrt: Any) -> dict[str, tuple[Any, Any]]:
    """``prefix -> (state, owner)``."""
    return {
        "model": (nnx.state(model, wrt), model),
        "optimizer": (nnx.state(optimizer), optimizer),
        "cache": (nnx.state(model, nnx.Not(nnx.Param)), model),
    }


def train_state(model: Any, optimizer: Any, wrt: Any) -> dict[str, np.ndarray]:
    """The trainable weights (``model/<path>``) and optimiser state (``optimizer/<path>``)."""
    arrays = {}
    for prefix, (state, _) in _parts(model, optimizer, wrt).items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
            arrays[f"{prefix}/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
    return arrays


def restore(model: Any, optimizer: Any, wrt: Any, checkpoint: Checkpoint) -> None:
    """Put a checkpoint's state back (in place). The model must have run one forward pass
    (its caches exist only then)."""
    for prefix, (state, target) in _parts(model, optimizer, wrt).items():
        saved = checkpoint.group(prefix)
        leaves, tree = jax.tree_util.tree_flatten_with_path(state)
        names = [jax.tree_util.keystr(path) for path, _ in leaves]
        if set(names) != set(saved):
            raise ResumeError(
                f"the checkpoint's {prefix} state does not fit this run; delete it to start over"
            )
        nnx.update(
            target, jax.tree_util.tree_unflatten(tree, [jnp.asarray(saved[n]) for n in names])
        )
