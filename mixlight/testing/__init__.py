"""Test helpers for mixlight and for third-party expert kinds and backends (needs hypothesis)."""

from mixlight.testing._conformance import check_expert_kind, check_site, reference
from mixlight.testing._strategies import (
    SiteCase,
    adapter_configs,
    expert_kinds,
    routers,
    site_cases,
)

__all__ = [
    "SiteCase",
    "adapter_configs",
    "check_expert_kind",
    "check_site",
    "expert_kinds",
    "reference",
    "routers",
    "site_cases",
]
