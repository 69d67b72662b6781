"""The fused MoV / MoLoRA ops: gradcheck, equivalence with the numpy reference and with plain
autograd through the core math, bytes saved for backward, and torch.compile."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import assume, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mixlight.math import lowrank_mixture, mix_vectors, router_logits, router_probs  # noqa: E402
from mixlight_torch.ops import fused_molora, fused_mov, fused_routed_molora  # noqa: E402

Tensor = torch.Tensor


@pytest.fixture(scope="module", params=["broadcast", "matmul"], autouse=True)
def contraction_path(request):
    """Every test twice: with small CPU contractions as broadcast-and-sum (what these tiny
    shapes get by default) and forced through the matmul kernels (what large ones get)."""
    from mixlight_torch.ops import _precision as _router

    saved = _router.SMALL_CPU_WORK
    _router.SMALL_CPU_WORK = 1 << 62 if request.param == "broadcast" else 0
    yield request.param
    _router.SMALL_CPU_WORK = saved


TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
GRAD_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


# --- plain-torch references -------------------------------------------------------------------


def _core_math_on_torch() -> bool:
    """Whether ``mixlight.math`` runs on torch tensors (the torch backend is registered)."""
    from mixlight._backend_registry import primitives_for

    try:
        primitives_for(torch.zeros(1))
    except (TypeError, ImportError):
        return False
    return True


def _plain_mov(
    h: Tensor, w: Tensor, v: Tensor, heads: int | None, top_k: int | None, renormalize: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Plain-autograd MoV: the core math written out in torch, in float32 (float64 for
    float64 ``h``). Returns ``(out, probs, logits)``."""
    if h.dtype != torch.float64 and _core_math_on_torch():
        logits = router_logits(h, w, heads)
        probs = router_probs(logits, top_k, renormalize)
        return mix_vectors(h, probs, v, heads), probs, logits
    cdt = torch.promote_types(h.dtype, torch.float32)
    r = h.to(cdt)
    if heads:
        r = r.unflatten(-1, (heads, -1))
    logits = r @ w.to(cdt)
    probs = torch.softmax(logits, dim=-1)
    if top_k is not None and top_k < logits.shape[-1]:
        keep = torch.zeros_like(probs).scatter(-1, probs.topk(top_k, dim=-1).indices, 1.0)
        probs = probs * keep
        if renormalize:
            probs = probs / probs.sum(-1, keepdim=True)
    if heads:
        merged = torch.einsum("...he,ehk->...hk", probs, v.to(cdt).unflatten(-1, (heads, -1)))
        merged = merged.flatten(-2)
    else:
        merged = probs @ v.to(cdt)
    return h * merged.to(h.dtype), probs, logits


def _plain_molora(x: Tensor, probs: Tensor | None, a: Tensor, b: Tensor, scale: float) -> Tensor:
    """Plain-autograd MoLoRA delta in x's dtype."""
    if _core_math_on_torch():
        return lowrank_mixture(x, probs, a, b, scale)
    n_experts, d_in, rank = a.shape
    u = x @ a.to(x.dtype).permute(1, 0, 2).reshape(d_in, n_experts * rank)
    if probs is not None:
        u = u * probs.to(x.dtype).repeat_interleave(rank, -1)
    return (u @ b.to(x.dtype).reshape(n_experts * rank, -1)) * scale


# --- inputs -----------------------------------------------------------------------------------


