"""Conformance: a backend (or an expert kind) must match the independent loop reference,
forward and gradient.

The reference is :func:`mixlight.testing._loops.loop_reference` (plain loops, no einops, no
core math); the gradients are the hand-derived :func:`loop_gradients`. A check compares a
backend's output, routing probabilities and logits and, when given a gradient function, the
gradients of ``sum(g_out * out)`` with respect to the site's input ``x``, its frozen output
``h`` and every adapter parameter.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mixlight.site_math import apply_site
from mixlight.testing._loop_grads import loop_gradients
from mixlight.testing._loops import NEAR_TIE, LoopResult, loop_reference, top_k_margin

GradFn = Callable[[Any, np.ndarray], Mapping[str, Any]]


def reference(case: Any) -> LoopResult:
    """The independent loop reference for a :class:`SiteCase` (float64)."""
    return loop_reference(case)


def upstream(case: Any) -> np.ndarray:
    """A fixed, case-seeded cotangent ``g_out [batch, seq, d_out]`` (float32 values)."""
    rng = np.random.default_rng(zlib.crc32(np.ascontiguousarray(case.h).tobytes()))
    g_out: np.ndarray = rng.standard_normal(case.h.shape).astype(np.float32)
    return g_out


def _close(
    got: Any,
    want: np.ndarray,
    to_numpy: Callable[[Any], np.ndarray],
    rtol: float,
    atol: float,
    what: str,
) -> None:
    got = to_numpy(got).astype(np.float64)
    scale = 1.0 + float(np.abs(want).max(initial=0.0))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=what)


def skip_near_ties(case: Any, want: LoopResult) -> None:
    """Reject (hypothesis) a case whose top-k choice is a near-tie; see :data:`NEAR_TIE`."""
    if want.logits is not None and top_k_margin(case.spec, want.logits) < NEAR_TIE:
        from hypothesis import reject

        reject()


def check_site(
    case: Any,
    to_backend: Callable[[np.ndarray], Any],
    to_numpy: Callable[[Any], np.ndarray],
    run: Callable[..., Any] | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    grads: GradFn | None = None,
    grad_tol: float = 1e-4,
) -> None:
    """Assert that ``run`` on backend arrays equals the loop reference: the output and, with
    a router, the probabilities and logits; with ``grads``, every gradient.

    Args:
      case: a :class:`SiteCase`.
      to_backend / to_numpy: array conversions of the backend under test.
      run: ``run(spec, params, x, h, mask) -> SiteResult`` — a backend's fast path (default:
        :func:`mixlight.extend.apply_site` on the backend's arrays).
      grads: ``grads(case, g_out) -> {"x": .., "h": .., <param>: ..}``, the backend's
        gradients of ``sum(g_out * out)`` (``g_out`` from :func:`upstream`).
      rtol / atol: for outputs (atol is scaled by the output's size); probabilities and
        logits always use 1e-5 (the router is float32 whatever the activations' dtype).
    """
    run = run or apply_site
    want = reference(case)
    skip_near_ties(case, want)
    got = run(
        case.spec,
        {n: to_backend(p) for n, p in case.params.items()},
        to_backend(case.x),
        to_backend(case.h),
        to_backend(case.mask),
    )
    spec = case.spec
    _close(
        got.out,
        want.out,
        to_numpy,
        rtol,
        atol,
        f"output differs from the loop reference for {spec}",
    )
    if want.probs is not None and want.logits is not None:
        _close(
            got.probs, want.probs, to_numpy, 1e-5, 1e-5, f"routing probabilities differ for {spec}"
        )
        _close(got.logits, want.logits, to_numpy, 1e-5, 1e-5, f"router logits differ for {spec}")
    if grads is not None:
        check_grads(case, grads, grad_tol)


def check_grads(case: Any, grads: GradFn, tol: float = 1e-4) -> None:
    """Assert a backend's gradients (see :func:`check_site`) equal the loop gradients."""
    g_out = upstream(case)
    want = loop_gradients(case, g_out)
    got = grads(case, g_out)
    assert set(got) == set(want), f"gradients for {sorted(got)}; expected {sorted(want)}"
    for name, w in want.items():
        _close(got[name], w, np.asarray, tol, tol, f"gradient of {name} differs for {case.spec}")


def check_expert_kind(
    expert: Any,
    to_backend: Callable[[np.ndarray], Any] = np.asarray,
    to_numpy: Callable[[Any], np.ndarray] = np.asarray,
    examples: int = 25,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    run: Callable[..., Any] | None = None,
    grads: GradFn | None = None,
) -> None:
    """Run an expert kind through random sites on a backend against the loop reference.

    Routing is always checked against the loops; the mixing rule against the kind's
    ``loop_reference(params, probs, x, h, heads)`` when it declares one (one token, float64
    numpy), else only against its own ``mix``. Usable from any test suite (it drives
    hypothesis itself).
    """
    from hypothesis import HealthCheck, given, settings

    from mixlight.testing._strategies import site_cases

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(site_cases(expert=expert))
    def check(case: Any) -> None:
        out = reference(case).out
        if not np.all(np.isfinite(out)):
            raise AssertionError(f"{expert!r} produced non-finite outputs on {case.spec}")
        check_site(case, to_backend, to_numpy, run=run, rtol=rtol, atol=atol, grads=grads)

    check()
