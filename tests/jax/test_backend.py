"""The JAX backend: equivalence with the numpy reference, custom_vjp gradients, injection into
NNX models (the NNX T5 and a small MLP), training, save/load, errors, torch <-> JAX adapter
portability, and a data-parallel step on 8 host devices."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before any transformers import
jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import attrs  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import mixlight as ml  # noqa: E402
import mixlight.extend as mlx  # noqa: E402
from mixlight.math import lowrank_mixture, mix_vectors, router_logits, router_probs  # noqa: E402
from mixlight.testing import check_site, site_cases  # noqa: E402
from mixlight_jax import (  # noqa: E402
    AdapterParam,
    adapter_layers,
    fused_molora,
    fused_mov,
    fused_routed_molora,
    inject,
    no_routing_trace,
    remove_adapters,
    sequence_masks,
    t5,
)
from mixlight_jax.layers import mix  # noqa: E402

HERE = Path(__file__).parent
BF16 = jnp.bfloat16
F32 = np.dtype(np.float32)
# Each example compiles: a sixth of the profile's count (4 by default, 16 under "ci").
MANY = settings(max_examples=max(3, settings().max_examples // 6))


def _np(x) -> np.ndarray:
    return np.asarray(jnp.asarray(x, jnp.float32))


def _bf16_round(a: np.ndarray) -> np.ndarray:
    return np.asarray(jnp.asarray(a, BF16).astype(jnp.float32))


# --- registry ---------------------------------------------------------------------------------


def test_entry_point_is_lazy_and_owns_nnx_and_jax_arrays():
    code = (
        "import sys, mixlight, mixlight_jax; p = mixlight.extend.installed_backends()['jax'];"
        "print(p.framework, p.extra, 'jax' in sys.modules, 'flax' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["jax", "jax", "False", "False"]
    backend = mlx.load_backend("jax")
    assert mlx.primitives_for(jnp.zeros(2)).name == "jax"
    assert backend.owns_model(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    assert not backend.owns_model(object()) and not backend.owns_array(np.zeros(2))


def test_top_k_mask_ties_go_to_the_lower_index():
    prims = mlx.primitives_for(jnp.zeros(1))
    x = jnp.array([[0.2, 0.5, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(prims.top_k_mask(x, 2), [[0, 1, 1, 0], [1, 1, 0, 0]])
    assert prims.to_float32(jnp.ones(2, BF16)).dtype == jnp.float32


# --- math: numpy reference, custom_vjp, jit ---------------------------------------------------


@MANY
@given(site_cases())
def test_jax_paths_equal_numpy_reference(case):
    """The core math on jax arrays and the fast paths, float32 and bfloat16 (bf16 activations,
    float32 adapter parameters, against the reference on the rounded inputs), compiled once."""
    spec = case.spec

    def paths(params, x, h, mask):
        low = mix(spec, params, x.astype(BF16), h.astype(BF16), mask)
        return mlx.apply_site(spec, params, x, h, mask), mix(spec, params, x, h, mask), low

    args = [{n: jnp.asarray(p) for n, p in case.params.items()}, case.x, case.h, case.mask]
    core, fast, low = jax.jit(paths)(*args)
    assert low.out.dtype == BF16 and (low.probs is None or low.probs.dtype == jnp.float32)
    check_site(case, jnp.asarray, _np, run=lambda *_: core)
    check_site(case, jnp.asarray, _np, run=lambda *_: fast)
    rounded = attrs.evolve(case, x=_bf16_round(case.x), h=_bf16_round(case.h))
    check_site(rounded, jnp.asarray, _np, run=lambda *_: low, rtol=1e-2, atol=1e-2)


@settings(max_examples=2)
@given(site_cases())
def test_jit_equals_eager(case):
    params = {n: jnp.asarray(p) for n, p in case.params.items()}
    args = (params, jnp.asarray(case.x), jnp.asarray(case.h), jnp.asarray(case.mask))
    jitted = jax.jit(mix, static_argnums=0)(case.spec, *args)  # SiteResult is a pytree
    eager = mix(case.spec, *args)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager), strict=True):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-6, atol=1e-6)


def _plain_mov(h, w, v, heads, top_k, renormalize):
    logits = router_logits(h, w, heads)
    probs = router_probs(logits, top_k, renormalize)
    return mix_vectors(h, probs, v, heads), probs, logits


@st.composite
def mov_inputs(draw):
    """``[h, router, vectors, g_out, g_probs]`` (float32 numpy) and ``(heads, top_k,
    renormalize)``."""
    heads = draw(st.sampled_from([None, 1, 2, 4]))
    n_experts = draw(st.integers(1, 6))
    top_k = draw(st.sampled_from([None, *range(1, n_experts + 1)]))
    d = (heads or 1) * draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    arrays = [rng.standard_normal(s) for s in [(2, 3, d), (d // (heads or 1), n_experts)]]
    arrays += [1 + 0.5 * rng.standard_normal((n_experts, d))]
    arrays += [rng.standard_normal(s) for s in [(2, 3, d), (2, 3, heads or 1, n_experts)]]
    return [np.float32(a) for a in arrays], (heads, top_k, draw(st.booleans()))


def _values_and_grads(fns, inputs, cotangents):
    """For each fn: its outputs and the gradients of ``sum(cotangent * output)`` wrt every
    input; all compiled together."""
    argnums = tuple(range(len(inputs)))

    def one(fn, xs):
        def loss(*xs):
            outs = jax.tree.leaves(fn(*xs))
            return sum(
                jnp.sum(c.reshape(o.shape) * o.astype(jnp.float32))
                for c, o in zip(cotangents, outs, strict=True)
            )

        return fn(*xs), jax.grad(loss, argnums)(*xs)

    return jax.jit(lambda *xs: [one(fn, xs) for fn in fns])(*inputs)


def _assert_close(got, want, tol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.dtype == w.dtype
        scale = 1.0 + float(jnp.abs(w.astype(jnp.float32)).max())
        np.testing.assert_allclose(_np(g), _np(w), rtol=tol, atol=tol * scale)


@MANY
@given(mov_inputs(), st.sampled_from([jnp.float32, BF16]))
def test_fused_mov_values_and_grads_equal_plain_autodiff(drawn, dtype):
    """Cotangents reach out, probs and logits (as an auxiliary loss does)."""
    (h, w, v, g_out, g_probs), static = drawn
    inputs = [jnp.asarray(h, dtype), jnp.asarray(w), jnp.asarray(v)]
    cotangents = [jnp.asarray(g_out), jnp.asarray(g_probs), jnp.asarray(g_probs[::-1])]
    fns = [lambda *a: fused_mov(*a, *static), lambda *a: _plain_mov(*a, *static)]
    (got, got_grads), (want, want_grads) = _values_and_grads(fns, inputs, cotangents)
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    _assert_close(got, want, tol)
    _assert_close(got_grads, want_grads, 2 * tol)


@MANY
@given(
    st.integers(1, 5),
    st.integers(1, 4),
    st.booleans(),
    st.sampled_from([jnp.float32, BF16]),
    st.integers(0, 2**31),
)
def test_fused_molora_values_and_grads_equal_plain_autodiff(
    n_experts, rank, broadcast, dtype, seed
):
    """Gradients of x, probs, A and B; probabilities per token or broadcast over the sequence,
    and None for one expert."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, 4, 5)), dtype)
    probs = jax.nn.softmax(jnp.asarray(rng.standard_normal((2, 1 if broadcast else 4, n_experts))))
    a = jnp.asarray(rng.standard_normal((n_experts, 5, rank)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((n_experts, rank, 3)), jnp.float32)
    cotangents = [jnp.asarray(rng.standard_normal((2, 4, 3)))]

    def bind(op, routed):
        return lambda x, p, a, b: op(x, p if routed else None, a, b, 4.0)

    routed = [True, False] if n_experts == 1 else [True]
    fns = [bind(op, r) for r in routed for op in (fused_molora, lowrank_mixture)]
    results = _values_and_grads(fns, [x, probs, a, b], cotangents)
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    for got, want in zip(results[::2], results[1::2], strict=True):
        _assert_close(got, want, tol)


def _plain_routed_molora(x, w, a, b, scale, top_k, renormalize):
    logits = router_logits(x, w)
    probs = router_probs(logits, top_k, renormalize)
    return lowrank_mixture(x, probs, a, b, scale), probs, logits


@MANY
@given(
    st.integers(1, 6),
    st.integers(1, 4),
    st.sampled_from([None, 1, 2, 3]),
    st.booleans(),
    st.sampled_from([jnp.float32, BF16]),
    st.integers(0, 2**31),
)
def test_fused_routed_molora_values_and_grads_equal_plain_autodiff(
    n_experts, rank, top_k, renormalize, dtype, seed
):
    """Router and mixture in one op: cotangents reach the delta, probs and logits."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, 4, 5)), dtype)
    w = jnp.asarray(rng.standard_normal((5, n_experts)) * 1.5, jnp.float32)
    logits = np.asarray(x, np.float32) @ np.asarray(w)
    assume(top_k is None or top_k >= n_experts or _top_k_gap(logits, top_k) > 1e-3)
    a = jnp.asarray(rng.standard_normal((n_experts, 5, rank)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((n_experts, rank, 3)), jnp.float32)
    shapes = [(2, 4, 3), (2, 4, n_experts), (2, 4, n_experts)]
    cotangents = [jnp.asarray(rng.standard_normal(s)) for s in shapes]
    static = (2.0, top_k, renormalize)
    fns = [
        lambda *t: fused_routed_molora(*t, *static),
        lambda *t: _plain_routed_molora(*t, *static),
    ]
    (got, got_grads), (want, want_grads) = _values_and_grads(fns, [x, w, a, b], cotangents)
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    _assert_close(got, want, tol)
    _assert_close(got_grads, want_grads, 2 * tol)


def _top_k_gap(logits: np.ndarray, top_k: int) -> float:
    """Smallest gap between the k-th and (k+1)-th largest logit of any row."""
    ordered = -np.sort(-logits.reshape(-1, logits.shape[-1]), axis=-1)
    return float((ordered[:, top_k - 1] - ordered[:, top_k]).min())


def test_fused_routed_molora_keeps_x_once():
    x, w = jnp.ones((2, 3, 8)), jnp.ones((8, 4)) * 0.1
    a, b = jnp.ones((4, 8, 2)), jnp.ones((4, 2, 5))
    _, vjp = jax.vjp(lambda *t: fused_routed_molora(*t, 1.0)[0], x, w, a, b)
    shapes = sorted(tuple(r.shape) for r in jax.tree.leaves(vjp) if hasattr(r, "shape"))
    assert shapes == sorted([(2, 3, 8), (8, 4), (4, 8, 2), (4, 2, 5), (2, 3, 4)]), shapes


def test_fused_mov_saves_only_inputs_and_probs():
    h = jnp.ones((2, 3, 8))
    w, v = jnp.ones((2, 4)) * 0.1, jnp.ones((4, 8))
    _, vjp = jax.vjp(lambda h, w, v: fused_mov(h, w, v, heads=4)[0], h, w, v)
    residuals = [x for x in jax.tree.leaves(vjp) if hasattr(x, "shape")]
    shapes = sorted(tuple(x.shape) for x in residuals)
    assert shapes == sorted([(2, 3, 8), (2, 4), (4, 8), (2, 3, 4, 4)]), shapes


def test_fused_ops_reject_bad_shapes():
    with pytest.raises(ValueError, match="not divisible by heads=3"):
        fused_mov(jnp.ones((2, 8)), jnp.ones((2, 4)), jnp.ones((4, 8)), heads=3)
    with pytest.raises(ValueError, match=r"vectors has shape \(3, 8\)"):
        fused_mov(jnp.ones((2, 8)), jnp.ones((8, 4)), jnp.ones((3, 8)))
    with pytest.raises(ValueError, match="2 experts need routing probabilities"):
        fused_molora(jnp.ones((2, 5)), None, jnp.ones((2, 5, 1)), jnp.ones((2, 1, 3)), 1.0)
    with pytest.raises(ValueError, match=r"router_weight has shape \(5, 3\); expected \[5, 2\]"):
        fused_routed_molora(
            jnp.ones((2, 5)), jnp.ones((5, 3)), jnp.ones((2, 5, 1)), jnp.ones((2, 1, 3)), 1.0
        )


# --- a small NNX model of another shape --------------------------------------------------------


class Gelu(nnx.Module):
    def __call__(self, x):
        return jax.nn.gelu(x)


class Block(nnx.Module):
    def __init__(self, d: int, d_ff: int, dtype, rngs: nnx.Rngs):
        linear = functools.partial(nnx.Linear, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.fc1 = linear(d, d_ff)
        self.act = Gelu()
        self.fc2 = linear(d_ff, d)
        self.norm = nnx.LayerNorm(d, dtype=dtype, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.norm(x + self.fc2(self.act(self.fc1(x))))


class MLP(nnx.Module):
    def __init__(self, d: int = 8, d_ff: int = 16, seed: int = 0, dtype=jnp.float32):
        rngs = nnx.Rngs(seed)
        self.layers = nnx.List([Block(d, d_ff, dtype, rngs) for _ in range(2)])

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


MLP_MOV = ml.MoV(4, targets=[r"layers\.\d+\.act"], router=ml.SoftMerge(0.1, 0.01))
MLP_MOLORA = ml.MoLoRA(3, rank=2, targets=[r"layers\.\d+\.fc(1|2)"], router=ml.TopK(2))
X = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 8)), jnp.float32)


@nnx.jit
def _forward(model, x):
    return model(x)


def _perturb(model, scale=0.3, seed=1):
    """Move every adapter parameter off its initial value (numpy noise: nothing to compile)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, AdapterParam)
    noisy = jax.tree.map(lambda a: jnp.asarray(a + scale * rng.standard_normal(a.shape)), state)
    nnx.update(model, noisy)
    return model


