"""Greedy decoding with a fixed-size key/value cache, compiled with ``nnx.jit``."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mixlight_jax.model import no_routing_trace

from .model import T5ForConditionalGeneration


def greedy_generate(
    model: T5ForConditionalGeneration,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    max_new_tokens: int = 20,
) -> np.ndarray:
    """Greedy decoding like HF ``generate(do_sample=False, num_beams=1, max_new_tokens=...)``.

    ``input_ids``/``attention_mask`` ``[batch, src_len]`` -> ids ``[batch, 1 + n]``: the decoder
    start token then ``n <= max_new_tokens`` tokens; after its EOS a row is filled with
    ``pad_token_id``, and decoding stops once every row has finished (so ``n`` can be shorter).
    The encoder runs once; cross-attention keys/values are computed once from its output and
    self-attention keys/values are cached per step (both as returned by the ``k``/``v`` submodules).
    The decoder runs in a ``jax.lax.while_loop``, where NNX state cannot change, so an adapted
    model's routing is not recorded (:func:`mixlight_jax.no_routing_trace`): its traces are
    empty afterwards; a forward pass of the generated ids gives the routing statistics.
    """
    input_ids = jnp.asarray(input_ids)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    with no_routing_trace(model):
        tokens, steps = _compiled_greedy_tokens(
            model, input_ids, jnp.asarray(attention_mask), max_new_tokens
        )
    return np.asarray(tokens)[:, : int(steps) + 1]


def _greedy_tokens(
    model: T5ForConditionalGeneration,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    max_new_tokens: int,
) -> tuple[jax.Array, jax.Array]:
    """Ids ``[batch, 1 + max_new_tokens]`` (pad-filled past the last step) and the steps run."""
    config = model.config
    batch = input_ids.shape[0]
    eos = jnp.asarray(config.eos_token_id)
    cache = model.init_cache(model.encode(input_ids, attention_mask), max_new_tokens)
    tokens = jnp.full((batch, max_new_tokens + 1), config.pad_token_id, input_ids.dtype)
    tokens = tokens.at[:, 0].set(config.decoder_start_token_id)
    done = jnp.zeros((batch,), bool)

    def not_finished(carry):
        step, _, _, done = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def decode_one(carry):
        step, tokens, cache, done = carry
        logits, cache = model.decode_step(tokens[:, step], cache, step, attention_mask)
        next_token = jnp.where(
            done, config.pad_token_id, jnp.argmax(logits, axis=-1).astype(tokens.dtype)
        )
        tokens = tokens.at[:, step + 1].set(next_token)
        return step + 1, tokens, cache, done | jnp.isin(next_token, eos)

    steps, tokens, _, _ = jax.lax.while_loop(
        not_finished, decode_one, (jnp.int32(0), tokens, cache, done)
    )
    return tokens, steps


_compiled_greedy_tokens = nnx.jit(_greedy_tokens, static_argnames=("max_new_tokens",))
