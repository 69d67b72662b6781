"""T5 multi-head attention with relative position bias, and its two residual sub-layers.

Keys and values are always the outputs of calling the ``k``/``v`` submodules, so a cache
holds whatever a replacement of those submodules returns.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from .config import T5Config
from .dropout import dropout, fold
from .layers import T5LayerNorm, bias_free_linear

KeyValue = tuple[jax.Array, jax.Array]
"""``(key, value)``, each ``[batch, num_heads, key_len, d_kv]``."""


def relative_position_bucket(
    relative_position: jax.Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """Map ``memory_pos - query_pos`` (int array, any shape) to buckets in ``[0, num_buckets)``.

    Half the buckets are exact small distances, the rest log-spaced up to ``max_distance``;
    causal (``bidirectional=False``) buckets only distinguish past positions. As HF/Mesh TF.
    """
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(relative_position.dtype) * num_buckets
        relative_position = jnp.abs(relative_position)
    else:
        relative_position = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    scaled = jnp.log(jnp.maximum(relative_position, 1).astype(jnp.float32) / max_exact)
    scaled = scaled / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    if_large = jnp.minimum(max_exact + scaled.astype(relative_position.dtype), num_buckets - 1)
    return buckets + jnp.where(is_small, relative_position, if_large)


class T5Attention(nnx.Module):
    """Unscaled dot-product attention with ``q``, ``k``, ``v``, ``o`` and, in block 0,
    ``relative_attention_bias`` (an ``nnx.Embed`` ``[num_buckets, num_heads]``)."""

    def __init__(
        self,
        config: T5Config,
        *,
        has_relative_attention_bias: bool,
        is_decoder: bool,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        inner_dim = config.num_heads * config.d_kv
        self.q = bias_free_linear(config.d_model, inner_dim, dtype=dtype, rngs=rngs)
        self.k = bias_free_linear(config.d_model, inner_dim, dtype=dtype, rngs=rngs)
        self.v = bias_free_linear(config.d_model, inner_dim, dtype=dtype, rngs=rngs)
        self.o = bias_free_linear(inner_dim, config.d_model, dtype=dtype, rngs=rngs)
        if has_relative_attention_bias:
            self.relative_attention_bias = nnx.Embed(
                config.relative_attention_num_buckets,
                config.num_heads,
                param_dtype=dtype,
                rngs=rngs,
            )
        self.n_heads = config.num_heads
        self.key_value_proj_dim = config.d_kv
        self.is_decoder = is_decoder
        self.relative_attention_num_buckets = config.relative_attention_num_buckets
        self.relative_attention_max_distance = config.relative_attention_max_distance
        self.dropout_rate = config.dropout_rate

    def compute_bias(
        self, query_length: int, key_length: int, offset: jax.Array | int = 0
    ) -> jax.Array:
        """Relative position bias ``[1, num_heads, query_length, key_length]``.

        Query positions are ``offset + arange(query_length)`` (``offset`` may be traced).
        Only valid on the attention that owns ``relative_attention_bias``.
        """
        context_position = jnp.arange(query_length)[:, None] + offset
        memory_position = jnp.arange(key_length)[None, :]
        buckets = relative_position_bucket(
            memory_position - context_position,
            bidirectional=not self.is_decoder,
            num_buckets=self.relative_attention_num_buckets,
            max_distance=self.relative_attention_max_distance,
        )
        values = self.relative_attention_bias(buckets)  # [query, key, heads]
        return jnp.transpose(values, (2, 0, 1))[None]

    def project_kv(self, states: jax.Array) -> KeyValue:
        """``[batch, seq, d_model]`` -> keys and values ``[batch, num_heads, seq, d_kv]``."""
        return self._split_heads(self.k(states)), self._split_heads(self.v(states))

    def __call__(
        self,
        hidden_states: jax.Array,
        bias: jax.Array,
        *,
        key_value_states: jax.Array | None = None,
        kv: KeyValue | None = None,
        cache_index: jax.Array | int | None = None,
        dropout_rng: jax.Array | None = None,
    ) -> tuple[jax.Array, KeyValue]:
        """Attend from ``hidden_states`` ``[batch, q_len, d_model]``; returns the output (same
        shape) and the keys/values used. With ``dropout_rng`` the attention weights drop out
        (HF's ``T5Attention`` in training mode).

        ``bias`` ``[batch|1, num_heads|1, q_len, k_len]`` is added to the raw scores (position bias
        plus mask). Keys/values come from, in order of precedence:

        - ``kv`` with ``cache_index``: a self-attention cache ``[batch, heads, max_len, d_kv]``;
          this step's projections are written at ``cache_index`` and the whole cache is attended.
        - ``kv`` alone: precomputed keys/values (cross-attention cache), used as they are.
        - otherwise projections of ``key_value_states`` (cross-attention) or ``hidden_states``.
        """
        query = self._split_heads(self.q(hidden_states))
        if kv is None:
            key, value = self.project_kv(
                hidden_states if key_value_states is None else key_value_states
            )
        elif cache_index is not None:
            key, value = (
                jax.lax.dynamic_update_slice_in_dim(
                    cached, new.astype(cached.dtype), cache_index, axis=2
                )
                for cached, new in zip(kv, self.project_kv(hidden_states), strict=True)
            )
        else:
            key, value = kv
        scores = jnp.einsum("bhqd,bhkd->bhqk", query, key) + bias
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(value.dtype)
        weights = dropout(weights, self.dropout_rate, dropout_rng)
        attended = jnp.einsum("bhqk,bhkd->bqhd", weights, value)
        return self.o(attended.reshape(*attended.shape[:2], -1)), (key, value)

    def _split_heads(self, x: jax.Array) -> jax.Array:
        """``[batch, seq, heads * d_kv]`` -> ``[batch, heads, seq, d_kv]``."""
        return x.reshape(*x.shape[:2], -1, self.key_value_proj_dim).transpose(0, 2, 1, 3)


class T5LayerSelfAttention(nnx.Module):
    """Pre-norm residual self-attention (``layer_norm``, ``SelfAttention``)."""

    def __init__(
        self,
        config: T5Config,
        *,
        has_relative_attention_bias: bool,
        is_decoder: bool,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        self.SelfAttention = T5Attention(
            config,
            has_relative_attention_bias=has_relative_attention_bias,
            is_decoder=is_decoder,
            dtype=dtype,
            rngs=rngs,
        )
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype)
        self.dropout_rate = config.dropout_rate

    def __call__(
        self,
        hidden_states: jax.Array,
        bias: jax.Array,
        *,
        kv: KeyValue | None = None,
        cache_index: jax.Array | int | None = None,
        dropout_rng: jax.Array | None = None,
    ) -> tuple[jax.Array, KeyValue]:
        """``[batch, q_len, d_model]`` -> same shape, plus keys/values (see
        :meth:`T5Attention.__call__`)."""
        normed = self.layer_norm(hidden_states)
        if dropout_rng is None:  # the inference call, as it always was
            output, kv = self.SelfAttention(normed, bias, kv=kv, cache_index=cache_index)
            return hidden_states + output, kv
        output, kv = self.SelfAttention(
            normed, bias, kv=kv, cache_index=cache_index, dropout_rng=fold(dropout_rng, 0)
        )
        return hidden_states + dropout(output, self.dropout_rate, fold(dropout_rng, 1)), kv


class T5LayerCrossAttention(nnx.Module):
    """Pre-norm residual encoder-decoder attention (``layer_norm``, ``EncDecAttention``)."""

    def __init__(self, config: T5Config, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.EncDecAttention = T5Attention(
            config, has_relative_attention_bias=False, is_decoder=True, dtype=dtype, rngs=rngs
        )
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype)
        self.dropout_rate = config.dropout_rate

    def __call__(
        self,
        hidden_states: jax.Array,
        bias: jax.Array,
        *,
        key_value_states: jax.Array | None = None,
        kv: KeyValue | None = None,
        dropout_rng: jax.Array | None = None,
    ) -> tuple[jax.Array, KeyValue]:
        """``[batch, q_len, d_model]`` attending to encoder states ``[batch, src_len, d_model]``
        (or their cached keys/values ``kv``) -> same shape, plus keys/values."""
        normed = self.layer_norm(hidden_states)
        if dropout_rng is None:  # the inference call, as it always was
            output, kv = self.EncDecAttention(
                normed, bias, key_value_states=key_value_states, kv=kv
            )
            return hidden_states + output, kv
        output, kv = self.EncDecAttention(
            normed, bias, key_value_states=key_value_states, kv=kv, dropout_rng=fold(dropout_rng, 0)
        )
        return hidden_states + dropout(output, self.dropout_rate, fold(dropout_rng, 1)), kv
