"""A PEFT load into the JAX T5 that is refused after injection (a weight of another base
model's shape) leaves the model exactly as it was, its other named adapters included, and the
next correct load works."""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before any transformers import
pytest.importorskip("jax")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import jax  # noqa: E402
from flax import nnx  # noqa: E402

import mixlight as ml  # noqa: E402
import mixlight.extend as mlx  # noqa: E402
from mixlight_jax import t5  # noqa: E402
from tests.jax.test_peft_interop import (  # noqa: E402
    ATOL,
    DIMS,
    jax_logits,
    peft_configs,
    trained_peft,
)


def torch_t5(d_ff):
    config = transformers.T5Config(
        **dict(DIMS, d_ff=d_ff),
        decoder_start_token_id=0,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    torch.manual_seed(0)
    return transformers.T5ForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(the JAX T5 of a checkpoint, a PEFT (IA)³ adapter of that checkpoint and its torch
    logits, a PEFT (IA)³ adapter of a T5 with another d_ff)."""
    root = tmp_path_factory.mktemp("peft-jax")
    torch_t5(DIMS["d_ff"]).save_pretrained(root / "base")
    fresh_torch = lambda: transformers.T5ForConditionalGeneration.from_pretrained(  # noqa: E731
        root / "base"
    ).eval()
    right = trained_peft(fresh_torch(), peft_configs()["ia3"], root / "right")
    trained_peft(torch_t5(DIMS["d_ff"] // 2), peft_configs()["ia3"], root / "other")
    return t5.from_pretrained(root / "base"), (root / "right", right), root / "other"


def snapshot(model):
    backend = mlx.load_backend("jax")
    injected = backend.is_injected(model)
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(model))
    return {
        "injected": injected,
        "names": backend.adapter_names(model) if injected else [],
        "state": {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves},
        "logits": jax_logits(model),
    }


def assert_same(before, after):
    assert after["injected"] == before["injected"]
    assert after["names"] == before["names"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        np.testing.assert_array_equal(after["state"][key], value, err_msg=key)
    np.testing.assert_array_equal(after["logits"], before["logits"])


WRONG_SHAPE = r"DenseReluDense\.wo: its vectors has shape \(32,\), the model's .* needs \(64,\)"


def test_a_refused_load_leaves_the_jax_model_as_it_was(setup):
    base, (right, want), other = setup
    model = nnx.clone(base)
    before = snapshot(model)
    with pytest.raises(ml.AdapterFileError, match=WRONG_SHAPE):
        ml.load_peft_adapter(model, other)
    assert_same(before, snapshot(model))
    ml.load_peft_adapter(model, right)  # the next, correct load is not refused
    np.testing.assert_allclose(jax_logits(model), want, atol=ATOL, rtol=0)


def test_a_refused_named_load_keeps_the_jax_models_adapters(setup):
    base, (right, _), other = setup
    model = ml.load_peft_adapter(nnx.clone(base), right, adapter_name="mine")
    before = snapshot(model)
    with pytest.raises(ml.AdapterFileError, match=WRONG_SHAPE):
        ml.load_peft_adapter(model, other, adapter_name="new")
    assert_same(before, snapshot(model))
