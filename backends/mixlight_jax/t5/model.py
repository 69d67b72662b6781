"""T5 models: ``shared`` embedding, ``encoder``, ``decoder`` and ``lm_head`` as in HF."""

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from .config import T5Config
from .layers import bias_free_linear
from .masks import causal_mask, mask_to_bias, padding_mask
from .stack import DecoderCache, T5Stack


def _padding_bias(attention_mask: jax.Array | None) -> jax.Array:
    """``[batch, len]`` 1/0 mask (``None``: attend everywhere) -> bias ``[batch|1, 1, 1, len]``."""
    if attention_mask is None:
        return jnp.zeros((1, 1, 1, 1), jnp.float32)
    return mask_to_bias(padding_mask(attention_mask))


@contextlib.contextmanager
def _own_masks(model: nnx.Module, **masks: jax.Array | None) -> Iterator[None]:
    """The model's own padding masks for its sequence-routed sites (as the torch backend's
    hooks take them from the call), so a call needs no ``sequence_masks`` block around it."""
    from mixlight_jax.model import is_injected, sequence_masks, state_of

    routed = is_injected(model) and any(
        config.routing == "sequence" for config in state_of(model).configs.values()
    )
    if not routed:
        yield
        return
    with sequence_masks(model, **masks):
        yield


