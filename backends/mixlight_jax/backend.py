"""The JAX (Flax NNX) implementation of :class:`mixlight.extend.Backend`. One capability of
the contract it lacks: one adapter per example (it raises ``NotSupported``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mixlight import AdapterConfig, ParameterCount
from mixlight._backend_contract import Backend, RoutingStats
from mixlight._base_identity import BaseIdentity
from mixlight.adapter_file import check_arrays
from mixlight.math import routing_summary
from mixlight.site_math import aux_loss_terms
from mixlight.site_spec import SiteSpec
from mixlight_jax import merge as _merge
from mixlight_jax import model as _model
from mixlight_jax.primitives import JAX_PRIMITIVES


def _size(state: nnx.State) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


class JaxBackend(Backend[nnx.Module, jax.Array]):
    name = "jax"
    primitives = JAX_PRIMITIVES

    def owns_array(self, x: object) -> bool:
        return isinstance(x, jax.Array)

    def owns_model(self, model: object) -> bool:
        return isinstance(model, nnx.Module)

    def is_injected(self, model: nnx.Module) -> bool:
        return _model.is_injected(model)

    def inject(
        self,
        model: nnx.Module,
        config: AdapterConfig,
        seed: int | None = None,
        name: str = _model.DEFAULT,
    ) -> nnx.Module:
        return _model.inject(model, config, seed=seed, name=name)

    def plan(self, model: nnx.Module, config: AdapterConfig) -> list[SiteSpec]:
        return _model.plan(model, config)

    def resolve_config(self, model: nnx.Module, config: AdapterConfig) -> AdapterConfig:
        """``config`` with the sites it gets in ``model`` (a preset's family defaults made
        concrete from the model's type)."""
        return _model.resolve_config(model, config)

    def adapter_names(self, model: nnx.Module) -> list[str]:
        return _model.state_of(model).names()

    def remove_adapters(self, model: nnx.Module) -> nnx.Module:
        return _model.remove_adapters(model)

    def set_adapter(self, model: nnx.Module, name: str) -> None:
        _model.set_adapter(model, name)

    def delete_adapter(self, model: nnx.Module, name: str) -> None:
        _model.delete_adapter(model, name)

    def adapter_specs(
        self, model: nnx.Module, name: str | None = None
    ) -> tuple[AdapterConfig, list[SiteSpec]]:
        return _model.state_of(model).get(name)

    def adapter_state(
        self, model: nnx.Module, name: str | None = None
    ) -> tuple[AdapterConfig, list[SiteSpec], dict[str, np.ndarray]]:
        config, specs = self.adapter_specs(model, name)
        return config, specs, _model.adapter_arrays(model, name)

    def load_adapter_state(
        self, model: nnx.Module, arrays: Mapping[str, np.ndarray], name: str | None = None
    ) -> None:
        check_arrays(self.adapter_specs(model, name)[1], arrays, "adapter arrays")
        _model.set_adapter_arrays(model, arrays, name)

    def merge_and_unload(
        self, model: nnx.Module, routing: Mapping[str, np.ndarray] | None = None
    ) -> nnx.Module:
        return _merge.merge_and_unload(model, routing)

    def mean_routing(
        self, model: nnx.Module, batches: Iterable[Mapping[str, Any]]
    ) -> dict[str, np.ndarray]:
        return _merge.mean_routing(model, batches)

    def base_identity(self, model: nnx.Module, name: str | None = None) -> BaseIdentity:
        """Of the modules adapter ``name`` (default: the active one) adapts."""
        return _model.base_identity(model, name)

    def load_model(self, path: str) -> nnx.Module:
        """The NNX T5 of a HF checkpoint directory (``ml.load_model``)."""
        from mixlight_jax import t5

        return t5.from_pretrained(path)

    def trainable_parameters(self, model: nnx.Module) -> ParameterCount:
        """The active adapter's parameters; the total counts inactive adapters too."""
        return ParameterCount(
            _size(nnx.state(model, _model.trainable(model))), _size(nnx.state(model, nnx.Param))
        )

    def aux_losses(self, model: nnx.Module) -> jax.Array:
        _model.state_of(model)
        total = jnp.zeros((), jnp.float32)
        for layer in _model.adapter_layers(model).values():
            logits, specs = layer.routing()[1], layer.site_specs()
            if logits is None:
                continue
            for i, spec in enumerate(specs):  # a stack's logits: [layers, ...]
                for term in aux_loss_terms(
                    spec, logits[i] if layer.layer_paths else logits
                ).values():
                    total = total + term
        return total

    def routing_stats(self, model: nnx.Module) -> RoutingStats:
        _model.state_of(model)
        stats = {}
        for path, layer in _model.adapter_layers(model).items():
            traced = layer.routing()[0]
            if traced is None:
                continue
            probs = np.asarray(jax.device_get(traced), np.float32)
            if not layer.layer_paths:
                stats[path] = routing_summary(probs)
            for i, layer_path in enumerate(layer.layer_paths):  # a stack's: [layers, ...]
                stats[layer_path] = routing_summary(probs[i])
        return stats

    def disable_adapters(self, model: nnx.Module) -> contextlib.AbstractContextManager[nnx.Module]:
        return _model.disable_adapters(model)