def _randn(gen: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return gen.standard_normal(shape) * scale


def _top_k_gap(logits: np.ndarray, top_k: int | None) -> float:
    """Smallest gap between the k-th and (k+1)-th largest logit of any row (inf if soft)."""
    if top_k is None or top_k >= logits.shape[-1]:
        return float("inf")
    ordered = -np.sort(-logits.reshape(-1, logits.shape[-1]), axis=-1)
    return float((ordered[:, top_k - 1] - ordered[:, top_k]).min())


def _mov_inputs(
    seed: int, lead: tuple[int, ...], heads: int | None, d_head: int, n_experts: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seed)
    d = (heads or 1) * d_head
    h = _randn(gen, *lead, d)
    w = _randn(gen, d_head if heads else d, n_experts, scale=1.5)
    v = 1.0 + _randn(gen, n_experts, d, scale=0.5)
    return h, w, v


def _t(a: np.ndarray, dtype: torch.dtype, grad: bool = True) -> Tensor:
    return torch.tensor(a, dtype=dtype, requires_grad=grad)


mov_cases = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "lead": st.lists(st.integers(1, 5), min_size=1, max_size=2).map(tuple),
        "heads": st.sampled_from([None, 1, 2, 4]),
        "d_head": st.integers(1, 6),
        "n_experts": st.integers(1, 12),
        "renormalize": st.booleans(),
    }
).flatmap(
    lambda c: st.one_of(st.none(), st.integers(1, c["n_experts"])).map(lambda k: {**c, "top_k": k})
)


# --- MoV ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("heads", [None, 2])
@pytest.mark.parametrize(
    ("top_k", "renormalize"), [(None, True), (2, True), (2, False)], ids=["soft", "topk", "raw"]
)
def test_mov_gradcheck(heads: int | None, top_k: int | None, renormalize: bool) -> None:
    h, w, v = _mov_inputs(3, (2, 3), heads, 3, 5)
    gap = _top_k_gap(router_logits(h, w, heads).astype(np.float64), top_k)
    assert gap > 1e-3  # no ties: the top-k mask is constant under gradcheck's perturbations
    args = tuple(_t(a, torch.float64) for a in (h, w, v))
    assert torch.autograd.gradcheck(
        lambda h, w, v: fused_mov(h, w, v, heads, top_k, renormalize), args
    )


