"""Argument checks of the fused ops, on shapes only, shared by every backend (as einops keeps
its shape logic out of the backends). Each raises ``ValueError`` naming the op, the argument,
its shape and the shape it needs."""

from __future__ import annotations

from collections.abc import Sequence

Shape = Sequence[int]


def soft_if_all(top_k: int | None, n_experts: int, op: str) -> int | None:
    """``top_k``, or None (a soft merge) when it keeps every expert; rejects ``top_k < 1``."""
    if top_k is not None and top_k < 1:
        raise ValueError(f"{op}: top_k must be at least 1; got {top_k}")
    return None if top_k is None or top_k >= n_experts else top_k


def check_mov(h: Shape, router_weight: Shape, vectors: Shape, heads: int | None) -> None:
    """``h [..., d]``, ``router_weight [d // heads, E]`` and ``vectors [E, d]`` agree."""
    d, n_heads = h[-1], heads or 1
    if d % n_heads:
        raise ValueError(f"fused_mov: width {d} is not divisible by heads={heads}")
    n_experts = router_weight[-1]
    if tuple(router_weight) != (d // n_heads, n_experts):
        raise ValueError(
            f"fused_mov: router_weight has shape {tuple(router_weight)}; expected "
            f"[{d // n_heads}, E]"
        )
    if tuple(vectors) != (n_experts, d):
        raise ValueError(
            f"fused_mov: vectors has shape {tuple(vectors)}; expected [{n_experts}, {d}]"
        )


def check_molora(
    x: Shape,
    lora_A: Shape,
    lora_B: Shape,
    op: str,
    router_weight: Shape | None = None,
    base: Shape | None = None,
) -> None:
    """``x [..., d_in]``, ``lora_A [E, d_in, r]``, ``lora_B [E, r, d_out]``, and when given
    ``router_weight [d_in, E]`` and ``base [..., d_out]``, fit together."""
    n_experts, d_in, rank = lora_A
    if x[-1] != d_in or tuple(lora_B[:2]) != (n_experts, rank):
        raise ValueError(
            f"{op}: x {tuple(x)}, lora_A {tuple(lora_A)} and lora_B {tuple(lora_B)} do not "
            "fit x [..., d_in], A [E, d_in, r], B [E, r, d_out]"
        )
    if router_weight is not None and tuple(router_weight) != (d_in, n_experts):
        raise ValueError(
            f"{op}: router_weight has shape {tuple(router_weight)}; expected [{d_in}, {n_experts}]"
        )
    want = (*x[:-1], lora_B[-1])
    if base is not None and tuple(base) != want:
        raise ValueError(f"{op}: base has shape {tuple(base)}; expected {want}")
