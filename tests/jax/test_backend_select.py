"""Backend selection on a JAX (Flax NNX) model: the model's type decides,
``$MIXLIGHT_BACKEND`` never overrides it, ``backend="jax"`` is accepted by every model
function, and naming torch for a JAX model is refused with the way to run it in torch."""

import numpy as np
import pytest

import mixlight as ml
import mixlight.extend as mlx

pytest.importorskip("jax")
from flax import nnx  # noqa: E402

from mixlight_jax import t5  # noqa: E402

TINY = dict(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)


def tiny():
    return t5.T5ForConditionalGeneration(t5.T5Config(**TINY), rngs=nnx.Rngs(0))


def test_environment_is_a_default_not_an_override(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv("MIXLIGHT_BACKEND", "torch")
    model = ml.inject(tiny(), ml.MoV(num_experts=2), seed=0)
    assert ml.trainable_parameters(model).trainable > 0
    ml.save_adapter(model, tmp_path / "a")  # issue 14: this raised TypeError
    ml.load_adapter(tiny(), tmp_path / "a")


def test_every_model_function_accepts_its_own_backend(tmp_path):
    model = ml.inject(tiny(), ml.MoV(num_experts=2), backend="jax", seed=0)
    assert ml.trainable_parameters(model, backend="jax").trainable > 0
    ids = np.full((2, 5), 3, np.int32)
    model(input_ids=ids, decoder_input_ids=ids)
    assert ml.routing_stats(model, backend="jax")
    assert float(ml.aux_losses(model, backend="jax")) == 0.0
    with ml.disable_adapters(model, backend="jax"):
        pass
    ml.save_adapter(model, tmp_path / "a", backend="jax")
    ml.load_adapter(tiny(), tmp_path / "a", backend="jax")
    assert ml.read_adapter(tmp_path / "a").config == ml.MoV(num_experts=2)


def test_torch_for_a_jax_model_names_the_problem_and_the_fix():
    pytest.importorskip("torch")
    with pytest.raises(TypeError) as err:
        ml.inject(tiny(), ml.MoV(num_experts=2), backend="torch")
    message = str(err.value)
    assert "backend 'torch' (chosen by argument) cannot handle" in message
    assert "a model object belongs to one framework and it is a jax model" in message
    assert "transformers.T5ForConditionalGeneration.from_pretrained(checkpoint)" in message
    assert '`mixlight tune CONFIG` with backend = "torch"' in message


def test_load_model_swaps_framework_by_one_argument(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.T5Config(**TINY, decoder_start_token_id=0, dropout_rate=0.0)
    transformers.T5ForConditionalGeneration(config).save_pretrained(tmp_path / "hf-t5")
    models = {b: ml.load_model(tmp_path / "hf-t5", backend=b) for b in ("torch", "jax")}
    assert mlx.load_backend("jax").owns_model(models["jax"])
    ids = np.arange(2, 12).reshape(2, 5) % TINY["vocab_size"]
    with torch.no_grad():
        torch_logits = models["torch"](
            input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(ids)
        ).logits.numpy()
    jax_logits = np.asarray(models["jax"](input_ids=ids, decoder_input_ids=ids))
    np.testing.assert_allclose(jax_logits, torch_logits, atol=1e-4, rtol=0)