class _T5Encoding(nnx.Module):
    """``shared`` token embedding and ``encoder`` stack, common to both models."""

    name_or_path: str | None = None  # as HF's; ``from_pretrained`` sets the checkpoint path

    def __init__(self, config: T5Config, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.shared = nnx.Embed(config.vocab_size, config.d_model, param_dtype=dtype, rngs=rngs)
        self.encoder = T5Stack(config, is_decoder=False, dtype=dtype, rngs=rngs)

    def encode(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        """``input_ids`` ``[batch, src_len]`` (``attention_mask`` same shape, 1 = token) ->
        encoder output ``[batch, src_len, d_model]``. ``dropout_rng``: train-mode dropout."""
        with _own_masks(self, attention_mask=attention_mask):
            hidden_states, _ = self.encoder(
                self.shared(input_ids), _padding_bias(attention_mask), dropout_rng=dropout_rng
            )
        return hidden_states


class T5EncoderModel(_T5Encoding):
    """Encoder only (HF ``T5EncoderModel``): ``shared`` and ``encoder``."""

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Same as :meth:`encode` (HF's ``last_hidden_state``)."""
        return self.encode(input_ids, attention_mask)


class T5ForConditionalGeneration(_T5Encoding):
    """Encoder-decoder with LM head (HF ``T5ForConditionalGeneration``).

    With ``config.tie_word_embeddings`` the logits reuse ``shared`` (no ``lm_head``); with
    ``config.scale_decoder_outputs`` decoder outputs are multiplied by ``d_model ** -0.5`` first.
    """

    def __init__(self, config: T5Config, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        super().__init__(config, dtype=dtype, rngs=rngs)
        self.decoder = T5Stack(config, is_decoder=True, dtype=dtype, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = bias_free_linear(
                config.d_model, config.vocab_size, dtype=dtype, rngs=rngs
            )

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        decoder_input_ids: jax.Array | None = None,
        decoder_attention_mask: jax.Array | None = None,
        *,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        """Teacher-forced logits ``[batch, tgt_len, vocab]``.

        ``input_ids``/``attention_mask`` ``[batch, src_len]``; ``decoder_input_ids``/
        ``decoder_attention_mask`` ``[batch, tgt_len]`` (already shifted right, as HF:
        ``t5.shift_right(labels, model.config)``; unshifted labels let each position see
        its own target). ``dropout_rng`` (a PRNG key) turns on dropout at each module's
        ``dropout_rate``, as HF's ``model.train()`` does; without it the call is deterministic.
        """
        if decoder_input_ids is None:
            raise ValueError("decoder_input_ids is required")
        if dropout_rng is None:
            encoder_hidden_states = self.encode(input_ids, attention_mask)
            return self.decode(
                decoder_input_ids, encoder_hidden_states, attention_mask, decoder_attention_mask
            )
        encoder_hidden_states = self.encode(
            input_ids, attention_mask, dropout_rng=jax.random.fold_in(dropout_rng, 0)
        )
        return self.decode(
            decoder_input_ids,
            encoder_hidden_states,
            attention_mask,
            decoder_attention_mask,
            dropout_rng=jax.random.fold_in(dropout_rng, 1),
        )

    def decode(
        self,
        decoder_input_ids: jax.Array,
        encoder_hidden_states: jax.Array,
        attention_mask: jax.Array | None = None,
        decoder_attention_mask: jax.Array | None = None,
        *,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        """Causal decoder over ``[batch, tgt_len]`` ids and ``[batch, src_len, d_model]`` encoder
        states (``attention_mask`` ``[batch, src_len]``) -> logits ``[batch, tgt_len, vocab]``.
        ``dropout_rng``: train-mode dropout."""
        target_length = decoder_input_ids.shape[1]
        allowed = causal_mask(target_length, target_length)
        if decoder_attention_mask is not None:
            allowed = allowed & padding_mask(decoder_attention_mask)
        with _own_masks(
            self, attention_mask=attention_mask, decoder_attention_mask=decoder_attention_mask
        ):
            hidden_states, _ = self.decoder(
                self.shared(decoder_input_ids),
                mask_to_bias(allowed),
                cross_bias=_padding_bias(attention_mask),
                encoder_hidden_states=encoder_hidden_states,
                dropout_rng=dropout_rng,
            )
        return self.logits(hidden_states)

    def init_cache(self, encoder_hidden_states: jax.Array, max_length: int) -> DecoderCache:
        """Cache for :meth:`decode_step`: cross keys/values of ``[batch, src_len, d_model]`` encoder
        states (computed once) and empty self-attention keys/values for ``max_length`` steps.

        Refuses (``ValueError``) a mixlight adapter that routes decoder-side sites by sequence:
        a cached step would pool their router input over the new token alone."""
        from mixlight._cache_safety import refuse_cached_sequence_routing
        from mixlight_jax.model import is_injected, state_of

        if is_injected(self):
            refuse_cached_sequence_routing(
                state_of(self).specs,
                "T5ForConditionalGeneration.init_cache",
                "run the model on the whole prefix at every step",
            )
        return self.decoder.init_cache(encoder_hidden_states, max_length)

    def decode_step(
        self,
        decoder_token_ids: jax.Array,
        cache: DecoderCache,
        cache_index: jax.Array | int,
        attention_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, DecoderCache]:
        """One cached decoder step at position ``cache_index``.

        ``decoder_token_ids`` ``[batch]``, ``attention_mask`` ``[batch, src_len]`` (encoder
        padding) -> logits ``[batch, vocab]`` and the cache with this step's keys/values written.
        """
        max_length = cache[0].self_key.shape[2]
        hidden_states, new_cache = self.decoder(
            self.shared(decoder_token_ids[:, None]),
            mask_to_bias(causal_mask(1, max_length, cache_index)),
            cross_bias=_padding_bias(attention_mask),
            cache=cache,
            cache_index=cache_index,
        )
        assert new_cache is not None  # a call with a cache returns the updated one
        return self.logits(hidden_states)[:, 0], new_cache

    def logits(self, hidden_states: jax.Array) -> jax.Array:
        """Decoder output ``[batch, tgt_len, d_model]`` -> logits ``[batch, tgt_len, vocab]``."""
        if self.config.scale_decoder_outputs:
            hidden_states = hidden_states * (self.config.d_model**-0.5)
        if self.config.tie_word_embeddings:
            return self.shared.attend(hidden_states)
        return self.lm_head(hidden_states)
