"""``mixlight_jax.t5.shift_right`` gives HF torch T5's decoder inputs for the same labels
(start token first, the last label dropped, -100 shown to the decoder as padding)."""

import numpy as np
import pytest

jnp = pytest.importorskip("jax.numpy")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_shift_right_equals_hf():
    from mixlight_jax import t5

    labels = np.array([[5, 6, 7, -100], [9, -100, -100, -100]], np.int32)
    hf = transformers.T5ForConditionalGeneration(
        transformers.T5Config(
            d_model=8,
            d_kv=4,
            num_heads=2,
            d_ff=8,
            num_layers=1,
            vocab_size=16,
            decoder_start_token_id=3,
            pad_token_id=1,
        )
    )
    expected = hf._shift_right(torch.tensor(labels, dtype=torch.long)).numpy()
    config = t5.T5Config.from_dict(hf.config.to_dict())
    got = np.asarray(t5.shift_right(jnp.asarray(labels), config))
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int32


def test_shift_right_refuses_a_flat_sequence():
    from mixlight_jax import t5

    with pytest.raises(ValueError, match=r"\[batch, tgt_len\]"):
        t5.shift_right(jnp.arange(4), t5.T5Config(8, 4, 2, 4, 1, 2))
