"""A single-pass Triton kernel for soft-merge MoV: ``h * (softmax(h @ W) @ V)`` per head.

:func:`mixlight_torch.ops.fused_mov` is built from torch ops, so it writes the merged
``[n, d]`` vector to memory and reads it back (and in backward also ``g_out * h``). Here each
program owns a block of tokens of one head and keeps everything but ``h``, ``g_out`` and the
results in registers:

* forward reads ``h`` twice (once for the logits, once to scale it; the second read mostly
  hits cache) and writes ``out`` plus the ``[n, H, E]`` probabilities and logits;
* backward reads ``h`` and ``g_out`` twice and writes ``g_h``; the kernel gradients
  ``g_W [k, E]`` and ``g_V [E, d]`` are summed across token blocks with float32 atomics.

Saved for backward: ``h``, the kernels and ``probs``, as in the torch op. The router and the
merge run in float32 (``input_precision="ieee"``: no TF32), whatever ``h``'s dtype. Top-k
routing is not in the kernel (``fused_mov`` keeps it on the torch path).

Kernels run on CUDA; with ``TRITON_INTERPRET=1`` set before this module is imported they run
on CPU tensors through Triton's interpreter (slow; that is how the tests check them).
"""

from __future__ import annotations

from typing import Any  # ctx: torch's FunctionCtx, given the attributes forward sets

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from mixlight._op_checks import check_mov

__all__ = ["TritonMoV", "triton_mov"]

BLOCK_N = 32  # tokens per program


@triton.jit
def _at(rows, cols, stride):
    """Offsets ``[R, C]`` of a row-major tile: ``rows[:, None] * stride + cols[None, :]``."""
    return rows[:, None] * stride + cols[None, :]


@triton.jit
def _both(row_ok, col_ok):
    """The ``[R, C]`` mask of a tile from its row and column masks."""
    return row_ok[:, None] & col_ok[None, :]