def _snapshot(model):
    """Path -> (variable type, numpy copy) of every parameter."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {path: (type(v), np.array(v.get_value())) for path, v in flat}


def _adapter_values(model):
    return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, AdapterParam))}


@pytest.mark.parametrize("config", [MLP_MOV, MLP_MOLORA], ids=["mov", "molora"])
def test_user_patterns_on_an_mlp(config):
    model = MLP()
    base = _forward(model, X)
    ml.inject(model, config, backend="jax")
    # fresh adapters are the identity
    np.testing.assert_allclose(_forward(model, X), base, atol=1e-6)
    specs = mlx.load_backend("jax").adapter_state(model)[1]
    assert len(specs) == (2 if config is MLP_MOV else 4)
    count = ml.trainable_parameters(model)
    # MoV: router [16, 4] + vectors [4, 16] per act; MoLoRA: router, A, B on fc1 and fc2
    want = 2 * (64 + 64) if config is MLP_MOV else 2 * ((24 + 48 + 96) + (48 + 96 + 48))
    assert count.trainable == want and count.total > want
    assert model.layers[0].fc1.in_features == 8  # base attributes stay readable


def test_initialisation_is_the_site_specs_from_a_seed():
    model = inject(MLP(), MLP_MOLORA, seed=7)
    _, specs, arrays = mlx.load_backend("jax").adapter_state(model)
    rng = np.random.default_rng(7)
    want = {s.canonical_name(n): a for s in specs for n, a in s.init_params(rng).items()}
    assert arrays.keys() == want.keys()
    for name, value in want.items():
        np.testing.assert_array_equal(arrays[name], value)
    first, second = (_adapter_values(inject(MLP(), MLP_MOV, rngs=nnx.Rngs(1))) for _ in range(2))
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_inject_takes_the_cores_seed_and_an_nnx_rngs_only():
    """``mixlight_jax.inject(seed=)`` is ``ml.inject(seed=)``; ``rngs=`` takes an nnx.Rngs."""
    by_seed = _adapter_values(inject(MLP(), MLP_MOV, seed=3))
    np.testing.assert_equal(by_seed, _adapter_values(ml.inject(MLP(), MLP_MOV, seed=3)))
    with pytest.raises(TypeError, match=r"takes an nnx.Rngs, got int; give an int as seed="):
        inject(MLP(), MLP_MOV, rngs=3)
    with pytest.raises(TypeError, match="seed= or rngs=, not both"):
        inject(MLP(), MLP_MOV, seed=3, rngs=nnx.Rngs(3))


def test_bfloat16_model_keeps_float32_adapters_and_routers():
    model = MLP(dtype=BF16)
    config = ml.MoLoRA(3, rank=2, targets=[r".*\.fc1"], router=ml.TopK(2))
    mov = ml.MoV(4, targets=[r".*\.act"]).sites
    ml.inject(model, attrs.evolve(config, sites=config.sites + mov))
    x = X.astype(BF16)

    def loss(model):
        out = model(x)
        return out.astype(jnp.float32).mean(), out

    grad_fn = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, AdapterParam), has_aux=True)
    (_, out), grads = nnx.jit(grad_fn)(model)
    assert out.dtype == BF16
    assert {v.dtype for v in jax.tree.leaves(nnx.state(model, AdapterParam))} == {F32}
    assert {g.dtype for g in jax.tree.leaves(grads)} == {F32}
    assert model.layers[0].fc1.last_logits.get_value().dtype == jnp.float32
    assert model.layers[1].act.last_probs.get_value().dtype == jnp.float32


def test_optimizer_step_under_jit_changes_only_adapters():
    model = ml.inject(MLP(), MLP_MOV)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=AdapterParam)

    @nnx.jit
    def step(model, optimizer, x):
        def loss_fn(model):
            return (model(x) ** 2).mean() + ml.aux_losses(model)

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, AdapterParam))(model)
        optimizer.update(model, grads)
        return loss

    before = _snapshot(model)
    step(model, optimizer, X)
    after = _snapshot(model)
    for path, (kind, value) in before.items():
        changed = not np.array_equal(value, after[path][1])
        assert changed == issubclass(kind, AdapterParam), path
    stats = ml.routing_stats(model)  # recorded inside nnx.jit
    assert set(stats) == {"layers.0.act", "layers.1.act"}
    np.testing.assert_allclose(stats["layers.0.act"]["mean_prob"].sum(), 1.0, rtol=1e-5)
    assert float(ml.aux_losses(model)) > 0


def test_sequence_routing_ignores_padding():
    """With the mask given, a padded sequence routes like the unpadded one."""
    model = ml.inject(MLP(), ml.MoV(4, targets=[r".*\.act"], routing="sequence"))
    _perturb(model)
    padded = jnp.concatenate([X, jnp.zeros((2, 3, 8))], axis=1)
    mask = jnp.asarray(np.arange(8) < 5, jnp.float32)[None].repeat(2, 0)

    @nnx.jit
    def masked(model, x, mask):
        with sequence_masks(model, attention_mask=mask):
            return model(x)

    np.testing.assert_allclose(masked(model, padded, mask)[:, :5], _forward(model, X), atol=1e-5)
    assert not np.allclose(_forward(model, padded)[:, :5], _forward(model, X), atol=1e-3)
    assert model.layers[0].act.masks.get_value() == {}


def test_a_raw_jax_loop_refuses_to_record_and_says_what_records():
    """NNX state cannot change inside ``lax.fori_loop`` / ``while_loop`` bodies: a call there
    raises naming the ways that work, never leaving an earlier call's routing to be read."""
    model = _perturb(ml.inject(MLP(), MLP_MOV))
    once = _forward(model, X)

    @nnx.jit
    def twice(model, x):
        return jax.lax.fori_loop(0, 2, lambda i, x: model(x), x)

    with pytest.raises(
        RuntimeError, match=r"raw JAX transform.*fori_loop.*nnx.fori_loop.*no_routing_trace"
    ):
        twice(model, X)
    with no_routing_trace(model):  # records nothing, and clears what an earlier call left
        looped = twice(model, X)
    np.testing.assert_allclose(looped, _forward(model, once), atol=1e-5)
    with no_routing_trace(model):
        assert ml.routing_stats(model) == {} and float(ml.aux_losses(model)) == 0.0


