"""The primitive table for ``jax.Array`` (tracers included)."""

import jax
import jax.numpy as jnp

from mixlight.extend import Primitives


def _top_k_mask(x: jax.Array, k: int) -> jax.Array:
    """``[..., n] -> [..., n]``: 1 at the k largest entries (ties to the lower index, as
    ``lax.top_k``), else 0, in x's dtype; no gradient flows through the mask."""
    indices = jax.lax.top_k(jax.lax.stop_gradient(x), k)[1]
    return jax.nn.one_hot(indices, x.shape[-1], dtype=x.dtype).sum(axis=-2)


def _to_float32(x: jax.Array) -> jax.Array:
    """float32 for half precision and integers; float64 (under ``jax_enable_x64``) stays."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


JAX_PRIMITIVES = Primitives(
    name="jax",
    softmax=lambda x: jax.nn.softmax(x, axis=-1),
    logsumexp=lambda x: jax.nn.logsumexp(x, axis=-1),
    top_k_mask=_top_k_mask,
    to_float32=_to_float32,
    cast_like=lambda x, ref: jnp.asarray(x).astype(ref.dtype),
)
