"""mixlight's JAX backend: Flax NNX adapter layers, injection, the custom_vjp hot path, T5.

Use the framework-neutral functions (``mixlight.inject``, ``mixlight.save_adapter``, ...) on
``nnx.Module``s; this package adds JAX-specific pieces (a seeded :func:`inject`, the
:class:`AdapterParam` variable type and the :func:`trainable` filter of one adapter for
optimizers, sequence-routing masks, merging, the fused ops, and the NNX T5 in
:mod:`mixlight_jax.t5`). Its names load lazily, so that the entry point
(:mod:`mixlight_jax._plugin`) can be discovered without importing jax."""

import importlib
from typing import Any

from mixlight_jax._plugin import plugin

_EXPORTS = {
    "AdapterLayer": "mixlight_jax.layers",
    "AdapterNamed": "mixlight_jax.params",
    "AdapterParam": "mixlight_jax.params",
    "JaxBackend": "mixlight_jax.backend",
    "RoutingTrace": "mixlight_jax.layers",
    "adapter_layers": "mixlight_jax.model",
    "delete_adapter": "mixlight_jax.model",
    "fused_molora": "mixlight_jax.ops",
    "fused_mov": "mixlight_jax.ops",
    "fused_routed_molora": "mixlight_jax.ops",
    "implement_fast_op": "mixlight_jax.ops",
    "inject": "mixlight_jax.model",
    "mean_routing": "mixlight_jax.merge",
    "merge_and_unload": "mixlight_jax.merge",
    "no_routing_trace": "mixlight_jax.model",
    "remove_adapters": "mixlight_jax.model",
    "sequence_masks": "mixlight_jax.model",
    "set_adapter": "mixlight_jax.model",
    "trainable": "mixlight_jax.model",
}

__all__ = ["plugin", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mixlight_jax' has no attribute {name!r}")
