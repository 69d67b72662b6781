"""Boolean attention masks and their additive float32 form."""

import jax
import jax.numpy as jnp


def padding_mask(attention_mask: jax.Array) -> jax.Array:
    """``[batch, key_len]`` (1 = attend, 0 = padding) -> bool ``[batch, 1, 1, key_len]``."""
    return (attention_mask != 0)[:, None, None, :]


def causal_mask(query_length: int, key_length: int, offset: jax.Array | int = 0) -> jax.Array:
    """Bool ``[1, 1, query_length, key_length]``: query ``offset + i`` sees keys up to it."""
    query_position = jnp.arange(query_length)[:, None] + offset
    return (jnp.arange(key_length)[None, :] <= query_position)[None, None]


def mask_to_bias(allowed: jax.Array) -> jax.Array:
    """Bool mask (any shape) -> float32 bias: 0 where allowed, float32 min elsewhere."""
    return jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
