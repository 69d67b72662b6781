"""Cached decoding of the NNX T5 with real injected adapters: per-step logits of the cached
``decode_step`` loop equal teacher-forced recomputation (token routing, soft and top-k, MoV
and MoLoRA; sequence routing on the source side), greedy_generate follows them, and sequence
routing on decoder-side sites is refused under the cache."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import mixlight as ml  # noqa: E402
import mixlight.extend as mlx  # noqa: E402
from mixlight_jax import no_routing_trace, sequence_masks, t5  # noqa: E402

TINY = dict(
    vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
    feed_forward_proj="gated-gelu", tie_word_embeddings=False,
)  # fmt: skip
STEPS = 6
INPUT_IDS = np.array([[5, 6, 7, 8, 9, 10], [12, 13, 14, 2, 0, 0]])
MASK = (INPUT_IDS != 0).astype(np.int32)
SOURCE_SIDE = [r"encoder\..*\.(?:k|v)", r".*EncDecAttention\.(?:k|v)", r"encoder\..*\.act"]
CONFIGS = {
    "mov-soft": lambda: ml.MoV(4),
    "mov-top2": lambda: ml.MoV(4, router=ml.TopK(2)),
    "molora-top1-raw": lambda: ml.MoLoRA(4, 2, router=ml.TopK(1, renormalize=False)),
    "mov-sequence-source": lambda: ml.MoV(4, targets=SOURCE_SIDE, routing="sequence"),
}


def _model(config):
    model = t5.T5ForConditionalGeneration(t5.T5Config(**TINY), rngs=nnx.Rngs(0))
    ml.inject(model, config, seed=0)
    backend = mlx.load_backend("jax")
    rng = np.random.default_rng(1)
    arrays = backend.adapter_state(model)[2]
    backend.load_adapter_state(
        model, {k: v + 0.5 * rng.standard_normal(v.shape) for k, v in arrays.items()}
    )
    return model


@nnx.jit
def _cached_logits(model, input_ids, mask):
    """Greedy decoding through ``decode_step``: ``(tokens [batch, 1 + STEPS], logits [batch,
    STEPS, vocab])``, the logits of each cached step."""
    with sequence_masks(model, attention_mask=mask):
        cache = model.init_cache(model.encode(input_ids, mask), STEPS)
    batch = input_ids.shape[0]
    tokens = jnp.zeros((batch, STEPS + 1), jnp.int32)
    logits = jnp.zeros((batch, STEPS, model.config.vocab_size), jnp.float32)

    def one_step(step, carry):  # a loop, not unrolled: one compiled step
        tokens, cache, logits = carry
        step_logits, cache = model.decode_step(tokens[:, step], cache, step, mask)
        tokens = tokens.at[:, step + 1].set(step_logits.argmax(-1).astype(jnp.int32))
        return tokens, cache, logits.at[:, step].set(step_logits)

    with no_routing_trace(model):  # a raw lax loop cannot record routing
        tokens, _, logits = jax.lax.fori_loop(0, STEPS, one_step, (tokens, cache, logits))
    return tokens, logits


@nnx.jit
def _teacher_forced(model, input_ids, mask, decoder_input_ids):
    with sequence_masks(model, attention_mask=mask):
        return model(input_ids, mask, decoder_input_ids)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_step_logits_equal_teacher_forced(name):
    model = _model(CONFIGS[name]())
    ids, mask = jnp.asarray(INPUT_IDS), jnp.asarray(MASK)
    tokens, cached = _cached_logits(model, ids, mask)
    forced = _teacher_forced(model, ids, mask, tokens[:, :STEPS])
    np.testing.assert_allclose(np.asarray(cached), np.asarray(forced), rtol=1e-4, atol=1e-4)
    assert np.abs(np.diff(np.asarray(cached), axis=1)).max() > 1e-2  # the steps differ


def test_greedy_generate_follows_the_cached_steps():
    model = _model(CONFIGS["mov-top2"]())
    tokens, _ = _cached_logits(model, jnp.asarray(INPUT_IDS), jnp.asarray(MASK))
    got = t5.greedy_generate(model, INPUT_IDS, MASK, max_new_tokens=STEPS)
    want = np.asarray(tokens)[:, : got.shape[1]]
    eos = model.config.eos_token_id
    finished = np.cumsum(np.isin(want, eos), 1) > 0  # generate pads after a row's EOS
    finished = np.concatenate([np.zeros_like(finished[:, :1]), finished[:, :-1]], 1)
    np.testing.assert_array_equal(got[~finished], want[~finished])


@pytest.mark.parametrize(
    "make",
    [lambda: ml.MoV(4, routing="sequence"), lambda: ml.MoLoRA(3, 2, routing="sequence")],
    ids=["mov", "molora"],
)
def test_sequence_routing_on_decoder_sites_is_refused_with_a_cache_or_correct(make):
    """Cached steps must equal the model run on each whole prefix, or be refused clearly."""
    model = _model(make())
    ids, mask = jnp.asarray(INPUT_IDS), jnp.asarray(MASK)
    try:
        tokens, cached = _cached_logits(model, ids, mask)
    except ValueError as err:
        assert "sequence routing" in str(err) and "whole prefix" in str(err), err
        return
    for step in range(STEPS):
        prefix = _teacher_forced(model, ids, mask, tokens[:, : step + 1])[:, -1]
        np.testing.assert_allclose(np.asarray(cached[:, step]), np.asarray(prefix), atol=1e-4)
