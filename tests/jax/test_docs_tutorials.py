"""The JAX tutorial and the `mixlight tune` tutorial run as written (tests/docs_pages.py)
and compute what they say."""

import numpy as np
import pytest

from tests.docs_pages import run_page

pytest.importorskip("jax")
pytest.importorskip("optax")


def test_jax_tutorial(tmp_path):
    import mixlight as ml

    ns = run_page("docs/tutorials/jax.md", tmp_path)
    losses = ns["losses"]
    assert len(losses) == 20 and losses[-1] < 0.9 * losses[0]
    import optax
    from flax import nnx

    from mixlight_jax import t5

    base, ids = t5.T5ForConditionalGeneration(ns["config"], rngs=nnx.Rngs(0)), ns["ids"]

    def loss(decoder_input_ids):
        logits = base(input_ids=ids, decoder_input_ids=decoder_input_ids)
        return float(optax.softmax_cross_entropy_with_integer_labels(logits, ids).mean())

    # step 0 is the base model's next-token loss (a fresh adapter is the identity), which
    # the unshifted labels (each position sees its own target) would not give
    np.testing.assert_allclose(losses[0], loss(t5.shift_right(ids, ns["config"])), rtol=1e-5)
    assert abs(loss(ids) - losses[0]) > 1e-3  # (rtol 1e-5 above tells the two apart)
    np.testing.assert_allclose(
        ns["stats"]["encoder.block.0.layer.1.DenseReluDense.act"]["mean_prob"].sum(), 1, rtol=1e-5
    )
    np.testing.assert_array_equal(np.asarray(ns["reloaded"]), np.asarray(ns["logits"]))
    assert ml.read_adapter(tmp_path / "out/mov-jax").config == ml.MoV(num_experts=4)
    # section 5: a scanned stack of MultiHeadAttention blocks, adapted and listed per layer
    stats = ml.routing_stats(ns["stack"])
    assert len(stats) == 3 * 3 and ns["out"].shape == (2, 5, 32)
    assert stats["layers.2.attn.key"]["mean_prob"].shape == (4,)


def test_tune_tutorial(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    ns = run_page("docs/tutorials/tune.md", tmp_path)
    torch_metrics, jax_metrics = ns["metrics"]["torch"], ns["metrics"]["jax"]
    assert len(torch_metrics["losses"]) == 6
    np.testing.assert_allclose(torch_metrics["losses"], jax_metrics["losses"], rtol=1e-4)
    assert jax_metrics["config"]["backend"] == "jax"
    for name, array in ns["torch_adapter"].items():
        np.testing.assert_allclose(ns["jax_adapter"][name], array, atol=1e-5, err_msg=name)
    assert jax_metrics["eval"] is not None
