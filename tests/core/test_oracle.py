"""The independent loop reference: checked by hand, by finite differences and for
independence; then the core's numpy math is checked against it (forward)."""

import ast
import pathlib
from typing import ClassVar

import attrs
import numpy as np
import pytest
from hypothesis import assume, given, settings

import mixlight as ml
import mixlight.extend as mlx
from mixlight.math import merge_vectors
from mixlight.testing import (
    SiteCase,
    check_expert_kind,
    check_site,
    loop_gradients,
    loop_reference,
    site_cases,
)

TESTING = pathlib.Path(ml.__file__).parent / "testing"


def _case(expert, num_experts, router, routing="token", heads=None, reads=None, **arrays):
    reads = reads or expert.router_reads
    x, h = arrays["x"], arrays["h"]
    spec = mlx.SiteSpec(
        "s", ml.Site("s", expert, reads, heads), num_experts, router, routing,
        x.shape[-1], h.shape[-1], heads,
    )  # fmt: skip
    mask = arrays.get("mask", np.ones(h.shape[:2], np.float32))
    return SiteCase(spec, arrays["params"], x, h, mask)


# --- by hand ------------------------------------------------------------------------------------


def test_exact_ties_go_to_the_lowest_expert_index_renormalised_or_not():
    h = np.ones((1, 1, 2), np.float32)
    params = {"router": np.zeros((2, 4), np.float32), "vectors": np.eye(4, 2, dtype=np.float32)}
    renorm = loop_reference(_case(mlx.Vectors(), 4, ml.TopK(2), x=h, h=h, params=params))
    np.testing.assert_array_equal(renorm.probs, [[[0.5, 0.5, 0, 0]]])
    raw = loop_reference(_case(mlx.Vectors(), 4, ml.TopK(1, False), x=h, h=h, params=params))
    np.testing.assert_array_equal(raw.probs, [[[0.25, 0, 0, 0]]])
    np.testing.assert_allclose(raw.out, [[[0.25, 0.0]]])  # expert 0's vector, scaled by 1/E


@pytest.mark.filterwarnings("ignore:TopK\\(k=1, renormalize=True\\)")
def test_sequence_pooling_left_padding_and_an_all_padding_row():
    # route_in = h, d = 1: row 0 is left-padded (tokens 3 and 5), row 1 is all padding
    h = np.array([[[100.0], [3.0], [5.0]], [[7.0], [8.0], [9.0]]], np.float32)
    mask = np.array([[0, 1, 1], [0, 0, 0]], np.float32)
    params = {"router": np.array([[1.0, -1.0]], np.float32), "vectors": np.ones((2, 1), np.float32)}
    got = loop_reference(
        _case(mlx.Vectors(), 2, ml.TopK(1), "sequence", x=h, h=h, params=params, mask=mask)
    )
    np.testing.assert_allclose(got.logits, [[[4.0, -4.0]], [[0.0, 0.0]]])  # mean(3, 5); zeros
    np.testing.assert_array_equal(got.probs, [[[1, 0]], [[1, 0]]])  # the tie goes to expert 0
    assert got.probs.shape == (2, 1, 2) and np.isfinite(got.out).all()


def test_per_head_slices_share_the_kernel_and_vectors_are_head_major():
    # two heads of width 2; head 0 routes to expert 0, head 1 to expert 1 (one-hot by logits)
    h = np.array([[[10.0, 0.0, 0.0, 10.0]]], np.float32)
    router = np.array([[50.0, 0.0], [0.0, 50.0]], np.float32)
    vectors = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
    got = loop_reference(
        _case(
            mlx.Vectors(),
            2,
            ml.SoftMerge(),
            heads=2,
            x=h,
            h=h,
            params={"router": router, "vectors": vectors},
        )
    )
    np.testing.assert_allclose(got.probs[0, 0], [[1, 0], [0, 1]], atol=1e-12)
    np.testing.assert_allclose(got.out[0, 0], [10 * 1, 0, 0, 10 * 8], atol=1e-9)


def test_low_rank_scale_is_alpha_over_rank_and_one_expert_is_lora():
    x = np.array([[[1.0, 2.0]]], np.float32)
    h = np.zeros((1, 1, 1), np.float32)
    a = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)  # [1, 2, 2]
    b = np.array([[[1.0], [1.0]]], np.float32)  # [1, 2, 1]
    got = loop_reference(
        _case(mlx.LowRank(2, 16.0), 1, ml.SoftMerge(), x=x, h=h, params={"lora_A": a, "lora_B": b})
    )
    assert got.probs is None
    np.testing.assert_allclose(got.out, [[[8.0 * 3.0]]])


# --- the hand-derived gradients against finite differences of the loop forward -------------------