def test_raw_jax_grad_of_a_merged_model_refuses_to_record_and_says_what_records():
    """NNX's functional pattern under ``jax.grad`` cannot change state either (Flax refuses
    any variable's update there): the message names nnx.grad and ``no_routing_trace``."""
    model = ml.inject(MLP(), MLP_MOV)
    graphdef, params, rest = nnx.split(model, AdapterParam, ...)

    def loss(params, rest):
        return nnx.merge(graphdef, params, rest)(X).sum()

    with pytest.raises(RuntimeError, match=r"raw JAX transform.*jax.grad.*nnx.grad"):
        jax.grad(loss)(params, rest)
    with no_routing_trace(model):
        graphdef, params, rest = nnx.split(model, AdapterParam, ...)
    grads = jax.grad(loss)(params, rest)
    assert any(np.abs(np.asarray(g)).sum() > 0 for g in jax.tree.leaves(grads))
    _forward(model, X)  # recording again after the block
    assert set(ml.routing_stats(model)) == {"layers.0.act", "layers.1.act"}


def test_an_nnx_loop_records_the_last_iterations_routing():
    """``nnx.fori_loop`` with the model in its carry records like a plain call (the traces
    hold arrays of the loop's shapes from a call before it)."""
    model = _perturb(ml.inject(MLP(), MLP_MOV))
    once = _forward(model, X)

    @nnx.jit
    def twice(model, x):
        return nnx.fori_loop(0, 2, lambda i, carry: (carry[0], carry[0](carry[1])), (model, x))[1]

    twice(model, X)
    looped = np.array(model.layers[0].act.last_probs.get_value())
    _forward(model, once)  # the second iteration's input
    np.testing.assert_allclose(looped, model.layers[0].act.last_probs.get_value(), atol=1e-6)