def _mov_grads(
    fn, h: Tensor, w: Tensor, v: Tensor, case: dict, upstream: tuple[Tensor, ...]
) -> tuple[Tensor, ...]:
    outs = fn(h, w, v, case["heads"], case["top_k"], case["renormalize"])
    loss = sum((o.float() * g).sum() for o, g in zip(outs, upstream, strict=True))
    return (*torch.autograd.grad(loss, (h, w, v)), *outs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@given(case=mov_cases)
def test_mov_matches_reference_and_plain_autograd(dtype: torch.dtype, case: dict) -> None:
    h, w, v = _mov_inputs(
        case["seed"], case["lead"], case["heads"], case["d_head"], case["n_experts"]
    )
    h_t = _t(h, dtype)
    h = h_t.detach().double().numpy()  # the values the op really sees
    logits = router_logits(h, w, case["heads"])
    assume(_top_k_gap(logits, case["top_k"]) > 1e-3)
    probs = router_probs(logits, case["top_k"], case["renormalize"])
    expected = mix_vectors(h, probs, v, case["heads"])
    tol = TOLERANCE[dtype]
    w_t, v_t = _t(w, torch.float32), _t(v, torch.float32)
    out, p_t, l_t = fused_mov(h_t, w_t, v_t, case["heads"], case["top_k"], case["renormalize"])
    assert out.dtype == dtype and p_t.dtype == l_t.dtype == torch.float32
    assert p_t.shape == probs.shape and l_t.shape == logits.shape
    np.testing.assert_allclose(out.detach().double().numpy(), expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(p_t.detach().numpy(), probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(l_t.detach().numpy(), logits, rtol=1e-5, atol=1e-5)

    gen = torch.Generator().manual_seed(case["seed"] % 2**31)
    upstream = tuple(torch.randn(o.shape, generator=gen) for o in (out, p_t, l_t))
    fused = _mov_grads(fused_mov, h_t, w_t, v_t, case, upstream)
    plain = _mov_grads(_plain_mov, h_t, w_t, v_t, case, upstream)
    gtol = GRAD_TOLERANCE[dtype]
    for got, want in zip(fused, plain, strict=True):
        scale = max(1.0, want.detach().abs().max().item())
        torch.testing.assert_close(
            got.detach().float(), want.detach().float(), rtol=gtol, atol=gtol * scale
        )


def test_mov_heads_one_keeps_a_head_axis_and_large_k_is_soft() -> None:
    h, w, v = (_t(a, torch.float32) for a in _mov_inputs(0, (3,), 1, 4, 3))
    out, probs, logits = fused_mov(h, w, v, heads=1, top_k=7)
    assert probs.shape == logits.shape == (3, 1, 3)
    torch.testing.assert_close(probs, torch.softmax(logits, -1))


def test_mov_rejects_mismatched_shapes() -> None:
    h, w, v = (_t(a, torch.float32) for a in _mov_inputs(0, (3,), 2, 4, 3))
    with pytest.raises(ValueError, match="router_weight"):
        fused_mov(h, w, v)  # w is [d_head, E] but no heads were given
    with pytest.raises(ValueError, match="divisible"):
        fused_mov(h, w, v, heads=3)
    with pytest.raises(ValueError, match="vectors"):
        fused_mov(h, w, v[:, :4], heads=2)


# --- MoLoRA -------------------------------------------------------------------------------------


def _molora_inputs(
    seed: int,
    lead: tuple[int, ...],
    d_in: int,
    rank: int,
    d_out: int,
    n_experts: int,
    with_probs: bool,
    pooled: bool,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seed)
    x = _randn(gen, *lead, d_in)
    probs = None
    if with_probs:
        p_lead = (*lead[:-1], 1) if pooled else lead  # sequence routing broadcasts over seq
        logits = _randn(gen, *p_lead, n_experts)
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    a = _randn(gen, n_experts, d_in, rank)
    b = _randn(gen, n_experts, rank, d_out)
    return x, probs, a, b


@pytest.mark.parametrize("with_probs", [True, False], ids=["probs", "no-router"])
def test_molora_gradcheck(with_probs: bool) -> None:
    x, probs, a, b = _molora_inputs(
        1, (2, 3), 5, 2, 4, 3 if with_probs else 1, with_probs, pooled=False
    )
    args = [_t(x, torch.float64), None, _t(a, torch.float64), _t(b, torch.float64)]
    if probs is not None:
        args[1] = _t(probs, torch.float64)
        assert torch.autograd.gradcheck(lambda *t: fused_molora(*t, 0.5), tuple(args))
    else:
        assert torch.autograd.gradcheck(
            lambda x, a, b: fused_molora(x, None, a, b, 0.5), (args[0], args[2], args[3])
        )


molora_cases = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "lead": st.lists(st.integers(1, 5), min_size=1, max_size=2).map(tuple),
        "d_in": st.integers(1, 8),
        "rank": st.integers(1, 4),
        "d_out": st.integers(1, 8),
        "n_experts": st.integers(1, 12),
        "scale": st.floats(0.1, 4.0),
        "pooled": st.booleans(),
    }
).flatmap(
    lambda c: (st.booleans() if c["n_experts"] == 1 else st.just(True)).map(
        lambda p: {**c, "with_probs": p}
    )
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@given(case=molora_cases)
def test_molora_matches_reference_and_plain_autograd(dtype: torch.dtype, case: dict) -> None:
    scale = case.pop("scale")
    x, probs, a, b = _molora_inputs(**case)
    x_t = _t(x, dtype)
    x = x_t.detach().double().numpy()
    expected = lowrank_mixture(x, probs, a, b, scale)
    p_abs = None if probs is None else np.abs(probs)
    bound = lowrank_mixture(np.abs(x), p_abs, np.abs(a), np.abs(b), scale)  # error scale
    p_t = None if probs is None else _t(probs, torch.float32)
    a_t, b_t = _t(a, torch.float32), _t(b, torch.float32)
    delta = fused_molora(x_t, p_t, a_t, b_t, scale)
    assert delta.dtype == dtype and delta.shape == expected.shape
    tol = TOLERANCE[dtype]
    np.testing.assert_array_less(
        np.abs(delta.detach().double().numpy() - expected), tol * (bound + np.abs(expected)) + tol
    )

    upstream = torch.randn(delta.shape, generator=torch.Generator().manual_seed(0))
    inputs = tuple(t for t in (x_t, p_t, a_t, b_t) if t is not None)
    fused = torch.autograd.grad((delta.float() * upstream).sum(), inputs)
    plain_out = _plain_molora(x_t, p_t, a_t, b_t, scale)
    plain = torch.autograd.grad((plain_out.float() * upstream).sum(), inputs)
    p_at = 1 if p_t is not None else None

    def lora(*t: Tensor) -> Tensor:
        return _plain_molora(t[0], None if p_at is None else t[p_at], t[-2], t[-1], scale)

    gtol = GRAD_TOLERANCE[dtype]
    scales = _grad_scales(lora, inputs, upstream)
    for got, want, term_scale in zip(fused, plain, scales, strict=True):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=gtol, atol=gtol * term_scale)


def _grad_scales(fn, inputs: tuple[Tensor, ...], upstream: Tensor) -> list[float]:
    """Per input, the largest gradient of ``sum(|upstream| * fn(|inputs|))`` in float32 (at
    least 1): the size of the terms each gradient sums, which is what rounding error scales
    with when they cancel (two bf16 implementations that round at different points differ
    by a few ulps of the terms, not of the result)."""
    abs_inputs = [t.detach().float().abs().requires_grad_() for t in inputs]
    out = fn(*abs_inputs)
    grads = torch.autograd.grad((out.float() * upstream.abs()).sum(), abs_inputs)
    return [max(1.0, g.abs().max().item()) for g in grads]


def test_molora_rejects_missing_probs() -> None:
    x, probs, a, b = (torch.tensor(t) for t in _molora_inputs(0, (3,), 4, 2, 3, 2, True, False))
    with pytest.raises(ValueError, match="routing probabilities"):
        fused_molora(x, None, a, b, 1.0)


routed_cases = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "lead": st.lists(st.integers(1, 5), min_size=1, max_size=2).map(tuple),
        "d_in": st.integers(1, 8),
        "rank": st.integers(1, 4),
        "d_out": st.integers(1, 8),
        "n_experts": st.integers(1, 12),
        "scale": st.floats(0.1, 4.0),
        "renormalize": st.booleans(),
        "with_base": st.booleans(),
    }
).flatmap(
    lambda c: st.one_of(st.none(), st.integers(1, c["n_experts"])).map(lambda k: {**c, "top_k": k})
)