def _finite_differences(case: SiteCase, g_out: np.ndarray, eps: float = 1e-6) -> dict:
    def loss(**changed):
        arrays = {"x": case.x, "h": case.h, **case.params, **changed}
        params = {n: arrays[n] for n in case.params}
        moved = SiteCase(case.spec, params, arrays["x"], arrays["h"], case.mask)
        return float((loop_reference(moved).out * g_out).sum())

    grads = {}
    for name, base in {"x": case.x, "h": case.h, **case.params}.items():
        base = base.astype(np.float64)
        g = np.zeros(base.shape)
        for i in np.ndindex(base.shape):
            up, down = base.copy(), base.copy()
            up[i] += eps
            down[i] -= eps
            g[i] = (loss(**{name: up}) - loss(**{name: down})) / (2 * eps)
        grads[name] = g
    return grads


@settings(max_examples=15)
@given(site_cases(max_experts=4))
def test_loop_gradients_equal_finite_differences(case):
    top_k = case.spec.router.top_k
    if case.spec.has_router and top_k is not None and top_k < case.spec.num_experts:
        ordered = -np.sort(-loop_reference(case).logits, axis=-1)
        assume((ordered[..., top_k - 1] - ordered[..., top_k]).min() > 1e-3)  # no jump nearby
    g_out = np.random.default_rng(0).standard_normal(case.h.shape)
    want = _finite_differences(case, g_out)
    got = loop_gradients(case, g_out)
    assert got.keys() == want.keys()
    for name in want:
        scale = 1 + np.abs(want[name]).max()
        np.testing.assert_allclose(got[name], want[name], atol=1e-6 * scale, err_msg=name)


# --- independence -------------------------------------------------------------------------------

FORBIDDEN = (
    "einops",
    "mixlight.math",
    "mixlight.primitives",
    "mixlight.site_spec",
    "mixlight.site_math",
    "mixlight.site_planning",
    "mixlight._backend_registry",
)


@pytest.mark.parametrize("name", ["_loops.py", "_loop_grads.py"])
def test_loop_reference_shares_no_code_with_the_core_math(name):
    tree = ast.parse((TESTING / name).read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert not [m for m in imported if m and m.startswith(FORBIDDEN)], imported


# --- the core's numpy math against the loops ----------------------------------------------------


# Cheap (milliseconds an example), and a bug may live in one corner (renormalised top-k, an
# all-padding row under sequence routing): many examples, whatever the profile.
@settings(max_examples=max(200, settings().max_examples))
@given(site_cases())
def test_core_numpy_math_equals_loop_reference(case):
    check_site(case, np.asarray, np.asarray)


def test_vectors_and_lowrank_conform_on_numpy():
    check_expert_kind(mlx.Vectors(), examples=10)
    check_expert_kind(mlx.LowRank(2, 4.0), examples=10)


# --- a custom expert kind declares its own loop reference ----------------------------------------


@mlx.register_expert
@attrs.frozen
class _OracleBiases(mlx.ExpertKind):
    """``h + probs @ biases`` in the core's math, with a per-token loop reference."""

    kind: ClassVar[str] = "oracle_test_biases"
    router_reads: ClassVar[str] = "output"
    wrong: bool = False  # a loop reference that disagrees, to show the check can fail

    def param_specs(self, num_experts, d_in, d_out):
        return {"biases": mlx.ParamSpec((num_experts, d_out), "zeros", axes=("expert", "embed"))}

    def mix(self, params, probs, x, h, heads):
        return h + mlx.primitives_for(h).cast_like(merge_vectors(probs, params["biases"]), h)

    def loop_reference(self, params, probs, x, h, heads):
        out = np.array(h, np.float64)
        for e in range(params["biases"].shape[0]):
            weight = 1.0 if probs is None else float(probs[e])
            out += (2.0 if self.wrong else 1.0) * weight * params["biases"][e]
        return out


def test_a_custom_kinds_loop_reference_is_used_and_can_fail():
    check_expert_kind(_OracleBiases(), examples=10)
    with pytest.raises(AssertionError, match="output differs from the loop reference"):
        check_expert_kind(_OracleBiases(wrong=True), examples=10)


@settings(max_examples=10, deadline=None)
@given(
    site_cases(
        expert=_OracleBiases(), dtypes=("float32",), max_experts=3, seqs=(1, 2), reads=("output",)
    )
)
def test_loop_gradients_of_a_custom_kind_come_from_central_differences(case):
    """A custom kind gets reference gradients (its mixing rule by central differences of its
    loop, its routing by hand), not a refusal: they equal h + p @ B's own derivatives."""
    rng = np.random.default_rng(0)
    g = rng.standard_normal(case.h.shape)
    grads = loop_gradients(case, g)
    assert set(grads) == {"x", "h", *case.params}
    probs = loop_reference(case).probs
    p = np.ones(case.h.shape[:2] + (1,)) if probs is None else probs
    p = np.broadcast_to(p, case.h.shape[:2] + p.shape[-1:])
    np.testing.assert_allclose(grads["biases"], np.einsum("bse,bsd->ed", p, g), atol=1e-7)
    np.testing.assert_allclose(grads["x"], 0.0, atol=1e-9)  # routed on the output: no x
    if probs is None:
        np.testing.assert_allclose(grads["h"], g, atol=1e-7)
