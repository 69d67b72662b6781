"""The core math on numpy: routing, MoV, MoLoRA, aux losses (hypothesis-driven); ``reference``
is the independent loop reference of :mod:`mixlight.testing`."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mixlight as ml
import mixlight.extend as mlx
from mixlight.math import (
    load_balance_loss,
    lowrank_mixture,
    mix_vectors,
    pool_sequence,
    router_logits,
    router_probs,
    router_z_loss,
)
from mixlight.testing import check_site, reference, site_cases

finite = dict(allow_nan=False, allow_infinity=False)
logit_arrays = (
    st.integers(1, 12)
    .flatmap(
        lambda e: st.lists(
            st.lists(st.floats(-20, 20, **finite), min_size=e, max_size=e), min_size=1, max_size=6
        )
    )
    .map(lambda rows: np.asarray(rows, np.float32))
)


@given(logit_arrays)
def test_soft_probs_are_a_distribution(logits):
    probs = router_probs(logits)
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


@given(logit_arrays, st.data())
def test_top_k_keeps_exactly_k(logits, data):
    k = data.draw(st.integers(1, logits.shape[-1]))
    # distinct logits, so that "the k largest" is unambiguous
    logits = logits + np.arange(logits.shape[-1], dtype=np.float32) * 1e-3
    probs = router_probs(logits, k, renormalize=True)
    assert ((probs > 0).sum(-1) <= k).all()
    soft = router_probs(logits)
    assert ((soft > 0).sum(-1) < k).any() or ((probs > 0).sum(-1) == k).all()
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    raw = router_probs(logits, k, renormalize=False)
    kept = raw > 0
    np.testing.assert_allclose(raw[kept], soft[kept], rtol=1e-6)
    assert (raw.sum(-1) <= 1 + 1e-6).all()


def test_top_k_ties_go_to_lower_expert():
    probs = router_probs(np.zeros((1, 4), np.float32), 2)
    np.testing.assert_array_equal(probs, [[0.5, 0.5, 0, 0]])


@given(site_cases(expert=mlx.Vectors()))
def test_mov_equals_loop_reference(case):
    """Routing and mixing both from the independent loops (not the core's probabilities)."""
    check_site(case, np.asarray, np.asarray)


@given(site_cases(expert=mlx.LowRank(3)))
def test_molora_equals_loop_reference(case):
    check_site(case, np.asarray, np.asarray)


@given(st.integers(1, 8), st.integers(1, 6), st.integers(0, 1000))
def test_one_hot_router_reproduces_that_expert(num_experts, d, seed):
    rng = np.random.default_rng(seed)
    e = rng.integers(num_experts)
    probs = np.zeros((2, 3, num_experts))
    probs[..., e] = 1
    h, x = rng.standard_normal((2, 3, d)), rng.standard_normal((2, 3, 5))
    vectors = rng.standard_normal((num_experts, d))
    np.testing.assert_allclose(mix_vectors(h, probs, vectors), h * vectors[e])
    a, b = rng.standard_normal((num_experts, 5, 2)), rng.standard_normal((num_experts, 2, d))
    np.testing.assert_allclose(
        lowrank_mixture(x, probs, a, b, 2.0), 2.0 * (x @ a[e]) @ b[e], rtol=1e-10
    )


@given(st.integers(0, 1000))
def test_one_expert_reduces_to_ia3_and_lora(seed):
    rng = np.random.default_rng(seed)
    h, x = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 5))
    vec = rng.standard_normal((1, 4))
    np.testing.assert_allclose(mix_vectors(h, None, vec), h * vec[0])
    a, b = rng.standard_normal((1, 5, 2)), rng.standard_normal((1, 2, 4))
    np.testing.assert_allclose(lowrank_mixture(x, None, a, b, 0.5), 0.5 * x @ a[0] @ b[0])
    # and a one-expert softmax router is the same thing
    np.testing.assert_allclose(mix_vectors(h, np.ones((2, 3, 1)), vec), h * vec[0])


