"""mixlight's torch backend: adapter layers, injection, the fused hot path.

Use the framework-neutral functions (``mixlight.inject``, ``mixlight.save_adapter``, ...) on
``nn.Module``s; this package adds torch-specific pieces. Its names load lazily, so that the
entry point (:mod:`mixlight_torch._plugin`) can be discovered without importing torch.
"""

import importlib
from typing import Any

from mixlight_torch._plugin import plugin

_EXPORTS = {
    "AdapterLayer": "mixlight_torch.layers",
    "TorchBackend": "mixlight_torch.backend",
    "adapter_layers": "mixlight_torch.model",
    "aux_loss_in_output": "mixlight_torch.model",
    "adapter_checkpoints": "mixlight_torch.hf",
    "check_finite": "mixlight_torch.model",
    "remove_adapters": "mixlight_torch.model",
    "fused_molora": "mixlight_torch.ops",
    "fused_mov": "mixlight_torch.ops",
    "fused_routed_molora": "mixlight_torch.ops",
    "implement_fast_op": "mixlight_torch.ops",
    "triton_mov": "mixlight_torch.ops.triton_mov",
}

__all__ = ["plugin", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mixlight_torch' has no attribute {name!r}")
