"""A framework-free backend for core tests: a "model" is a dict of module shapes, and its
adapter state lives in numpy arrays, so model-level functions (load_peft_adapter,
push_to_hub, save_adapter) run without torch or JAX."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

import mixlight as ml
import mixlight.extend as mlx
from mixlight import _backend_registry


class DictModel:
    """Module path -> :class:`mixlight.extend.ModuleShape`; ``state`` once injected."""

    def __init__(self, shapes: dict[str, mlx.ModuleShape]) -> None:
        self.shapes = shapes
        self.state: tuple | None = None


class DictBackend(mlx.Backend[DictModel, float]):
    """Every required hook of the contract; no optional capability (merging, per-example
    adapters, a model loader), so those raise ``NotSupported``."""

    name = "dict"
    primitives = mlx.primitives_for(np.zeros(1))

    def owns_array(self, x):
        return False

    def owns_model(self, model):
        return isinstance(model, DictModel)

    def is_injected(self, model):
        return model.state is not None

    def plan(self, model, config):
        return mlx.plan_sites(config, model.shapes)

    def inject(self, model, config, seed=None, name="default"):
        specs = self.plan(model, config)
        rng = np.random.default_rng(seed or 0)
        arrays = {s.canonical_name(n): a for s in specs for n, a in s.init_params(rng).items()}
        model.state = (config, specs, arrays)
        return model

    def remove_adapters(self, model):
        model.state = None
        return model

    def adapter_names(self, model):
        return ["default"]

    def set_adapter(self, model, name):
        pass

    def delete_adapter(self, model, name):
        model.state = None

    def adapter_specs(self, model, name=None):
        return model.state[0], model.state[1]

    def adapter_state(self, model, name=None):
        config, specs, arrays = model.state
        return config, specs, {n: a.copy() for n, a in arrays.items()}

    def load_adapter_state(self, model, arrays, name=None):
        config, specs, _ = model.state
        model.state = (config, specs, {n: np.asarray(a).copy() for n, a in arrays.items()})

    def trainable_parameters(self, model):
        adapter = sum(a.size for a in model.state[2].values())
        return ml.ParameterCount(adapter, adapter + 10_000)

    def aux_losses(self, model):
        return 0.0

    def routing_stats(self, model):
        return {}

    @contextlib.contextmanager
    def disable_adapters(self, model) -> Iterator[DictModel]:
        yield model


@contextlib.contextmanager
def dict_backend() -> Iterator[None]:
    # Discover the installed backends first: the registry snapshot restored on exit must
    # hold them, since discovery runs once per process.
    _backend_registry.installed_backends()
    with _backend_registry._isolated_registry():
        mlx.register_backend(mlx.BackendPlugin("dict", "numpy", "dict", DictBackend))
        mlx.load_backend("dict")
        yield


def t5_like(layers: int = 2, d: int = 8, d_ff: int = 16) -> DictModel:
    """The T5 module paths the presets target, with their widths."""
    shapes = {}
    for i in range(layers):
        for name in ("q", "k", "v", "o"):
            shapes[f"encoder.block.{i}.layer.0.SelfAttention.{name}"] = mlx.ModuleShape(d, d, 2)
        ffn = f"encoder.block.{i}.layer.1.DenseReluDense"
        shapes[f"{ffn}.wi"] = mlx.ModuleShape(d, d_ff)
        shapes[f"{ffn}.wo"] = mlx.ModuleShape(d_ff, d)
        shapes[f"{ffn}.act"] = mlx.ModuleShape(d_ff, d_ff)
    return DictModel(shapes)
