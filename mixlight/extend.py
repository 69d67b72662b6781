"""The extension surface: what authors of expert kinds and backends build on.

Users need only the names at the top of :mod:`mixlight`. Everything here is for extending
it, in two groups (as optax and equinox keep their building blocks apart from the user API):

* **Expert kinds**: subclass :class:`ExpertKind` (parameters as :class:`ParamSpec`, the
  mixing rule with the core's einops math, arrays cast through :func:`primitives_for`),
  register it with :func:`register_expert`, optionally give it a merge rule
  (:class:`Merged`) and a fast op (:func:`register_fast_op`). It then runs in every backend.
* **Backends**: subclass :class:`Backend` (the array primitives of :class:`ArrayBackend`
  and the model lifecycle of :class:`ModelBackend`; a capability it lacks raises
  :class:`NotSupported`) and ship a :class:`BackendPlugin` under the
  ``mixlight.backends`` entry point; list the model's modules as data
  (:func:`record_module`, :class:`ModuleRecord`), plan the sites on that data with
  :func:`plan_sites`, run them with :func:`apply_site` (or :func:`route`,
  :func:`pooling_mask`, :func:`aux_loss_terms`), and write files with :func:`write_adapter`.

Names not exported here or at the top of :mod:`mixlight` are private.
"""

from mixlight._backend_contract import (
    ArrayBackend,
    Backend,
    ModelBackend,
    NotSupported,
)
from mixlight._backend_registry import (
    BackendPlugin,
    installed_backends,
    load_backend,
    primitives_for,
    register_backend,
)
from mixlight.adapter_file import check_arrays, write_adapter
from mixlight.experts import (
    ExpertKind,
    LowRank,
    Merged,
    ParamSpec,
    Vectors,
    expert_kinds,
    register_expert,
)
from mixlight.fast_ops import fast_op, register_fast_op
from mixlight.math import routing_summary
from mixlight.primitives import Primitives
from mixlight.site_math import SiteResult, apply_site, aux_loss_terms, pooling_mask, route
from mixlight.site_planning import (
    ModuleRecord,
    ModuleShape,
    describe_module,
    plan_sites,
    record_module,
    shape_for,
)
from mixlight.site_spec import SiteSpec

__all__ = [
    "ArrayBackend",
    "Backend",
    "BackendPlugin",
    "ExpertKind",
    "LowRank",
    "Merged",
    "ModelBackend",
    "ModuleRecord",
    "ModuleShape",
    "NotSupported",
    "ParamSpec",
    "Primitives",
    "SiteResult",
    "SiteSpec",
    "Vectors",
    "apply_site",
    "aux_loss_terms",
    "check_arrays",
    "describe_module",
    "expert_kinds",
    "fast_op",
    "installed_backends",
    "load_backend",
    "plan_sites",
    "pooling_mask",
    "primitives_for",
    "register_backend",
    "register_expert",
    "record_module",
    "register_fast_op",
    "route",
    "routing_summary",
    "shape_for",
    "write_adapter",
]