def _plain_routed_molora(x, w, a, b, scale, top_k, renormalize, base):
    """Plain autograd: the core router, then the plain MoLoRA delta, then the base."""
    logits = router_logits(x, w)
    probs = router_probs(logits, top_k, renormalize)
    delta = _plain_molora(x, probs, a, b, scale)
    return (delta if base is None else base + delta.to(base.dtype)), probs, logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@given(case=routed_cases)
def test_routed_molora_matches_plain_autograd(dtype: torch.dtype, case: dict) -> None:
    """Router + mixture + base in one op equals the core math in plain autograd: outputs,
    probabilities, logits and every input gradient (a loss on all three outputs)."""
    assume(_core_math_on_torch())
    gen = np.random.default_rng(case["seed"])
    x = _t(_randn(gen, *case["lead"], case["d_in"]), dtype)
    w = _t(_randn(gen, case["d_in"], case["n_experts"], scale=1.5), torch.float32)
    assume(_top_k_gap(x.detach().float().numpy() @ w.detach().numpy(), case["top_k"]) > 1e-3)
    a = _t(_randn(gen, case["n_experts"], case["d_in"], case["rank"]), torch.float32)
    b = _t(_randn(gen, case["n_experts"], case["rank"], case["d_out"]), torch.float32)
    base = _t(_randn(gen, *case["lead"], case["d_out"]), dtype) if case["with_base"] else None
    routing = (case["scale"], case["top_k"], case["renormalize"])
    inputs = tuple(t for t in (x, w, a, b, base) if t is not None)
    results = []
    for fn in (fused_routed_molora, _plain_routed_molora):
        out, probs, logits = fn(x, w, a, b, *routing, base=base)
        gen_up = torch.Generator().manual_seed(1)
        loss = sum((t.float() * torch.randn(t.shape, generator=gen_up)).sum() for t in (out, probs))
        loss = loss + logits.square().sum() * 0.1
        results.append((out, probs, logits, *torch.autograd.grad(loss, inputs)))
    # Error scales: the outputs' own size, and for the gradients that of the LoRA terms they
    # sum (the router's terms are of the size of the result).
    up = torch.randn(results[0][0].shape, generator=torch.Generator().manual_seed(2))
    lora_scales = _grad_scales(
        lambda *t: _plain_routed_molora(*t, *routing, None)[0], (x, w, a, b), up
    )
    gtol = GRAD_TOLERANCE[dtype] * (2 if dtype == torch.bfloat16 else 1)
    for i, (got, want) in enumerate(zip(*results, strict=True)):
        assert got.dtype == want.dtype and got.shape == want.shape
        term_scale = lora_scales[i - 3] if 3 <= i < 7 else 1.0
        atol = gtol * max(term_scale, want.abs().max().item())
        torch.testing.assert_close(got.float(), want.float(), rtol=gtol, atol=atol)


