"""Conformance: a backend (or an expert kind) must match the numpy reference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mixlight.site_spec import SiteResult, apply_site


def reference(case: Any) -> SiteResult:
    """The numpy reference for a :class:`SiteCase` (float64 activations, float32 router)."""
    params = {n: p.astype(np.float64) for n, p in case.params.items()}
    return apply_site(
        case.spec, params, case.x.astype(np.float64), case.h.astype(np.float64), case.mask
    )


def check_site(
    case: Any,
    to_backend: Callable[[np.ndarray], Any],
    to_numpy: Callable[[Any], np.ndarray],
    run: Callable[..., Any] | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> None:
    """Assert that ``run`` (default: :func:`apply_site`) on backend arrays equals the numpy
    reference: the output and, when there is a router, the probabilities.

    Args:
      case: a :class:`SiteCase`.
      to_backend / to_numpy: array conversions of the backend under test.
      run: ``run(spec, params, x, h, mask) -> SiteResult`` — a backend's fast path.
    """
    run = run or apply_site
    want = reference(case)
    got = run(
        case.spec,
        {n: to_backend(p) for n, p in case.params.items()},
        to_backend(case.x),
        to_backend(case.h),
        to_backend(case.mask),
    )
    scale = 1.0 + float(np.abs(want.out).max(initial=0.0))
    np.testing.assert_allclose(
        to_numpy(got.out).astype(np.float64),
        want.out,
        rtol=rtol,
        atol=atol * scale,
        err_msg=f"output differs from the numpy reference for {case.spec}",
    )
    if want.probs is not None:
        np.testing.assert_allclose(
            to_numpy(got.probs).astype(np.float64),
            want.probs,
            rtol=rtol,
            atol=atol,
            err_msg=f"routing probabilities differ for {case.spec}",
        )


def check_expert_kind(
    expert: Any,
    to_backend: Callable[[np.ndarray], Any] = np.asarray,
    to_numpy: Callable[[Any], np.ndarray] = np.asarray,
    examples: int = 25,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> None:
    """Run an expert kind through random sites on a backend against the numpy reference.

    Usable from any test suite (it drives hypothesis itself).
    """
    from hypothesis import HealthCheck, given, settings

    from mixlight.testing._strategies import site_cases

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(site_cases(expert=expert))
    def run(case: Any) -> None:
        out = reference(case).out
        if not np.all(np.isfinite(out)):
            raise AssertionError(f"{expert!r} produced non-finite outputs on {case.spec}")
        check_site(case, to_backend, to_numpy, rtol=rtol, atol=atol)

    run()
