"""mixlight: extremely parameter-efficient Mixture-of-Experts fine-tuning (MoV, MoLoRA).

The names here are the user API: configs and presets, the model functions (any backend),
adapter files and the Hugging Face interop. Building blocks for new expert kinds and
backends are in :mod:`mixlight.extend`; everything else is private.

The core is numpy + einops + attrs; torch and JAX backends are plugins loaded on demand.
Importing ``mixlight`` imports neither framework.
"""

from mixlight import extend
from mixlight._backend_contract import ParameterCount
from mixlight._hub import push_to_hub
from mixlight._peft import load_peft_adapter, save_peft_adapter
from mixlight._version import __version__
from mixlight.adapter_file import AdapterFileError, read_adapter
from mixlight.api import (
    adapter_names,
    adapter_per_example,
    aux_losses,
    delete_adapter,
    disable_adapters,
    inject,
    load_adapter,
    load_model,
    mean_routing,
    merge_and_unload,
    remove_adapters,
    routing_stats,
    save_adapter,
    set_adapter,
    trainable_parameters,
)
from mixlight.config import AdapterConfig, Site, SoftMerge, TopK
from mixlight.presets import IA3, LoRA, MoLoRA, MoV

__all__ = [
    "IA3",
    "AdapterConfig",
    "AdapterFileError",
    "LoRA",
    "MoLoRA",
    "MoV",
    "ParameterCount",
    "Site",
    "SoftMerge",
    "TopK",
    "__version__",
    "adapter_names",
    "adapter_per_example",
    "aux_losses",
    "delete_adapter",
    "disable_adapters",
    "extend",
    "inject",
    "load_adapter",
    "load_model",
    "load_peft_adapter",
    "mean_routing",
    "merge_and_unload",
    "push_to_hub",
    "read_adapter",
    "remove_adapters",
    "routing_stats",
    "save_adapter",
    "save_peft_adapter",
    "set_adapter",
    "trainable_parameters",
]