@pytest.mark.parametrize(("top_k", "renormalize"), [(None, True), (2, True), (2, False)])
def test_routed_molora_gradcheck(top_k: int | None, renormalize: bool) -> None:
    gen = np.random.default_rng(3)
    args = tuple(
        _t(_randn(gen, *shape), torch.float64)
        for shape in [(2, 3, 5), (5, 4), (4, 5, 2), (4, 2, 3), (2, 3, 3)]
    )
    assert torch.autograd.gradcheck(
        lambda x, w, a, b, base: fused_routed_molora(x, w, a, b, 0.7, top_k, renormalize, base),
        args,
    )


def test_molora_base_is_added_in_the_product() -> None:
    x, probs, a, b = (torch.tensor(t) for t in _molora_inputs(2, (3, 4), 5, 2, 6, 3, True, False))
    base = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    out = fused_molora(x, probs, a, b, 0.5, base=base)
    torch.testing.assert_close(out, base + fused_molora(x, probs, a, b, 0.5))
    (out * 2).sum().backward()
    torch.testing.assert_close(base.grad, torch.full_like(base, 2.0))
    with pytest.raises(ValueError, match="base has shape"):
        fused_molora(x, probs, a, b, 0.5, base=base[..., :5])


def test_routed_molora_rejects_a_router_of_the_wrong_shape() -> None:
    x, _, a, b = (torch.tensor(t) for t in _molora_inputs(0, (3,), 4, 2, 3, 2, True, False))
    with pytest.raises(ValueError, match=r"router_weight has shape \(4, 3\); expected \[4, 2\]"):
        fused_routed_molora(x, torch.zeros(4, 3, dtype=x.dtype), a, b, 1.0)


# --- memory: what is saved for backward -------------------------------------------------------


