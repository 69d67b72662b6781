"""Hypothesis strategies for shapes, configs, sites and arrays."""

from __future__ import annotations

import warnings
from typing import Any

import attrs
import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from mixlight.config import AdapterConfig, Site, SoftMerge, TopK
from mixlight.experts import ExpertKind, LowRank, Vectors
from mixlight.site_spec import SiteSpec


@attrs.frozen
class SiteCase:
    """One drawn site with numpy inputs: ``x [batch, seq, d_in]``, ``h [batch, seq, d_out]``,
    ``mask [batch, seq]`` (1 = token), params by short name.

    ``dtype`` is the activations' dtype the case stands for: for ``"bfloat16"`` (or
    ``"float16"``) the float32 arrays ``x`` and ``h`` hold values representable in it, so a
    backend may cast them to it exactly (adapter parameters stay float32)."""

    spec: SiteSpec
    params: dict[str, np.ndarray]
    x: np.ndarray
    h: np.ndarray
    mask: np.ndarray
    dtype: str = "float32"


def round_to_bf16(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), still float32."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))) & np.uint64(
        0xFFFF0000
    )
    return rounded.astype(np.uint32).view(np.float32)


DTYPES = ("float32", "bfloat16", "float16")
"""The activation dtypes a :class:`SiteCase` can stand for."""


def round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values rounded to the nearest ``dtype`` value (``"float32"``, ``"bfloat16"``,
    ``"float16"``), still float32."""
    if dtype == "bfloat16":
        return round_to_bf16(a)
    if dtype == "float16":
        return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)
    if dtype == "float32":
        return np.asarray(a, np.float32)
    raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")


def _quiet_top_k(*args: Any) -> TopK:
    """``TopK(*args)`` without its advice warnings (e.g. that a renormalised top-1 router
    gets no gradient): the math must hold for every valid router, advisable or not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return TopK(*args)


def routers(num_experts: int) -> st.SearchStrategy:
    """SoftMerge, or TopK with 1 <= k <= num_experts, renormalised or not."""
    weights = st.sampled_from([0.0, 0.01, 0.5])
    soft = st.builds(SoftMerge, weights, weights)
    top = st.builds(_quiet_top_k, st.integers(1, num_experts), st.booleans(), weights, weights)
    return st.one_of(soft, top)


def expert_kinds() -> st.SearchStrategy[ExpertKind]:
    return st.one_of(
        st.just(Vectors()),
        st.builds(LowRank, st.integers(1, 6), st.sampled_from([1.0, 8.0, 16.0])),
    )


_PATTERNS = st.sampled_from([r"encoder\..*\.k", r".*\.(q|v)", r"layers\.\d+\.mlp\.fc1", r"attn"])


@st.composite
def adapter_configs(draw: Any) -> AdapterConfig:
    """Valid AdapterConfigs of every shape (for JSON round trips)."""
    num_experts = draw(st.integers(1, 16))
    sites = []
    for pattern in draw(st.lists(_PATTERNS, min_size=1, max_size=3, unique=True)):
        expert = draw(expert_kinds())
        heads = draw(st.sampled_from([None, 2, "auto"])) if expert.supports_heads else None
        sites.append(Site(pattern, expert, draw(st.sampled_from([None, "output", "input"])), heads))
    return AdapterConfig(
        sites,
        num_experts,
        draw(routers(num_experts)),
        draw(st.sampled_from(["token", "sequence"])),
        draw(st.sampled_from([None, "torch", "jax"])),
        draw(st.sampled_from(["custom", "MoV-10"])),
    )


PADDINGS = ("full", "right", "left", "none")


def padding_masks(rng: np.random.Generator, batch: int, seq: int, kinds: list[str]) -> np.ndarray:
    """``[batch, seq]`` masks, one row per kind: ``full`` (no padding), ``right`` / ``left``
    padding (at least one token) or ``none`` (a row that is all padding)."""
    mask = np.zeros((batch, seq), np.float32)
    for b, kind in enumerate(kinds):
        n = seq if kind == "full" else 0 if kind == "none" else int(rng.integers(1, seq + 1))
        if kind == "left":
            mask[b, seq - n :] = 1
        else:
            mask[b, :n] = 1
    return mask


