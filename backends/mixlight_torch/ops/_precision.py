"""Dtype, autocast and size policies shared by the fused ops."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor


def no_autocast(t: Tensor) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on ``t``'s device type (free when it is off)."""
    if torch.is_autocast_enabled(t.device.type):
        return torch.autocast(device_type=t.device.type, enabled=False)
    return contextlib.nullcontext()


def compute_dtype(t: Tensor) -> torch.dtype:
    """The router's dtype: float32 for half and single precision, float64 for float64."""
    return torch.promote_types(t.dtype, torch.float32)


# Below this many multiply-adds a contraction on CPU runs as broadcast-and-sum: the matmul and
# softmax kernels open an OpenMP parallel region even for a handful of numbers, and waking the
# worker threads costs ~0.1 ms, 10-30x the arithmetic (a decoding step routes one token).
SMALL_CPU_WORK = 1 << 15


def is_small(t: Tensor, work: int) -> bool:
    """Whether a contraction of ``work`` multiply-adds on ``t``'s device is small enough for
    :data:`SMALL_CPU_WORK` (never on an accelerator)."""
    return t.device.type == "cpu" and work <= SMALL_CPU_WORK


def wants_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd will need a backward through an op on ``tensors``."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# Under torch.compile, a contraction over at most this many experts is written as a sum of
# per-expert products: elementwise work that inductor fuses with its neighbours into one loop
# over ``[tokens, d]``, where a matmul would be a library call that writes its own ``[tokens,
# d]`` result (case 5 in benchmarks/HISTORY.md).
UNROLL_MAX_EXPERTS = 16


def unrolls(n_experts: int) -> bool:
    """Whether a contraction over ``n_experts`` runs as a sum of per-expert products: while
    torch.compile traces, up to :data:`UNROLL_MAX_EXPERTS` experts."""
    return n_experts <= UNROLL_MAX_EXPERTS and torch.compiler.is_compiling()