class _SavedBytes:
    """Records the shape and size of every tensor saved for backward while active."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.nbytes = 0

    def pack(self, t: Tensor) -> Tensor:
        self.shapes.append(tuple(t.shape))
        self.nbytes += t.numel() * t.element_size()
        return t

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


@pytest.mark.parametrize(
    ("top_k", "renormalize"), [(None, True), (2, True), (2, False)], ids=["soft", "topk", "raw"]
)
def test_mov_saves_no_merged_vector(top_k: int | None, renormalize: bool) -> None:
    n, d, n_experts = 4096, 256, 10
    h = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(d, n_experts) * 0.1).requires_grad_()
    v = torch.ones(n_experts, d, requires_grad=True)
    fused = _SavedBytes()
    with fused.hooks():
        out, probs, logits = fused_mov(h, w, v, None, top_k, renormalize)
    # Exactly the inputs and the probabilities: no merged vector [n, d], no logits [n, E].
    token_wide = [s for s in fused.shapes if s[0] == n]
    assert sorted(token_wide) == sorted([(n, d), (n, n_experts)]), fused.shapes
    assert fused.nbytes == sum(t.numel() * 4 for t in (h, w, v, probs))
    (out.sum() + probs.sum() + logits.sum()).backward()
    assert h.grad is not None and w.grad is not None and v.grad is not None


def test_molora_saves_no_hidden_or_output() -> None:
    n, d_in, rank, d_out, n_experts = 4096, 256, 4, 128, 10
    x = torch.randn(n, d_in, requires_grad=True)
    probs = torch.softmax(torch.randn(n, n_experts), -1).requires_grad_()
    a = torch.randn(n_experts, d_in, rank, requires_grad=True)
    b = torch.randn(n_experts, rank, d_out, requires_grad=True)
    saved = _SavedBytes()
    with saved.hooks():
        delta = fused_molora(x, probs, a, b, 2.0)
    token_wide = [s for s in saved.shapes if len(s) == 2 and s[0] == n]
    assert sorted(token_wide) == sorted([(n, d_in), (n, n_experts)])  # x and probs only
    assert saved.nbytes == sum(t.numel() * 4 for t in (x, probs, a, b))
    delta.sum().backward()


def test_routed_molora_saves_inputs_and_probs_only() -> None:
    n, d_in, rank, d_out, n_experts = 4096, 256, 4, 128, 10
    x = torch.randn(n, d_in, requires_grad=True)
    base = torch.randn(n, d_out)
    w = (torch.randn(d_in, n_experts) * 0.1).requires_grad_()
    a = torch.randn(n_experts, d_in, rank, requires_grad=True)
    b = torch.randn(n_experts, rank, d_out, requires_grad=True)
    saved = _SavedBytes()
    with saved.hooks():
        out, probs, _ = fused_routed_molora(x, w, a, b, 2.0, base=base)
    token_wide = [s for s in saved.shapes if len(s) == 2 and s[0] == n]
    assert sorted(token_wide) == sorted([(n, d_in), (n, n_experts)])  # x and probs only
    assert saved.nbytes == sum(t.numel() * 4 for t in (x, probs, w, a, b))
    out.sum().backward()


# --- torch.compile ----------------------------------------------------------------------------


def _compiled_matches_eager(fn, args: tuple[Tensor, ...]) -> None:
    """Compile ``fn(*args) -> tuple of tensors`` with fullgraph=True; compare outputs and
    input gradients with eager."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    results = []
    for f in (fn, compiled):
        inputs = [a.detach().clone().requires_grad_() for a in args]
        outs = f(*inputs)
        sum(o.float().sum() * (i + 1) for i, o in enumerate(outs)).backward()
        results.append([o.detach() for o in outs] + [i.grad for i in inputs])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("heads", "top_k", "renormalize", "n_experts"),
    [(2, 2, False, 4), (None, None, True, 4), (3, None, True, 5), (None, 3, True, 5)]
    + [(2, None, True, 17)],  # above UNROLL_MAX_EXPERTS: the batched products
)
def test_compile_fused_mov(
    heads: int | None, top_k: int | None, renormalize: bool, n_experts: int
) -> None:
    arrays = _mov_inputs(5, (2, 3), heads, 4, n_experts)
    h, w, v = (torch.tensor(a, dtype=torch.float32) for a in arrays)
    _compiled_matches_eager(
        lambda h, w, v: fused_mov(h, w, v, heads, top_k, renormalize), (h, w, v)
    )


def test_compile_fused_mov_bfloat16() -> None:
    """bfloat16 activations: the router and the merge run in float32 compiled as eager."""
    h, w, v = (torch.tensor(a, dtype=torch.float32) for a in _mov_inputs(6, (3, 4), 2, 4, 5))
    _compiled_matches_eager(lambda h, w, v: fused_mov(h, w, v, 2), (h.bfloat16(), w, v))