@st.composite
def site_cases(
    draw: Any,
    expert: ExpertKind | st.SearchStrategy[ExpertKind] | None = None,
    max_experts: int = 12,
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
    min_experts: int = 1,
    routings: tuple[str, ...] = ("token", "sequence"),
    reads: tuple[str, ...] = ("output", "input"),
    batches: tuple[int, ...] = (1, 2, 3),
    seqs: tuple[int, ...] = (1, 2, 3, 4, 5),
    heads: tuple[int | None, ...] = (None, 1, 2, 4),
) -> SiteCase:
    """A random site (expert kind, E, router, routing, heads, widths) with random inputs.

    Draws right-, left- and all-padding rows, exact ties (router columns of zeros, all of them
    or some: equal logits that top-k must settle by the lowest index), E = 1, heads, and
    bf16-representable activations; near-ties that float32 could order either way are
    rejected (see :func:`mixlight.testing._loops.top_k_margin`). ``min_experts``, ``routings``
    and ``reads`` narrow the draw to one code path (e.g. a backend's fused op). The knobs
    ``batches``, ``seqs`` (sizes to draw from: e.g. batches that a device mesh divides),
    ``dtypes`` (``"float32"``, ``"bfloat16"``, ``"float16"``) and ``heads`` (per-head
    routing: ``None`` = routing on the whole width; used only by kinds that support heads)
    shape the arrays.
    ``expert`` is a kind, a strategy of kinds, or None (the built-in kinds).
    """
    from mixlight.testing._loops import NEAR_TIE, loop_reference, top_k_margin

    if not (batches and seqs and heads and dtypes) or min(batches) < 1 or min(seqs) < 1:
        raise ValueError(
            f"site_cases: batches {batches}, seqs {seqs}, heads {heads} and dtypes {dtypes} "
            "must be non-empty, with sizes >= 1"
        )
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise ValueError(f"site_cases: dtypes {unknown}: expected some of {', '.join(DTYPES)}")
    kind: ExpertKind
    if expert is None:
        kind = draw(expert_kinds())
    elif isinstance(expert, st.SearchStrategy):
        kind = draw(expert)
    else:
        kind = expert
    num_experts = draw(st.integers(min_experts, max_experts))
    router = draw(routers(num_experts))
    routing = draw(st.sampled_from(routings))
    head_count = draw(st.sampled_from(heads)) if kind.supports_heads else None
    read = draw(st.sampled_from(reads))
    d_head = draw(st.integers(1, 6))
    d_out = d_head * (head_count or draw(st.integers(1, 3)))
    d_in = d_out if (head_count and read == "input") else draw(st.integers(1, 12))
    batch, seq = draw(st.sampled_from(batches)), draw(st.sampled_from(seqs))
    spec = SiteSpec(
        "model.layer.0.proj",
        Site("model.layer.0.proj", kind, read, head_count),
        num_experts,
        router,
        routing,
        d_in,
        d_out,
        head_count if num_experts > 1 else None,
    )
    paddings = draw(st.lists(st.sampled_from(PADDINGS), min_size=batch, max_size=batch))
    ties = draw(st.sampled_from(["none", "none", "some", "all"]))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    params = spec.init_params(rng)
    # Move every parameter off its initial value so the test sees real mixing.
    params = {
        n: (p + rng.standard_normal(p.shape).astype(np.float32) * 0.5) for n, p in params.items()
    }
    if "router" in params and ties != "none":
        zero = rng.random(num_experts) < 0.5 if ties == "some" else np.ones(num_experts, bool)
        params["router"][:, zero] = 0.0
    mask = padding_masks(rng, batch, seq, paddings)
    x = rng.standard_normal((batch, seq, d_in)).astype(np.float32)
    h = rng.standard_normal((batch, seq, d_out)).astype(np.float32)
    x, h = round_to(x, dtype), round_to(h, dtype)
    case = SiteCase(spec, params, x, h, mask, dtype)
    if spec.has_router and router.top_k is not None:
        logits = loop_reference(case).logits
        assert logits is not None
        assume(top_k_margin(spec, logits) >= NEAR_TIE)
    return case
