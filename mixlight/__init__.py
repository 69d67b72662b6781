"""mixlight: extremely parameter-efficient Mixture-of-Experts fine-tuning (MoV, MoLoRA).

The core is numpy + einops + attrs; torch and JAX backends are plugins loaded on demand.
Importing ``mixlight`` imports neither framework.
"""

from mixlight._backends import (
    Backend,
    BackendPlugin,
    installed_backends,
    load_backend,
    primitives_for,
    register_backend,
)
from mixlight._hub import push_to_hub
from mixlight._peft_api import load_peft_adapter, save_peft_adapter
from mixlight._version import __version__
from mixlight.adapter_file import AdapterFileError, read_adapter, write_adapter
from mixlight.api import (
    ParameterCount,
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
    routing_stats,
    save_adapter,
    set_adapter,
    trainable_parameters,
)
from mixlight.config import AdapterConfig, Site, SoftMerge, TopK
from mixlight.experts import (
    ExpertKind,
    LowRank,
    Merged,
    ParamSpec,
    Vectors,
    expert_kinds,
    register_expert,
)
from mixlight.fast_ops import register_fast_op
from mixlight.presets import IA3, LoRA, MoLoRA, MoV
from mixlight.primitives import Primitives
from mixlight.site_spec import ModuleShape, SiteResult, SiteSpec, apply_site, plan_sites

__all__ = [
    "IA3",
    "AdapterConfig",
    "AdapterFileError",
    "Backend",
    "BackendPlugin",
    "ExpertKind",
    "Merged",
    "LoRA",
    "LowRank",
    "MoLoRA",
    "MoV",
    "ModuleShape",
    "ParamSpec",
    "ParameterCount",
    "Primitives",
    "Site",
    "SiteResult",
    "SiteSpec",
    "SoftMerge",
    "TopK",
    "Vectors",
    "__version__",
    "apply_site",
    "set_adapter",
    "merge_and_unload",
    "mean_routing",
    "delete_adapter",
    "adapter_per_example",
    "adapter_names",
    "aux_losses",
    "disable_adapters",
    "expert_kinds",
    "inject",
    "installed_backends",
    "load_adapter",
    "load_backend",
    "load_model",
    "load_peft_adapter",
    "plan_sites",
    "primitives_for",
    "push_to_hub",
    "read_adapter",
    "register_backend",
    "register_expert",
    "register_fast_op",
    "routing_stats",
    "save_adapter",
    "save_peft_adapter",
    "trainable_parameters",
    "write_adapter",
]
