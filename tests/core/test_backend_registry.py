"""Backend plugins: registry, selection order, errors; the core imports no framework."""

import subprocess
import sys

import numpy as np
import pytest

import mixlight as ml
import mixlight.extend as mlx
from mixlight import _backend_registry
from tests.core.dict_backend import DictBackend


def test_import_mixlight_imports_no_framework():
    code = (
        "import sys, mixlight, mixlight.math, mixlight.testing, mixlight.cli;"
        "mixlight.extend.installed_backends();"
        "print(','.join(m for m in ('torch','jax','flax','transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_numpy_primitives_by_array_type():
    assert mlx.primitives_for(np.zeros(3)).name == "numpy"
    with pytest.raises(TypeError, match="no mixlight backend handles arrays of type builtins.list"):
        mlx.primitives_for([1.0])


def test_unknown_backend_lists_installed():
    with pytest.raises(ValueError, match=r"unknown mixlight backend 'mlx'; installed backends: \["):
        mlx.load_backend("mlx")


def test_missing_framework_names_the_extra():
    plugin = mlx.BackendPlugin("fake", "no_such_framework_xyz", "fake", lambda: None)
    with _backend_registry._isolated_registry():
        mlx.register_backend(plugin)
        with pytest.raises(ImportError, match=r'pip install "mixlight\[fake\]"'):
            mlx.load_backend("fake")


class _Model:
    pass


class _FakeBackend(DictBackend):
    name = "fake"

    def owns_model(self, model):
        return isinstance(model, _Model)

    def inject(self, model, config, seed=None, name="default"):
        model.injected = config
        return model


class _Twin(_FakeBackend):
    """A second backend owning the same model type: the type alone cannot decide."""

    name = "twin"

    def inject(self, model, config, seed=None, name="default"):
        model.injected_by = "twin"
        return model

    def trainable_parameters(self, model):
        return "twin"


def test_selection_order(monkeypatch):
    with _backend_registry._isolated_registry():
        mlx.register_backend(mlx.BackendPlugin("fake", "numpy", "fake", _FakeBackend))
        model = _Model()
        assert ml.inject(model, ml.MoV()) is model  # inferred from the model type
        monkeypatch.setenv("MIXLIGHT_BACKEND", "numpy")
        ml.inject(model, ml.MoV())  # the environment is a default, never an error
        assert model.injected == ml.MoV()
        ml.inject(model, ml.MoV(backend="fake"))  # config
        with pytest.raises(TypeError, match=r"backend 'numpy' \(chosen by argument\)"):
            ml.inject(model, ml.MoV(backend="fake"), backend="numpy")  # argument beats config
        with pytest.raises(TypeError, match=r"backend 'numpy' \(chosen by config.backend\)"):
            ml.inject(model, ml.MoV(backend="numpy"))


def test_environment_decides_only_between_owners(monkeypatch):
    with _backend_registry._isolated_registry():
        mlx.register_backend(mlx.BackendPlugin("fake", "numpy", "fake", _FakeBackend))
        mlx.register_backend(mlx.BackendPlugin("twin", "numpy", "twin", _Twin))
        mlx.load_backend("fake"), mlx.load_backend("twin")
        monkeypatch.setenv("MIXLIGHT_BACKEND", "twin")
        assert ml.trainable_parameters(_Model()) == "twin"
        monkeypatch.setenv("MIXLIGHT_BACKEND", "fake")
        model = ml.inject(_Model(), ml.MoV())
        assert not hasattr(model, "injected_by") and model.injected == ml.MoV()
        assert ml.trainable_parameters(_Model(), backend="twin") == "twin"


def test_foreign_model_error_names_the_owner_and_the_fix(monkeypatch):
    monkeypatch.delenv("MIXLIGHT_BACKEND", raising=False)
    with _backend_registry._isolated_registry():
        mlx.register_backend(mlx.BackendPlugin("fake", "numpy", "fake", _FakeBackend))
        with pytest.raises(TypeError) as err:
            ml.inject(_Model(), ml.MoV(), backend="numpy")
    message = str(err.value)
    assert "a model object belongs to one framework and it is a fake model" in message
    assert "Drop that choice" in message
    assert '`mixlight tune CONFIG` with backend = "numpy"' in message


@pytest.mark.parametrize(
    "call",
    [
        lambda m: ml.save_adapter(m, "unused", backend="numpy"),
        lambda m: ml.load_adapter(m, "unused", backend="numpy"),
        lambda m: ml.trainable_parameters(m, backend="numpy"),
        lambda m: ml.aux_losses(m, backend="numpy"),
        lambda m: ml.routing_stats(m, backend="numpy"),
        lambda m: ml.disable_adapters(m, backend="numpy"),
    ],
    ids=["save", "load", "trainable", "aux", "routing", "disable"],
)
def test_every_model_function_takes_backend(call, tmp_path, monkeypatch):
    """Each public model function honours ``backend=``: naming a backend that does not own
    the model is the clear foreign-model error, not an unexpected keyword."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "unused").mkdir()
    with _backend_registry._isolated_registry():
        mlx.register_backend(mlx.BackendPlugin("fake", "numpy", "fake", _FakeBackend))
        with pytest.raises(TypeError, match=r"backend 'numpy' \(chosen by argument\)"):
            call(_Model())


def test_unowned_model_is_refused(monkeypatch):
    monkeypatch.delenv("MIXLIGHT_BACKEND", raising=False)
    with pytest.raises(TypeError, match="no mixlight backend handles models of type"):
        ml.trainable_parameters(object())


def test_inject_rejects_non_config():
    with pytest.raises(TypeError, match="config must be a mixlight.AdapterConfig"):
        ml.inject(_Model(), {"num_experts": 4})


def test_numpy_backend_has_arrays_and_no_models():
    numpy = mlx.load_backend("numpy")
    assert isinstance(numpy, mlx.ArrayBackend) and not isinstance(numpy, mlx.ModelBackend)
    with pytest.raises(TypeError, match="numpy backend evaluates the reference math .*no models"):
        ml.load_model("unused", backend="numpy")


def test_a_plugin_that_loads_no_backend_is_refused():
    with _backend_registry._isolated_registry():
        mlx.register_backend(mlx.BackendPlugin("odd", "numpy", "odd", object))
        with pytest.raises(TypeError, match="loaded a builtins.object, which is not a mixlight"):
            mlx.load_backend("odd")


def test_a_capability_the_backend_lacks_says_so_by_name():
    with _backend_registry._isolated_registry():
        mlx.register_backend(mlx.BackendPlugin("fake", "numpy", "fake", _FakeBackend))
        model = _Model()
        for call, capability in [
            (lambda: ml.adapter_per_example(model, ["a"]), "run one adapter per example"),
            (lambda: ml.merge_and_unload(model), "merge an adapter into the base weights"),
            (lambda: ml.mean_routing(model, []), "measure mean routing"),
            (lambda: ml.load_model("unused", backend="fake"), "load checkpoints"),
        ]:
            with pytest.raises(mlx.NotSupported, match=f"the 'fake' backend cannot {capability}"):
                call()


class _Loading(_FakeBackend):
    def load_model(self, path):
        return ("loaded", path)


def test_load_model_by_backend_name(tmp_path, monkeypatch):
    monkeypatch.delenv("MIXLIGHT_BACKEND", raising=False)
    with _backend_registry._isolated_registry():
        mlx.register_backend(mlx.BackendPlugin("fake", "numpy", "fake", _Loading))
        with pytest.raises(ValueError, match=r'needs a backend: pass backend="torch" or "jax"'):
            ml.load_model(tmp_path)
        assert ml.load_model(tmp_path, backend="fake") == ("loaded", str(tmp_path))
        monkeypatch.setenv("MIXLIGHT_BACKEND", "fake")  # no model type yet: the env decides
        assert ml.load_model(tmp_path)[0] == "loaded"
        with pytest.raises(TypeError, match="the numpy backend .* has no models"):
            ml.load_model(tmp_path, backend="numpy")
        with pytest.raises(TypeError, match="load_model: the directory must be a str"):
            ml.load_model(3, backend="fake")