@pytest.mark.parametrize("heads", [None, 4])
def test_inductor_mov_keeps_eager_memory_and_values(heads: int | None) -> None:
    """Compiled by inductor, the MoV site saves what the eager op saves (``h`` and the
    ``[n, (H,) E]`` probabilities: no merged ``[n, d]`` vector) and computes the same values."""
    n, d, n_experts = 512, 64, 10
    h, w, v = (
        torch.tensor(a, dtype=torch.float32)
        for a in _mov_inputs(3, (n,), heads, d // (heads or 1), n_experts)
    )
    torch._dynamo.reset()
    compiled = torch.compile(lambda *t: fused_mov(*t, heads)[0], fullgraph=True)
    results = []
    for fn in (lambda *t: fused_mov(*t, heads)[0], compiled):
        inputs = [a.detach().clone().requires_grad_() for a in (h, w, v)]
        saved = _SavedBytes()
        with saved.hooks():
            out = fn(*inputs)
        token_wide = [s for s in saved.shapes if s[0] == n and s[-1] == d]
        assert token_wide == [(n, d)], saved.shapes  # h only
        (out * torch.linspace(-1, 1, d)).sum().backward()
        results.append([out.detach()] + [i.grad for i in inputs])
    for got, want in zip(*results, strict=True):  # float32 sums in another order
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_compile_fused_molora() -> None:
    x, probs, a, b = (
        torch.tensor(t, dtype=torch.float32)
        for t in _molora_inputs(5, (2, 3), 6, 2, 5, 3, True, True)
    )
    _compiled_matches_eager(lambda *t: (fused_molora(*t, 0.5),), (x, probs, a, b))


def test_compile_fused_routed_molora() -> None:
    x, _, a, b = (
        torch.tensor(t, dtype=torch.float32)
        for t in _molora_inputs(5, (2, 3), 6, 2, 5, 3, True, False)
    )
    w = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    base = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1))
    _compiled_matches_eager(
        lambda x, w, a, b, base: fused_routed_molora(x, w, a, b, 0.5, 2, False, base),
        (x, w, a, b, base),
    )


@pytest.mark.parametrize(
    "wanted", [(False, True, True), (False, False, True), (True, False, False)]
)
def test_mov_partial_input_gradients(wanted: tuple[bool, bool, bool]) -> None:
    arrays = _mov_inputs(4, (3, 2), 2, 3, 4)
    grads = []
    for fn in (fused_mov, _plain_mov):
        args = [_t(a, torch.float32, grad=g) for a, g in zip(arrays, wanted, strict=True)]
        out, probs, logits = fn(*args, 2, 2, False)
        (out.sum() + (probs * logits).sum()).backward()
        grads.append([a.grad for a in args])
    for got, want in zip(*grads, strict=True):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want)


def _leaves_on(device: str, first: Tensor, *rest: np.ndarray) -> list[Tensor]:
    """``first`` and float32 copies of ``rest`` as leaves on ``device``."""
    tensors = [first, *(_t(r, torch.float32) for r in rest)]
    return [t.detach().to(device).requires_grad_() for t in tensors]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype: torch.dtype) -> None:
    h, w, v = _mov_inputs(6, (4, 5), 2, 8, 6)
    x, probs, a, b = _molora_inputs(6, (4, 5), 16, 4, 8, 6, True, False)
    router = np.random.default_rng(7).standard_normal((16, 6)) * 0.3
    results = []
    for device in ("cpu", "cuda"):
        mov_args = _leaves_on(device, _t(h, dtype), w, v)
        molora_args = _leaves_on(device, _t(x, dtype), probs, a, b)
        routed_args = _leaves_on(device, _t(x, dtype), router, a, b)
        outs = [
            *fused_mov(*mov_args, 2, 2, True),
            fused_molora(*molora_args, 0.5),
            *fused_routed_molora(*routed_args, 0.5, 2, False),
        ]
        sum(o.float().sum() for o in outs).backward()
        inputs = [*mov_args, *molora_args, *routed_args]
        results.append([o.detach().cpu() for o in outs] + [t.grad.cpu() for t in inputs])
    tol = TOLERANCE[dtype] * 10
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
