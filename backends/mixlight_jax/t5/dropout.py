"""Dropout as HF's T5 places it, driven by an explicit PRNG key.

Every dropout of the T5 (embeddings, attention weights, each sub-layer's output before the
residual add, the feed-forward's hidden activation, the stack's final output) is applied only
when its module is called with a ``dropout_rng`` key (training); without one the model is
deterministic, as HF's is in ``eval()`` mode. The rate is each module's ``dropout_rate``,
read from ``config.json``'s ``dropout_rate`` (:class:`~mixlight_jax.t5.T5Config`) and
changed for a whole model with :func:`set_dropout`. Sub-keys are ``fold_in`` of the caller's
key with a fixed index per site, so the same key gives the same masks on any device layout.
"""

import jax
import jax.numpy as jnp
from flax import nnx


def fold(rng: jax.Array | None, index: int) -> jax.Array | None:
    """The sub-key ``index`` of ``rng`` (``None`` stays ``None``: no dropout)."""
    return None if rng is None else jax.random.fold_in(rng, index)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Zero each entry of ``x`` with probability ``rate`` and scale the rest by
    ``1 / (1 - rate)`` (as ``torch.nn.functional.dropout``); ``x`` itself without a key."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))


def set_dropout(model: nnx.Module, rate: float) -> nnx.Module:
    """Every T5 dropout of ``model`` at ``rate`` (overriding the checkpoint's
    ``dropout_rate``); returns ``model``."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"set_dropout: rate must be in [0, 1), got {rate}")
    for _, module in nnx.iter_modules(model):
        if hasattr(module, "dropout_rate"):
            module.dropout_rate = float(rate)
    return model


def set_gradient_checkpointing(model: nnx.Module, enabled: bool = True) -> nnx.Module:
    """Recompute each T5 block's activations in the backward pass (``nnx.remat`` per block)
    instead of keeping them: activation memory of one block instead of all. Returns
    ``model``."""
    for _, module in nnx.iter_modules(model):
        if hasattr(module, "gradient_checkpointing"):
            module.gradient_checkpointing = bool(enabled)
    return model
