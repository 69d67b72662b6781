"""Test helpers for mixlight and for third-party expert kinds and backends (needs hypothesis).

The reference every check compares against is an independent loop implementation
(:func:`loop_reference`, :func:`loop_gradients`) that shares no code with the core math.
:func:`check_on_devices` checks what a model runs at every place of a framework (each local
device, JAX meshes, a torch DDP group): the injected adapter layer with the fast op the
registry picks, eager and compiled, forward and gradients; ``mixlight check`` runs it from the
command line, :func:`conformance` from a test (or the ``mixlight_check`` fixture of
:mod:`mixlight.testing.pytest_plugin`).
"""

from mixlight.testing._conformance import (
    check_expert_kind,
    check_grads,
    check_site,
    reference,
    upstream,
)
from mixlight.testing._devices import (
    TOLERANCES,
    ConformanceError,
    DeviceReport,
    Outcome,
    PathErrors,
    Place,
    PlaceError,
    Tolerance,
    check_case_at,
    check_on_devices,
    conformance,
    device_places,
    tolerance,
)
from mixlight.testing._loop_grads import loop_gradients
from mixlight.testing._loops import LoopResult, loop_reference, top_k_margin
from mixlight.testing._strategies import (
    SiteCase,
    adapter_configs,
    expert_kinds,
    padding_masks,
    round_to,
    round_to_bf16,
    routers,
    site_cases,
)

__all__ = [
    "TOLERANCES",
    "ConformanceError",
    "DeviceReport",
    "LoopResult",
    "Outcome",
    "PathErrors",
    "Place",
    "PlaceError",
    "SiteCase",
    "Tolerance",
    "adapter_configs",
    "check_case_at",
    "check_expert_kind",
    "check_grads",
    "check_on_devices",
    "check_site",
    "conformance",
    "device_places",
    "expert_kinds",
    "loop_gradients",
    "loop_reference",
    "padding_masks",
    "reference",
    "round_to",
    "round_to_bf16",
    "routers",
    "site_cases",
    "tolerance",
    "top_k_margin",
    "upstream",
]