@given(site_cases())
def test_permuting_experts_and_router_columns_is_invisible(case):
    if case.spec.num_experts == 1:
        return
    if case.spec.router.top_k is not None:
        return  # top-k tie-breaking by index is not permutation invariant
    perm = np.random.default_rng(0).permutation(case.spec.num_experts)
    permuted = {n: (p[:, perm] if n == "router" else p[perm]) for n, p in case.params.items()}
    a = reference(case)
    b = mlx.apply_site(
        case.spec, permuted, case.x.astype(np.float64), case.h.astype(np.float64), case.mask
    )
    np.testing.assert_allclose(a.out, b.out, rtol=1e-5, atol=1e-6)


@given(site_cases())
def test_fresh_adapter_is_identity(case):
    fresh = case.spec.init_params(np.random.default_rng(0))
    if case.spec.router.top_k is not None and not case.spec.router.renormalize:
        return  # the reference code's unrenormalised top-k shrinks a fresh MoV (paper §3.2)
    out = mlx.apply_site(case.spec, fresh, case.x, case.h, case.mask).out
    np.testing.assert_allclose(out, case.h, rtol=1e-6, atol=1e-6)


def test_unrenormalised_top1_shrinks_fresh_mov_by_its_probability():
    spec_case = ml.AdapterConfig([ml.Site("a", mlx.Vectors())], 10, ml.TopK(1, renormalize=False))
    spec = mlx.plan_sites(spec_case, {"a": mlx.ModuleShape(4, 4)})[0]
    params = spec.init_params(np.random.default_rng(0))
    h = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    res = mlx.apply_site(spec, params, h, h)
    np.testing.assert_allclose(res.out, h * res.probs.max(-1, keepdims=True), rtol=1e-5)


@given(site_cases(), st.integers(1, 4))
def test_sequence_routing_ignores_padding(case, extra):
    if case.spec.routing != "sequence" or case.spec.num_experts == 1:
        return

    def pad(a):
        return np.concatenate([a, 100 * np.ones(a.shape[:1] + (extra,) + a.shape[2:])], 1)

    mask = np.concatenate([case.mask, np.zeros((case.mask.shape[0], extra))], 1)
    a = reference(case)
    b = mlx.apply_site(case.spec, case.params, pad(case.x), pad(case.h), mask)
    n = case.x.shape[1]
    np.testing.assert_allclose(b.out[:, :n], a.out, rtol=1e-5, atol=1e-5)


def test_pool_sequence_masked_mean_and_shape_errors():
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    np.testing.assert_allclose(pool_sequence(x, np.array([[1, 1, 0]]))[0, 0], x[0, :2].mean(0))
    with pytest.raises(ValueError, match=r"\[batch, seq, d\]"):
        pool_sequence(x[0])
    with pytest.raises(ValueError, match="mask has shape"):
        pool_sequence(x, np.ones((1, 2)))


def test_aux_losses_hand_computed():
    # two tokens, two experts: token 0 prefers expert 0 strongly, token 1 is uniform
    logits = np.array([[np.log(3.0), 0.0], [0.0, 0.0]], np.float32)
    probs = np.array([[0.75, 0.25], [0.5, 0.5]])
    fraction = np.array([1.0, 0.0])  # argmax ties go to expert 0
    want = 2 * (fraction * probs.mean(0)).sum()
    np.testing.assert_allclose(load_balance_loss(logits), want, rtol=1e-6)
    lse = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(router_z_loss(logits), (lse**2).mean(), rtol=1e-6)
    np.testing.assert_allclose(load_balance_loss(np.zeros((8, 4), np.float32)), 1.0, rtol=1e-6)


def test_router_logits_per_head_share_the_kernel():
    rng = np.random.default_rng(0)
    x, w = (rng.standard_normal(s).astype(np.float32) for s in ((2, 6), (3, 5)))
    logits = router_logits(x, w, heads=2)
    assert logits.shape == (2, 2, 5) and logits.dtype == np.float32
    np.testing.assert_allclose(logits[:, 1], x[:, 3:] @ w, rtol=1e-5)
