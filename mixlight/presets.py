"""The paper's adapter layouts: MoV, MoLoRA and their one-expert cases (IA)³ and LoRA.

``targets="t5"`` lays out the paper's hook points with HuggingFace T5 module paths
(paper.md §1.2, §2.2, §6): MoV on the attention k and v outputs of every attention (encoder
self, decoder self, cross; per-head routers) and on the FFN activation output
``DenseReluDense.act``; MoLoRA on q, k, v, o, ``wi_0`` (``wi`` in T5 v1.0) and ``wo``.
A list of patterns targets any other model.
"""

from __future__ import annotations

from collections.abc import Sequence

from mixlight.config import AdapterConfig, Router, Site, SoftMerge
from mixlight.experts import LowRank, Vectors

_ATTENTION = r"(?:.*\.)?(?:SelfAttention|EncDecAttention)\."
T5_VECTOR_SITES = (
    (_ATTENTION + r"(?:k|v)", "auto"),
    (r"(?:.*\.)?DenseReluDense\.act", None),
)
T5_LOW_RANK_SITES = (
    _ATTENTION + r"(?:q|k|v|o)",
    r"(?:.*\.)?DenseReluDense\.(?:wi_0|wi|wo)",
)

Targets = str | Sequence[str]


def _patterns(targets: Targets, method: str) -> Sequence[str] | None:
    if targets == "t5":
        return None
    if isinstance(targets, str) or not targets:
        raise ValueError(
            f"{method}(targets={targets!r}): use 't5' or a non-empty list of module-path regexes"
        )
    return list(targets)


def MoV(
    num_experts: int = 10,
    *,
    targets: Targets = "t5",
    router: Router | None = None,
    routing: str = "token",
    per_head: bool = True,
    backend: str | None = None,
) -> AdapterConfig:
    """Mixture of (IA)³ vectors. With ``targets="t5"``, attention k/v sites route per head
    when ``per_head`` (the reference code's layout); custom targets route on the whole width."""
    expert = Vectors()
    patterns = _patterns(targets, "MoV")
    if patterns is None:
        sites = [Site(p, expert, heads=heads if per_head else None) for p, heads in T5_VECTOR_SITES]
    else:
        sites = [Site(p, expert) for p in patterns]
    return AdapterConfig(
        sites,
        num_experts,
        router or SoftMerge(),
        routing,
        backend,
        method="IA3" if num_experts == 1 else f"MoV-{num_experts}",
    )


def MoLoRA(
    num_experts: int = 10,
    rank: int = 4,
    alpha: float = 16.0,
    *,
    targets: Targets = "t5",
    router: Router | None = None,
    routing: str = "token",
    backend: str | None = None,
) -> AdapterConfig:
    """Mixture of LoRA experts, each of rank ``rank``, scaled by ``alpha / rank``."""
    expert = LowRank(rank, alpha)
    patterns = _patterns(targets, "MoLoRA") or T5_LOW_RANK_SITES
    return AdapterConfig(
        [Site(p, expert) for p in patterns],
        num_experts,
        router or SoftMerge(),
        routing,
        backend,
        method=f"LoRA-r{rank}" if num_experts == 1 else f"MoLoRA-{num_experts}-r{rank}",
    )


def IA3(*, targets: Targets = "t5", backend: str | None = None) -> AdapterConfig:
    """(IA)³: one scaling vector per site, no router."""
    return MoV(1, targets=targets, backend=backend)


def LoRA(
    rank: int = 8, alpha: float = 16.0, *, targets: Targets = "t5", backend: str | None = None
) -> AdapterConfig:
    """LoRA: one low-rank delta per site, no router."""
    return MoLoRA(1, rank, alpha, targets=targets, backend=backend)
