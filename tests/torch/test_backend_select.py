"""Backend selection on a torch model: the model's type decides, ``$MIXLIGHT_BACKEND`` never
overrides it, ``backend="torch"`` is accepted by every model function, and naming JAX for a
torch model is refused with the way to run the experiment in JAX."""

import pytest

import mixlight as ml
import mixlight.extend as mlx
from tests.torch.conftest import tiny_t5

torch = pytest.importorskip("torch")


def test_environment_is_a_default_not_an_override(tmp_path, monkeypatch):
    pytest.importorskip("jax")
    monkeypatch.setenv("MIXLIGHT_BACKEND", "jax")
    model = ml.inject(tiny_t5(), ml.MoV(num_experts=2), seed=0)
    count = ml.trainable_parameters(model)
    assert 0 < count.trainable < count.total
    ml.save_adapter(model, tmp_path / "a")
    ml.load_adapter(tiny_t5(), tmp_path / "a")


def test_every_model_function_accepts_its_own_backend(tmp_path):
    model = ml.inject(tiny_t5(), ml.MoV(num_experts=2), backend="torch", seed=0)
    assert ml.trainable_parameters(model, backend="torch").trainable > 0
    ids = torch.randint(2, 100, (2, 5))
    model(input_ids=ids, decoder_input_ids=ids)
    assert ml.routing_stats(model, backend="torch")
    assert float(ml.aux_losses(model, backend="torch")) == 0.0
    with ml.disable_adapters(model, backend="torch"):
        pass
    ml.save_adapter(model, tmp_path / "a", backend="torch")
    fresh = ml.load_adapter(tiny_t5(), tmp_path / "a", backend="torch")
    assert ml.read_adapter(tmp_path / "a").config == ml.MoV(num_experts=2)
    assert fresh is not model


def test_jax_for_a_torch_model_names_the_problem_and_the_fix():
    pytest.importorskip("jax")
    with pytest.raises(TypeError) as err:
        ml.inject(tiny_t5(), ml.MoV(num_experts=2), backend="jax")
    message = str(err.value)
    assert "backend 'jax' (chosen by argument) cannot handle" in message
    assert "a model object belongs to one framework and it is a torch model" in message
    assert "(a T5: mixlight_jax.t5.from_pretrained(checkpoint))" in message
    assert '`mixlight tune CONFIG` with backend = "jax"' in message


def test_load_model_gives_the_hf_t5(tmp_path):
    pytest.importorskip("transformers")
    tiny_t5().save_pretrained(tmp_path / "hf-t5")
    model = ml.load_model(tmp_path / "hf-t5", backend="torch")
    assert type(model).__name__ == "T5ForConditionalGeneration" and not model.training
    assert mlx.load_backend("torch").owns_model(model)
