"""T5 layer norm and feed-forward blocks, attribute names as in HF's ``modeling_t5``."""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from .activations import Activation
from .config import T5Config
from .dropout import dropout, fold


class T5LayerNorm(nnx.Module):
    """RMS norm without mean subtraction or bias, statistics in float32 (HF ``T5LayerNorm``)."""

    def __init__(self, hidden_size: int, eps: float, *, dtype: jnp.dtype = jnp.float32):
        self.weight = nnx.Param(jnp.ones((hidden_size,), dtype))
        self.variance_epsilon = eps

    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        """``[..., d_model]`` -> ``[..., d_model]``."""
        variance = jnp.mean(jnp.square(hidden_states.astype(jnp.float32)), axis=-1, keepdims=True)
        hidden_states = hidden_states * jax.lax.rsqrt(variance + self.variance_epsilon)
        weight = self.weight[...]
        if weight.dtype in (jnp.float16, jnp.bfloat16):
            hidden_states = hidden_states.astype(weight.dtype)
        return weight * hidden_states


def bias_free_linear(
    in_features: int, out_features: int, *, dtype: jnp.dtype, rngs: nnx.Rngs
) -> nnx.Linear:
    """``nnx.Linear`` without bias: HF's ``nn.Linear(bias=False)`` with kernel ``[in, out]``."""
    return nnx.Linear(in_features, out_features, use_bias=False, param_dtype=dtype, rngs=rngs)


class T5DenseActDense(nnx.Module):
    """v1.0 feed-forward: ``wo(act(wi(x)))``."""

    def __init__(self, config: T5Config, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        linear = functools.partial(bias_free_linear, dtype=dtype, rngs=rngs)
        self.wi = linear(config.d_model, config.d_ff)
        self.wo = linear(config.d_ff, config.d_model)
        self.act = Activation(config.dense_act_fn)
        self.dropout_rate = config.dropout_rate

    def __call__(
        self, hidden_states: jax.Array, *, dropout_rng: jax.Array | None = None
    ) -> jax.Array:
        """``[batch, seq, d_model]`` -> ``[batch, seq, d_model]``."""
        hidden = self.act(self.wi(hidden_states))
        return self.wo(dropout(hidden, self.dropout_rate, dropout_rng))


class T5DenseGatedActDense(nnx.Module):
    """v1.1 gated feed-forward: ``wo(act(wi_0(x)) * wi_1(x))``."""

    def __init__(self, config: T5Config, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        linear = functools.partial(bias_free_linear, dtype=dtype, rngs=rngs)
        self.wi_0 = linear(config.d_model, config.d_ff)
        self.wi_1 = linear(config.d_model, config.d_ff)
        self.wo = linear(config.d_ff, config.d_model)
        self.act = Activation(config.dense_act_fn)
        self.dropout_rate = config.dropout_rate

    def __call__(
        self, hidden_states: jax.Array, *, dropout_rng: jax.Array | None = None
    ) -> jax.Array:
        """``[batch, seq, d_model]`` -> ``[batch, seq, d_model]``."""
        hidden = self.act(self.wi_0(hidden_states)) * self.wi_1(hidden_states)
        return self.wo(dropout(hidden, self.dropout_rate, dropout_rng))


class T5LayerFF(nnx.Module):
    """Pre-norm residual feed-forward sub-layer (``layer_norm``, ``DenseReluDense``)."""

    def __init__(self, config: T5Config, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        dense = T5DenseGatedActDense if config.is_gated_act else T5DenseActDense
        self.DenseReluDense = dense(config, dtype=dtype, rngs=rngs)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype)
        self.dropout_rate = config.dropout_rate

    def __call__(
        self, hidden_states: jax.Array, *, dropout_rng: jax.Array | None = None
    ) -> jax.Array:
        """``[batch, seq, d_model]`` -> ``[batch, seq, d_model]``."""
        normed = self.layer_norm(hidden_states)
        if dropout_rng is None:  # the inference call, as it always was
            return hidden_states + self.DenseReluDense(normed)
        forwarded = self.DenseReluDense(normed, dropout_rng=fold(dropout_rng, 0))
        return hidden_states + dropout(forwarded, self.dropout_rate, fold(dropout_rng, 1))
