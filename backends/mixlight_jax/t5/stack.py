"""T5 blocks and the encoder/decoder stack (``block.N.layer.M``, ``final_layer_norm``)."""

from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
from flax import nnx

from .attention import T5Attention, T5LayerCrossAttention, T5LayerSelfAttention
from .config import T5Config
from .dropout import dropout, fold
from .layers import T5LayerFF, T5LayerNorm


class LayerCache(NamedTuple):
    """Decoder block cache; every array ``[batch, num_heads, len, d_kv]``.

    ``self_*`` have ``len = max_length`` and are filled step by step; ``cross_*`` have
    ``len = src_len`` and are computed once from the encoder output.
    """

    self_key: jax.Array
    self_value: jax.Array
    cross_key: jax.Array
    cross_value: jax.Array


DecoderCache = tuple[LayerCache, ...]
KeyValue = tuple[jax.Array, jax.Array]  # one attention's keys and values
"""One :class:`LayerCache` per decoder block."""


class T5Block(nnx.Module):
    """``layer`` = [self-attention, (cross-attention if decoder), feed-forward]."""

    def __init__(
        self,
        config: T5Config,
        *,
        has_relative_attention_bias: bool,
        is_decoder: bool,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        self_attention = T5LayerSelfAttention(
            config,
            has_relative_attention_bias=has_relative_attention_bias,
            is_decoder=is_decoder,
            dtype=dtype,
            rngs=rngs,
        )
        cross_attention = (
            [T5LayerCrossAttention(config, dtype=dtype, rngs=rngs)] if is_decoder else []
        )
        self.layer = nnx.List(
            [self_attention, *cross_attention, T5LayerFF(config, dtype=dtype, rngs=rngs)]
        )
        self.is_decoder = is_decoder

    def __call__(
        self,
        hidden_states: jax.Array,
        self_bias: jax.Array,
        *,
        cross_bias: jax.Array | None = None,
        encoder_hidden_states: jax.Array | None = None,
        cache: LayerCache | None = None,
        cache_index: jax.Array | int | None = None,
        dropout_rng: jax.Array | None = None,
    ) -> tuple[jax.Array, LayerCache | None]:
        """``[batch, q_len, d_model]`` -> same shape, and the updated cache (``None`` without one).

        Without ``cache`` keys/values are projected from the inputs (``encoder_hidden_states``
        ``[batch, src_len, d_model]`` for cross-attention); with it, this step's self-attention
        keys/values are written at ``cache_index`` and the cached cross keys/values are used.
        ``dropout_rng`` turns the sub-layers' dropout on (training).
        """
        self_kv: KeyValue | None = None if cache is None else (cache.self_key, cache.self_value)
        hidden_states, self_kv = self.layer[0](
            hidden_states,
            self_bias,
            kv=self_kv,
            cache_index=cache_index,
            dropout_rng=fold(dropout_rng, 0),
        )
        cross_kv: KeyValue | None = None
        if self.is_decoder:
            cross_kv = None if cache is None else (cache.cross_key, cache.cross_value)
            hidden_states, cross_kv = self.layer[1](
                hidden_states,
                cross_bias,
                key_value_states=encoder_hidden_states,
                kv=cross_kv,
                dropout_rng=fold(dropout_rng, 1),
            )
        hidden_states = self.layer[-1](hidden_states, dropout_rng=fold(dropout_rng, 2))
        if cache is None:
            return hidden_states, None
        assert self_kv is not None and cross_kv is not None  # a cache is a decoder's
        (self_key, self_value), (cross_key, cross_value) = self_kv, cross_kv
        return hidden_states, LayerCache(self_key, self_value, cross_key, cross_value)

    def init_cache(self, encoder_hidden_states: jax.Array, max_length: int) -> LayerCache:
        """Cross keys/values from ``encoder_hidden_states`` ``[batch, src_len, d_model]`` and an
        all-zero self-attention cache of ``max_length`` positions with their dtype."""
        cross_attention = cast(T5LayerCrossAttention, self.layer[1]).EncDecAttention
        cross_key, cross_value = cross_attention.project_kv(encoder_hidden_states)
        empty = jnp.zeros((*cross_key.shape[:2], max_length, cross_key.shape[3]), cross_key.dtype)
        return LayerCache(empty, empty, cross_key, cross_value)


class T5Stack(nnx.Module):
    """Encoder or decoder: ``block`` (an ``nnx.List``) then ``final_layer_norm``.

    Token embedding lives on the model (``shared``); the stack takes embeddings.
    """

    def __init__(self, config: T5Config, *, is_decoder: bool, dtype: jnp.dtype, rngs: nnx.Rngs):
        num_layers = config.num_layers
        if is_decoder and config.num_decoder_layers is not None:
            num_layers = config.num_decoder_layers
        self.block = nnx.List(
            [
                T5Block(
                    config,
                    has_relative_attention_bias=i == 0,
                    is_decoder=is_decoder,
                    dtype=dtype,
                    rngs=rngs,
                )
                for i in range(num_layers)
            ]
        )
        self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype)
        self.is_decoder = is_decoder
        self.dropout_rate = config.dropout_rate
        self.gradient_checkpointing = False  # nnx.remat per block (set_gradient_checkpointing)

    def __call__(
        self,
        inputs_embeds: jax.Array,
        mask_bias: jax.Array,
        *,
        cross_bias: jax.Array | None = None,
        encoder_hidden_states: jax.Array | None = None,
        cache: DecoderCache | None = None,
        cache_index: jax.Array | int | None = None,
        dropout_rng: jax.Array | None = None,
    ) -> tuple[jax.Array, DecoderCache | None]:
        """``inputs_embeds`` ``[batch, q_len, d_model]`` -> hidden states (same shape), cache.

        ``mask_bias`` ``[batch|1, 1, q_len, k_len]`` is the additive self-attention mask; the
        relative position bias is computed once by block 0 and added to it for every block.
        With ``cache``, ``k_len`` is the cache length and queries start at ``cache_index``.
        ``dropout_rng`` turns dropout on (training); with ``gradient_checkpointing`` each
        block is recomputed in the backward pass (``nnx.remat``).
        """
        if cache is None and (dropout_rng is not None or self.gradient_checkpointing):
            return self._train(
                inputs_embeds, mask_bias, cross_bias, encoder_hidden_states, dropout_rng
            ), None
        query_length = inputs_embeds.shape[1]
        key_length = query_length if cache is None else cache[0].self_key.shape[2]
        first_attention = self._first_self_attention()
        offset = 0 if cache_index is None else cache_index
        position_bias = first_attention.compute_bias(query_length, key_length, offset)
        self_bias = position_bias + mask_bias
        hidden_states = inputs_embeds
        new_cache: list[LayerCache] = []
        for i, block in enumerate(self.block):
            hidden_states, layer_cache = block(
                hidden_states,
                self_bias,
                cross_bias=cross_bias,
                encoder_hidden_states=encoder_hidden_states,
                cache=None if cache is None else cache[i],
                cache_index=cache_index,
            )
            if layer_cache is not None:
                new_cache.append(layer_cache)
        return self.final_layer_norm(hidden_states), None if cache is None else tuple(new_cache)

    def _first_self_attention(self) -> T5Attention:
        """Block 0's self-attention: the one holding the relative position bias."""
        first_layer = self.block[0].layer[0]
        return cast(T5LayerSelfAttention, first_layer).SelfAttention

    def init_cache(self, encoder_hidden_states: jax.Array, max_length: int) -> DecoderCache:
        """Decoder cache for ``max_length`` steps over ``encoder_hidden_states``
        ``[batch, src_len, d_model]``."""
        return tuple(block.init_cache(encoder_hidden_states, max_length) for block in self.block)

    def _train(
        self,
        inputs_embeds: jax.Array,
        mask_bias: jax.Array,
        cross_bias: jax.Array | None,
        encoder_hidden_states: jax.Array | None,
        dropout_rng: jax.Array | None,
    ) -> jax.Array:
        """The uncached forward with dropout and/or per-block rematerialisation."""
        length = inputs_embeds.shape[1]
        position_bias = self._first_self_attention().compute_bias(length, length)
        self_bias = position_bias + mask_bias
        hidden_states = dropout(inputs_embeds, self.dropout_rate, fold(dropout_rng, 0))
        run = nnx.remat(_run_block) if self.gradient_checkpointing else _run_block
        for i, block in enumerate(self.block):
            hidden_states = run(
                block,
                hidden_states,
                self_bias,
                cross_bias,
                encoder_hidden_states,
                fold(dropout_rng, i + 1),
            )
        hidden_states = self.final_layer_norm(hidden_states)
        return dropout(hidden_states, self.dropout_rate, fold(dropout_rng, len(self.block) + 1))


def _run_block(
    block: T5Block,
    hidden_states: jax.Array,
    self_bias: jax.Array,
    cross_bias: jax.Array | None,
    encoder_hidden_states: jax.Array | None,
    dropout_rng: jax.Array | None,
) -> jax.Array:
    """One block's output (positional arguments, as ``nnx.remat`` takes them)."""
    hidden_states, _ = block(
        hidden_states,
        self_bias,
        cross_bias=cross_bias,
        encoder_hidden_states=encoder_hidden_states,
        dropout_rng=dropout_rng,
    )
    return hidden_states