def test_routing_traces_are_nnx_intermediates():
    """``nnx.pop(model, nnx.Intermediate)`` takes the traces (the next call records anew) and
    ``nnx.capture(f, nnx.Intermediate)`` returns each call's routing, under ``nnx.jit``."""
    model = _perturb(ml.inject(MLP(), MLP_MOV))
    _forward(model, X)
    probs = np.array(model.layers[0].act.last_probs.get_value())
    popped = nnx.pop(model, nnx.Intermediate)
    np.testing.assert_array_equal(popped["layers"][0]["act"]["last_probs"].get_value(), probs)
    assert ml.routing_stats(model) == {}
    jitted = nnx.jit(lambda model, x: model(x))
    jitted(model, X)
    np.testing.assert_allclose(model.layers[0].act.last_probs.get_value(), probs, atol=1e-6)
    if not hasattr(nnx, "capture"):  # flax < 0.12: no nnx.capture to sow into
        return
    _, captured = nnx.capture(jitted, nnx.Intermediate)(model, X)
    (sown,) = captured["layers"][0]["act"]["routing_probs"].get_value()
    np.testing.assert_allclose(sown, probs, atol=1e-6)
    assert set(captured["layers"][1]["act"]) == {"routing_probs", "routing_logits"}


def test_sharding_metadata_names_logical_axes():
    model = ml.inject(MLP(), MLP_MOLORA)
    specs = nnx.get_partition_spec(nnx.state(model, AdapterParam))
    flat = {k[-1]: v.get_value() for k, v in nnx.to_flat_state(specs)}
    assert flat["router"] == jax.sharding.PartitionSpec("embed", "expert")
    assert flat["lora_A"] == jax.sharding.PartitionSpec("expert", "embed", "rank")


