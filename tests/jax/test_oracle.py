"""The JAX backend against the independent loop reference, forward and gradients: the layer's
``mix`` (custom_vjp MoV / MoLoRA where they apply) and the core math on jax arrays, in float32
and bfloat16, over padding, ties, heads and E = 1."""

import numpy as np
import pytest
from hypothesis import given, settings

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402

import mixlight.extend as mlx  # noqa: E402
from mixlight.testing import check_site, site_cases, upstream  # noqa: E402
from mixlight_jax.layers import mix  # noqa: E402

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TOL = {"float32": (1e-5, 1e-4), "bfloat16": (2e-2, 5e-2)}


def _np(a) -> np.ndarray:
    return np.asarray(jnp.asarray(a, jnp.float32), np.float64)


def _forward_and_grads(fn, case, g_out):
    """``fn(spec, params, x, h, mask)`` on the case's activation dtype and the gradients of
    ``sum(g_out * out)`` wrt x, h and every parameter, compiled together (one trace)."""
    dtype = DTYPES[case.dtype]
    arrays = {"x": case.x, "h": case.h, **case.params}

    def both(arrays, mask, g_out):
        def out(arrays):
            params = {n: arrays[n] for n in case.params}
            x, h = arrays["x"].astype(dtype), arrays["h"].astype(dtype)
            res = fn(case.spec, params, x, h, mask)
            return res.out.astype(jnp.float32), res

        _, pull, res = jax.vjp(out, arrays, has_aux=True)
        return res, pull(g_out)[0]

    res, grads = jax.jit(both)(arrays, case.mask, g_out)
    return res, {n: _np(g) for n, g in grads.items()}


def _check(fn, case):
    out_tol, grad_tol = TOL[case.dtype]
    g_out = upstream(case)
    res, grads = _forward_and_grads(fn, case, g_out)
    check_site(
        case,
        jnp.asarray,
        _np,
        run=lambda *_: res,
        rtol=out_tol,
        atol=out_tol,
        grads=lambda _, g: grads if np.array_equal(g, g_out) else None,
        grad_tol=grad_tol,
    )


# Each example traces the ops afresh (seconds): a few per run, more under the "ci" profile;
# any site, and the custom_vjp ops' own draws (token-routed MoV on the output, routed MoLoRA
# on the input), so that some examples always exercise them.
DRAWS = {
    "any-site": (site_cases(), max(8, settings().max_examples // 8)),
    "fused-mov": (
        site_cases(mlx.Vectors(), min_experts=2, routings=("token",), reads=("output",)),
        max(4, settings().max_examples // 16),
    ),
    "fused-routed-molora": (
        site_cases(mlx.LowRank(2, 8.0), min_experts=2, routings=("token",), reads=("input",)),
        max(4, settings().max_examples // 16),
    ),
}


@pytest.mark.parametrize("draw", list(DRAWS))
def test_jax_layer_mix_equals_loop_reference(draw):
    strategy, examples = DRAWS[draw]

    @settings(max_examples=examples)
    @given(strategy)
    def check(case):
        _check(mix, case)

    check()


@settings(max_examples=max(4, settings().max_examples // 16))
@given(site_cases(dtypes=("float32",)))
def test_core_math_on_jax_equals_loop_reference(case):
    _check(mlx.apply_site, case)
