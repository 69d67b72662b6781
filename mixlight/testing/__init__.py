"""Test helpers for mixlight and for third-party expert kinds and backends (needs hypothesis).

The reference every check compares against is an independent loop implementation
(:func:`loop_reference`, :func:`loop_gradients`) that shares no code with the core math.
:func:`check_on_devices` runs the check, forward and gradients, on every local device of a
framework and on a batch-sharded JAX mesh.
"""

from mixlight.testing._conformance import (
    check_expert_kind,
    check_grads,
    check_site,
    reference,
    upstream,
)
from mixlight.testing._devices import Place, check_case_at, check_on_devices, device_places
from mixlight.testing._loop_grads import loop_gradients
from mixlight.testing._loops import LoopResult, loop_reference, top_k_margin
from mixlight.testing._strategies import (
    SiteCase,
    adapter_configs,
    expert_kinds,
    padding_masks,
    round_to_bf16,
    routers,
    site_cases,
)

__all__ = [
    "LoopResult",
    "Place",
    "SiteCase",
    "adapter_configs",
    "check_case_at",
    "check_expert_kind",
    "check_grads",
    "check_on_devices",
    "check_site",
    "device_places",
    "expert_kinds",
    "loop_gradients",
    "loop_reference",
    "padding_masks",
    "reference",
    "round_to_bf16",
    "routers",
    "site_cases",
    "top_k_margin",
    "upstream",
]