def test_sharded_data_parallel_step_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, str(HERE / "sharded_step.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["param_diff"] < 1e-5 and result["loss_diff"] < 1e-5
    assert result["moved"] > 1e-3 and result["probs_devices"] == 8


# --- errors -----------------------------------------------------------------------------------


def test_no_match_lists_sample_paths():
    with pytest.raises(ValueError, match=r"matched no module.*'layers\.0\.fc1'"):
        ml.inject(MLP(), ml.MoV(targets=[r"mlp\.act"]))


def test_wrong_module_type_names_path_and_type():
    with pytest.raises(TypeError, match=r"matched layers\.0\.norm of type LayerNorm"):
        ml.inject(MLP(), ml.LoRA(targets=[r"layers\.\d+\.norm"]))
    with pytest.raises(TypeError, match=r"matched layers\.0\.act of type Gelu.*'low_rank'"):
        ml.inject(MLP(), ml.LoRA(targets=[r"layers\.\d+\.act"]))


def test_double_injection_and_uninjected_model_are_refused():
    model = ml.inject(MLP(), MLP_MOV)
    with pytest.raises(ValueError, match="already carries a mixlight adapter"):
        ml.inject(model, MLP_MOV)
    with pytest.raises(ValueError, match="has no mixlight adapter"):
        ml.save_adapter(MLP(), "unused")


def test_file_for_another_model_is_refused(tmp_path):
    ml.save_adapter(ml.inject(MLP(), MLP_MOV), tmp_path)
    with pytest.raises(ml.AdapterFileError, match="saved for a different base model"):
        ml.load_adapter(MLP(d_ff=32), tmp_path)
    with pytest.raises(ValueError, match="already carries a different adapter"):
        ml.load_adapter(ml.inject(MLP(), MLP_MOLORA), tmp_path)


def test_remove_adapters_restores_the_model():
    model = MLP()
    base = _forward(model, X)
    _perturb(ml.inject(model, MLP_MOLORA))
    remove_adapters(model)
    assert type(model.layers[1].fc2) is nnx.Linear and not mlx.load_backend("jax").is_injected(
        model
    )
    np.testing.assert_array_equal(_forward(model, X), base)


# --- the NNX T5 --------------------------------------------------------------------------------

T5_DIMS = dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, num_decoder_layers=2)
T5_DIMS |= dict(vocab_size=100, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
VARIANTS = {"v1.1": ("gated-gelu", False), "v1.0": ("relu", True)}
IDS = np.random.default_rng(0).integers(2, 100, (2, 7))
MASK = np.ones_like(IDS)
MASK[0, -2:] = 0
DEC = np.random.default_rng(1).integers(2, 100, (2, 5))


def _jax_logits(model):
    return np.asarray(model(jnp.asarray(IDS), jnp.asarray(MASK), jnp.asarray(DEC)))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Variant -> ``(directory, torch model, NNX model)``: one tiny HF T5 per variant, written by
    ``save_pretrained`` and loaded by both frameworks. Tests inject into copies."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    loaded = {}
    for name, (proj, tied) in VARIANTS.items():
        config = transformers.T5Config(
            **T5_DIMS, feed_forward_proj=proj, tie_word_embeddings=tied, dropout_rate=0.0
        )
        torch.manual_seed(0)
        model = transformers.T5ForConditionalGeneration(config).eval()
        directory = tmp_path_factory.mktemp(name.replace(".", ""))
        model.save_pretrained(directory)
        loaded[name] = (directory, model, t5.from_pretrained(directory))
    return loaded


def test_t5_preset_sites_and_identity(checkpoints):
    model = nnx.clone(checkpoints["v1.1"][2])
    base = _jax_logits(model)
    ml.inject(model, ml.MoV(4))
    specs = {s.path: s for s in mlx.load_backend("jax").adapter_state(model)[1]}
    assert len(specs) == 2 * 3 + 2 * 5  # k, v of every attention and act per block
    k = specs["decoder.block.1.layer.1.EncDecAttention.k"]
    assert (k.heads, k.d_in, k.d_out, k.d_route) == (4, 32, 32, 8)
    act = specs["encoder.block.0.layer.1.DenseReluDense.act"]
    assert (act.heads, act.d_out) == (None, 64)
    np.testing.assert_allclose(_jax_logits(model), base, atol=1e-5)


# --- torch <-> JAX portability -----------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("config", [ml.MoV(4), ml.MoLoRA(3, rank=2)], ids=["MoV4", "MoLoRA3r2"])
def test_adapter_files_move_between_torch_and_jax(checkpoints, variant, config, tmp_path):
    """Perturbations stay small: at 0.3 the tiny MoLoRA T5 is so ill-conditioned that torch's
    own float32 and float64 logits differ by 0.07."""
    import copy

    torch = pytest.importorskip("torch")
    _, torch_base, jax_base = checkpoints[variant]

    def torch_logits(model):
        with torch.no_grad():
            ids, mask, dec = map(torch.tensor, (IDS, MASK, DEC))
            return model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits.numpy()

    # torch -> JAX
    torch_model = ml.inject(copy.deepcopy(torch_base), config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in torch_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    ml.save_adapter(torch_model, tmp_path / "from_torch")
    jax_model = ml.load_adapter(nnx.clone(jax_base), tmp_path / "from_torch")
    want = torch_logits(torch_model)
    np.testing.assert_allclose(_jax_logits(jax_model), want, atol=1e-4, rtol=0)
    assert np.abs(want - torch_logits(torch_base)).max() > 1e-3  # the adapter matters

    # JAX -> JAX and JAX -> torch
    adapted = _jax_logits(_perturb(jax_model, scale=0.1, seed=2))
    ml.save_adapter(jax_model, tmp_path / "from_jax")
    fresh = ml.load_adapter(nnx.clone(jax_base), tmp_path / "from_jax")
    np.testing.assert_array_equal(_jax_logits(fresh), adapted)
    back = ml.load_adapter(copy.deepcopy(torch_base), tmp_path / "from_jax")
    np.testing.assert_allclose(torch_logits(back), adapted, atol=1e-4, rtol=0)

    with ml.disable_adapters(jax_model):
        np.testing.assert_array_equal(_jax_logits(jax_model), _jax_logits(jax_base))
    assert all(layer.enabled for layer in adapter_layers(jax_model).values())
    assert set(ml.routing_stats(fresh)) == {
        s.path for s in ml.read_adapter(tmp_path / "from_jax").specs
    }
    assert not _adapter_values(jax_base)  # clones leave the shared base model untouched


# --- accelerators ------------------------------------------------------------------------------


@pytest.mark.skipif(
    jax.default_backend() not in ("gpu", "tpu"), reason="needs a GPU or TPU jax device"
)
def test_fused_ops_on_accelerator_match_cpu():
    cpu = jax.devices("cpu")[0]
    rng = np.random.default_rng(0)
    h = rng.standard_normal((4, 16, 64)).astype(np.float32)
    w, v = rng.standard_normal((16, 8)).astype(np.float32), 1 + rng.standard_normal((8, 64))
    args = (h, w, np.float32(v))
    on_device = jax.jit(lambda *a: fused_mov(*a, heads=4)[0])(*map(jnp.asarray, args))
    on_cpu = jax.jit(lambda *a: fused_mov(*a, heads=4)[0])(*(jax.device_put(a, cpu) for a in args))
    np.testing.assert_allclose(_np(on_device), np.asarray(on_cpu), rtol=1e-2, atol=1e-2)
