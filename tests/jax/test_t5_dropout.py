"""The NNX T5's dropout and rematerialisation (``mixlight_jax.t5.dropout``): deterministic
without a key, the checkpoint's ``dropout_rate`` until ``set_dropout`` overrides it, the same
masks for the same key, and ``set_gradient_checkpointing`` changing nothing but memory."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")

import jax.numpy as jnp  # noqa: E402

import mixlight as ml  # noqa: E402
from mixlight_jax import AdapterParam, t5  # noqa: E402

CONFIG = dict(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
CONFIG |= dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.1)


def model():
    m = t5.T5ForConditionalGeneration(t5.T5Config(**CONFIG), rngs=nnx.Rngs(0))
    return ml.inject(m, ml.MoV(3), seed=0)


def batch():
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(2, 64, (2, 7)).astype(np.int32),
        "decoder_input_ids": rng.integers(2, 64, (2, 5)).astype(np.int32),
    }


@nnx.jit
def forward(m, b, key):
    return m(**b) if key is None else m(**b, dropout_rng=key)


def test_dropout_needs_a_key_and_follows_the_rate():
    m, b = model(), batch()
    assert m.encoder.dropout_rate == 0.1  # the checkpoint's config
    plain = forward(m, b, None)
    key = jax.random.key(3)
    dropped = forward(m, b, key)
    assert float(jnp.abs(dropped - plain).max()) > 1e-3
    np.testing.assert_array_equal(forward(m, b, key), dropped)  # same key, same masks
    assert float(jnp.abs(forward(m, b, jax.random.key(4)) - dropped).max()) > 1e-3
    t5.set_dropout(m, 0.0)
    np.testing.assert_allclose(forward(m, b, key), plain, atol=1e-6)
    with pytest.raises(ValueError, match="rate must be in"):
        t5.set_dropout(m, 1.0)


def test_remat_gives_the_same_gradients():
    m, b = model(), batch()

    def loss(model, key):
        return model(**b, dropout_rng=key).mean()

    grad = nnx.jit(nnx.grad(loss, argnums=nnx.DiffState(0, AdapterParam)))
    want = grad(m, jax.random.key(1))
    t5.set_gradient_checkpointing(m, True)
    got = grad(m, jax.random.key(1))
    for a, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(w), atol=1e-6)