@triton.jit
def _program_block(
    n_tokens, n_heads,
    K: tl.constexpr, E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    """This program's token rows (int64: ``rows * d`` can pass 2**31) and their mask, its head
    and that head's first column, the experts and their mask, and the offsets and mask of its
    ``[BLOCK_N, BLOCK_E]`` block of the ``[n, H, E]`` routing tensors."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_tokens
    rows = rows.to(tl.int64)
    head = tl.program_id(1)
    experts = tl.arange(0, BLOCK_E)
    e_ok = experts < E
    routed = (rows[:, None] * n_heads + head) * E + experts[None, :]
    return rows, row_ok, head * K, experts, e_ok, routed, _both(row_ok, e_ok)


@triton.jit
def _mov_forward_kernel(
    h_ptr, w_ptr, v_ptr, out_ptr, probs_ptr, logits_ptr,
    n_tokens, d, n_heads,
    K: tl.constexpr, E: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    rows, row_ok, col0, experts, e_ok, routed, routed_ok = _program_block(
        n_tokens, n_heads, K, E, BLOCK_N, BLOCK_E
    )

    logits = tl.zeros((BLOCK_N, BLOCK_E), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        hk = tl.load(h_ptr + _at(rows, col0 + ks, d), mask=_both(row_ok, k_ok), other=0.0)
        wk = tl.load(w_ptr + _at(ks, experts, E), mask=_both(k_ok, e_ok), other=0.0)
        logits += tl.dot(hk.to(tl.float32), wk.to(tl.float32), input_precision="ieee")

    masked = tl.where(e_ok[None, :], logits, float("-inf"))
    exp = tl.exp(masked - tl.max(masked, axis=1)[:, None])
    probs = exp / tl.sum(exp, axis=1)[:, None]
    tl.store(probs_ptr + routed, probs, mask=routed_ok)
    tl.store(logits_ptr + routed, logits, mask=routed_ok)

    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        tile, ok = _at(rows, col0 + ks, d), _both(row_ok, k_ok)
        hk = tl.load(h_ptr + tile, mask=ok, other=0.0)
        vk = tl.load(v_ptr + _at(experts, col0 + ks, d), mask=_both(e_ok, k_ok), other=0.0)
        merged = tl.dot(probs, vk.to(tl.float32), input_precision="ieee")  # [BLOCK_N, BLOCK_K]
        tl.store(out_ptr + tile, (hk.to(tl.float32) * merged).to(hk.dtype), mask=ok)


@triton.jit
def _mov_backward_kernel(
    h_ptr, g_ptr, w_ptr, v_ptr, probs_ptr, g_probs_ptr, g_logits_ptr,
    g_h_ptr, g_w_ptr, g_v_ptr,
    n_tokens, d, n_heads,
    K: tl.constexpr, E: tl.constexpr,
    HAS_G_PROBS: tl.constexpr, HAS_G_LOGITS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    rows, row_ok, col0, experts, e_ok, routed, routed_ok = _program_block(
        n_tokens, n_heads, K, E, BLOCK_N, BLOCK_E
    )
    probs = tl.load(probs_ptr + routed, mask=routed_ok, other=0.0)
    if HAS_G_PROBS:
        g_p = tl.load(g_probs_ptr + routed, mask=routed_ok, other=0.0)
    else:
        g_p = tl.zeros((BLOCK_N, BLOCK_E), dtype=tl.float32)

    # pass 1: g_merged = g * h -> gradient of the probabilities, and g_V += probs^T g_merged
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        tile, ok = _at(rows, col0 + ks, d), _both(row_ok, k_ok)
        v_tile, v_ok = _at(experts, col0 + ks, d), _both(e_ok, k_ok)
        hk = tl.load(h_ptr + tile, mask=ok, other=0.0).to(tl.float32)
        gk = tl.load(g_ptr + tile, mask=ok, other=0.0).to(tl.float32)
        vk = tl.load(v_ptr + v_tile, mask=v_ok, other=0.0).to(tl.float32)
        g_merged = gk * hk
        g_p += tl.dot(g_merged, tl.trans(vk), input_precision="ieee")
        g_v = tl.dot(tl.trans(probs), g_merged, input_precision="ieee")  # [BLOCK_E, BLOCK_K]
        tl.atomic_add(g_v_ptr + v_tile, g_v, mask=v_ok)

    # softmax backward (a soft merge: p * (g_p - sum(g_p * p))), then the direct logit grads
    g_l = probs * (g_p - tl.sum(g_p * probs, axis=1)[:, None])
    if HAS_G_LOGITS:
        g_l += tl.load(g_logits_ptr + routed, mask=routed_ok, other=0.0)
    g_l = tl.where(routed_ok, g_l, 0.0)

    # pass 2: g_h = g * merged + g_l W^T, and g_W += h^T g_l
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        tile, ok = _at(rows, col0 + ks, d), _both(row_ok, k_ok)
        w_tile, w_ok = _at(ks, experts, E), _both(k_ok, e_ok)
        hk = tl.load(h_ptr + tile, mask=ok, other=0.0)
        gk = tl.load(g_ptr + tile, mask=ok, other=0.0).to(tl.float32)
        vk = tl.load(v_ptr + _at(experts, col0 + ks, d), mask=_both(e_ok, k_ok), other=0.0)
        wk = tl.load(w_ptr + w_tile, mask=w_ok, other=0.0).to(tl.float32)
        merged = tl.dot(probs, vk.to(tl.float32), input_precision="ieee")
        g_h = gk * merged + tl.dot(g_l, tl.trans(wk), input_precision="ieee")
        tl.store(g_h_ptr + tile, g_h.to(hk.dtype), mask=ok)
        g_w = tl.dot(tl.trans(hk.to(tl.float32)), g_l, input_precision="ieee")  # [BK, BE]
        tl.atomic_add(g_w_ptr + w_tile, g_w, mask=w_ok)


def _blocks(d_head: int, n_experts: int) -> tuple[int, int]:
    """``(BLOCK_K, BLOCK_E)``: powers of two of at least 16 (``tl.dot``'s minimum)."""
    block_k = min(64, max(16, triton.next_power_of_2(d_head)))
    return block_k, max(16, triton.next_power_of_2(n_experts))


class TritonMoV(torch.autograd.Function):
    """Soft-merge MoV, ``(out, probs, logits)``; see :func:`triton_mov`."""

    @staticmethod
    def forward(
        ctx: Any, h: Tensor, router_weight: Tensor, vectors: Tensor, heads: int | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        n_heads = heads or 1
        d, n_experts = h.shape[-1], vectors.shape[0]
        h2 = h.reshape(-1, d).contiguous()
        w, v = router_weight.contiguous(), vectors.contiguous()
        n_tokens, d_head = h2.shape[0], d // n_heads
        out = torch.empty_like(h2)
        probs = h2.new_empty((n_tokens, n_heads, n_experts), dtype=torch.float32)
        logits = torch.empty_like(probs)
        block_k, block_e = _blocks(d_head, n_experts)
        grid = (triton.cdiv(n_tokens, BLOCK_N), n_heads)
        _mov_forward_kernel[grid](
            h2, w, v, out, probs, logits, n_tokens, d, n_heads,
            K=d_head, E=n_experts, BLOCK_N=BLOCK_N, BLOCK_K=block_k, BLOCK_E=block_e,
        )  # fmt: skip
        ctx.save_for_backward(h2, w, v, probs)
        ctx.heads, ctx.shapes = heads, (h.shape, router_weight.dtype, vectors.dtype)
        ctx.set_materialize_grads(False)
        routed = (*h.shape[:-1], n_heads, n_experts) if heads else (*h.shape[:-1], n_experts)
        return out.view(h.shape), probs.view(routed), logits.view(routed)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, g_out: Tensor | None, g_probs: Tensor | None, g_logits: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        h2, w, v, probs = ctx.saved_tensors
        h_shape, w_dtype, v_dtype = ctx.shapes
        n_tokens, d = h2.shape
        n_heads, n_experts = probs.shape[1:]
        g2 = torch.zeros_like(h2) if g_out is None else g_out.reshape(n_tokens, d).contiguous()
        g_h = torch.empty_like(h2)
        g_w = torch.zeros(w.shape, dtype=torch.float32, device=h2.device)
        g_v = torch.zeros(v.shape, dtype=torch.float32, device=h2.device)
        block_k, block_e = _blocks(d // n_heads, n_experts)
        grid = (triton.cdiv(n_tokens, BLOCK_N), n_heads)
        _mov_backward_kernel[grid](
            h2, g2, w, v, probs,
            probs if g_probs is None else g_probs.contiguous(),
            probs if g_logits is None else g_logits.contiguous(),
            g_h, g_w, g_v, n_tokens, d, n_heads,
            K=d // n_heads, E=n_experts,
            HAS_G_PROBS=g_probs is not None, HAS_G_LOGITS=g_logits is not None,
            BLOCK_N=BLOCK_N, BLOCK_K=block_k, BLOCK_E=block_e,
        )  # fmt: skip
        return g_h.view(h_shape), g_w.to(w_dtype), g_v.to(v_dtype), None


def triton_mov(
    h: Tensor, router_weight: Tensor, vectors: Tensor, heads: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Soft-merge MoV in one Triton kernel per pass; the same contract as
    :func:`mixlight_torch.ops.fused_mov` with ``top_k=None``.

    Args:
      h: ``[..., d]`` float32, bfloat16 or float16.
      router_weight: ``[d // heads, E]``.  vectors: ``[E, d]`` (head-major per head).
      heads: route each head's slice of ``h`` separately.
    Returns:
      ``out [..., d]`` in h's dtype; ``probs`` and ``logits`` ``[..., (heads,) E]`` float32.
    """
    check_mov(h.shape, router_weight.shape, vectors.shape, heads)
    return TritonMoV.apply(h, router_weight, vectors, heads or None)
