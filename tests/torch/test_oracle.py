"""The torch backend against the independent loop reference, forward and gradients: the
adapter layer (fused MoV / MoLoRA ops where they apply) and the core math on torch tensors,
in float32 and bfloat16, over padding, ties, heads and E = 1."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mixlight.extend as mlx
from mixlight.testing import check_site, site_cases
from mixlight_torch.layers import AdapterLayer, AdapterSwitch
from mixlight_torch.primitives import TORCH_PRIMITIVES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# bf16 activations: outputs round at 8 bits; gradients sum rounded terms.
TOL = {"float32": (1e-5, 1e-4), "bfloat16": (2e-2, 5e-2)}


def _leaf(a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=dtype, requires_grad=True)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy()


class _Returns(torch.nn.Module):
    """A stand-in base module whose output is a given tensor (the site's ``h``)."""

    def __init__(self, h: torch.Tensor) -> None:
        super().__init__()
        self.h = h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h


def _layer(case, h: torch.Tensor) -> AdapterLayer:
    switch = AdapterSwitch()
    switch.masks = {case.spec.side: torch.from_numpy(case.mask)}
    layer = AdapterLayer(_Returns(h), switch)
    layer.add("default", case.spec, case.params)
    return layer


def _layer_result(case):
    """``run`` for :func:`check_site`: the adapter layer on the case's dtype."""
    dtype = DTYPES[case.dtype]

    def run(spec, params, x, h, mask):
        layer = _layer(case, h.to(dtype))
        out = layer(x.to(dtype))
        return mlx.SiteResult(out, layer.last_probs, layer.last_logits)

    return run


def _layer_grads(case, g_out: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients of ``sum(g_out * out)`` through the adapter layer (x, h, every parameter)."""
    dtype = DTYPES[case.dtype]
    x, h = _leaf(case.x, dtype), _leaf(case.h, dtype)
    layer = _layer(case, h)
    (layer(x).double() * torch.from_numpy(g_out).double()).sum().backward()
    named = {"x": x, "h": h, **dict(layer.adapter.items())}
    return {n: np.zeros(t.shape) if t.grad is None else _to_numpy(t.grad) for n, t in named.items()}


def _core_grads(case, g_out: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients through :func:`mixlight.extend.apply_site` on torch tensors (plain autograd)."""
    x, h = _leaf(case.x), _leaf(case.h)
    params = {n: _leaf(p) for n, p in case.params.items()}
    out = mlx.apply_site(case.spec, params, x, h, torch.from_numpy(case.mask)).out
    (out.double() * torch.from_numpy(g_out).double()).sum().backward()
    named = {"x": x, "h": h, **params}
    return {n: np.zeros(t.shape) if t.grad is None else _to_numpy(t.grad) for n, t in named.items()}


# Any site, and draws narrowed to one path each, so that every example exercises it: the
# fused ops (token-routed MoV on the output, per head or not; routed MoLoRA on the input).
FUSED = {
    "any-site": site_cases(),
    "fused-mov": site_cases(mlx.Vectors(), min_experts=2, routings=("token",), reads=("output",)),
    "fused-routed-molora": site_cases(
        mlx.LowRank(2, 8.0), min_experts=2, routings=("token",), reads=("input",)
    ),
    # the core math on torch (MoV routed on its input, token by token) with bf16 activations:
    # its router must still compute in float32 (sequence routing pools in float32 first)
    "core-bf16": site_cases(
        mlx.Vectors(), min_experts=2, routings=("token",), reads=("input",), dtypes=("bfloat16",)
    ),
}


@pytest.mark.parametrize("draw", list(FUSED))
@settings(max_examples=max(50, settings().max_examples // 2))
@given(data=st.data())
def test_adapter_layer_equals_loop_reference(draw, data):
    case = data.draw(FUSED[draw])
    out_tol, grad_tol = TOL[case.dtype]
    check_site(
        case,
        torch.from_numpy,
        _to_numpy,
        run=_layer_result(case),
        rtol=out_tol,
        atol=out_tol,
        grads=_layer_grads,
        grad_tol=grad_tol,
    )


@given(site_cases(dtypes=("float32",)))
def test_core_math_on_torch_equals_loop_reference(case):
    check_site(case, torch.from_numpy, _to_numpy, grads=_core_grads)


@pytest.mark.parametrize("n_experts", [2, 4, 5, 8, 10, 16, 30])
def test_top_k_ties_go_to_the_lowest_index(n_experts):
    """``torch.topk`` on equal values picks an arbitrary index (expert 2 of 4 on CPU)."""
    mask = TORCH_PRIMITIVES.top_k_mask(torch.zeros(3, n_experts), 2)
    want = torch.zeros(3, n_experts)
    want[:, :2] = 1
    torch.testing.assert_close(mask, want)
