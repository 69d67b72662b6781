"""The JAX (Flax NNX) implementation of the :class:`mixlight.Backend` protocol."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mixlight import AdapterConfig, ParameterCount
from mixlight._base_identity import BaseIdentity
from mixlight.adapter_file import check_arrays
from mixlight.math import routing_summary
from mixlight.site_spec import aux_loss_terms
from mixlight_jax import model as _model
from mixlight_jax.params import AdapterParam
from mixlight_jax.primitives import JAX_PRIMITIVES


def _size(state: nnx.State) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


class JaxBackend:
    name = "jax"
    primitives = JAX_PRIMITIVES

    def owns_array(self, x: Any) -> bool:
        return isinstance(x, jax.Array)

    def owns_model(self, model: Any) -> bool:
        return isinstance(model, nnx.Module)

    def is_injected(self, model: nnx.Module) -> bool:
        return _model.is_injected(model)

    def inject(
        self, model: nnx.Module, config: AdapterConfig, seed: int | None = None
    ) -> nnx.Module:
        return _model.inject(model, config, rngs=seed)

    def adapter_specs(self, model: nnx.Module):
        state = _model.state_of(model)
        return state.config, list(state.specs)

    def adapter_state(self, model: nnx.Module):
        state = _model.state_of(model)
        arrays = {
            name: np.array(jax.device_get(p[...]), np.float32)
            for name, p in _model.adapter_parameters(model)
        }
        return state.config, list(state.specs), arrays

    def load_adapter_state(self, model: nnx.Module, arrays: Mapping[str, np.ndarray]) -> None:
        state = _model.state_of(model)
        check_arrays(list(state.specs), arrays, "adapter arrays")
        for name, param in _model.adapter_parameters(model):
            old = param[...]
            param.set_value(jax.device_put(jnp.asarray(arrays[name], old.dtype), old.sharding))

    def base_identity(self, model: nnx.Module) -> BaseIdentity:
        return _model.base_identity(model)

    def load_model(self, path: str) -> nnx.Module:
        """The NNX T5 of a HF checkpoint directory (``ml.load_model``)."""
        from mixlight_jax import t5

        return t5.from_pretrained(path)

    def trainable_parameters(self, model: nnx.Module) -> ParameterCount:
        return ParameterCount(
            _size(nnx.state(model, AdapterParam)), _size(nnx.state(model, nnx.Param))
        )

    def aux_losses(self, model: nnx.Module) -> jax.Array:
        _model.state_of(model)
        total = jnp.zeros((), jnp.float32)
        for layer in _model.adapter_layers(model).values():
            logits = layer.last_logits.get_value()
            if logits is not None:
                for term in aux_loss_terms(layer.spec, logits).values():
                    total = total + term
        return total

    def routing_stats(self, model: nnx.Module) -> dict[str, dict[str, Any]]:
        _model.state_of(model)
        stats = {}
        for path, layer in _model.adapter_layers(model).items():
            probs = layer.last_probs.get_value()
            if probs is not None:
                stats[path] = routing_summary(np.asarray(jax.device_get(probs), np.float32))
        return stats

    def disable_adapters(self, model: nnx.Module) -> contextlib.AbstractContextManager:
        return _model.disable_adapters(model)
