"""A pytest plugin for checking mixlight on a test machine's devices, in one line of a user's
``conftest.py``::

    pytest_plugins = ["mixlight.testing.pytest_plugin"]

It provides the fixture ``mixlight_check``: a :func:`mixlight.testing.check_on_devices` that
skips the test when the framework is not installed and records the table of largest errors
in the test's report (shown with ``pytest -rA``)::

    def test_my_kind_on_every_device(mixlight_check):
        mixlight_check("torch", expert=MyKind())
        mixlight_check("jax", expert=MyKind(), examples=5)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture
def mixlight_check(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``mixlight_check(framework, **options)``: :func:`mixlight.testing.check_on_devices`
    (same options), skipping the test when ``framework`` is not installed; returns its
    :class:`mixlight.testing.DeviceReport`."""

    def check(framework: str = "torch", examples: int = 5, **options: Any) -> Any:
        pytest.importorskip(framework)
        from mixlight.testing import check_on_devices

        options.setdefault("show", False)
        report = check_on_devices(framework, examples, **options)
        request.node.user_properties.append(("mixlight_check", report.table()))
        request.node.add_report_section("call", f"mixlight check ({framework})", report.table())
        return report

    return check
