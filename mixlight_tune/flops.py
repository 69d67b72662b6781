"""Model FLOPs of a tuning run and its model FLOPs utilisation (MFU), from the model config.

Counted as the usual estimate does (PaLM's appendix B): a matrix multiply of a ``[tokens, m]``
input by an ``[m, n]`` weight is ``2 m n`` FLOPs a token forward, attention's scores and
weighted sum ``2 * 2 * keys * inner`` a query (every key, also under a causal mask, as
PaLM's count does); norms, activations and the adapters' own arithmetic are left out. The
backward pass of a frozen base computes input gradients only (another forward's worth); full
fine-tuning adds the weight gradients (a third).
Activation checkpointing's recomputation is not model FLOPs. MFU divides the achieved rate
by the device's dense peak at the run's precision, for the GPUs in :data:`PEAK_TFLOPS`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from .memory import Dims

# Dense (no sparsity) tensor-core peaks in TFLOP/s by device-name fragment: bf16, and fp32
# as torch runs it by default (no TF32: the CUDA cores' rate).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp32": 91.6},
    "A10G": {"bf16": 70.0, "fp32": 31.2},
    "L4": {"bf16": 121.0, "fp32": 30.3},
}


def forward_flops(config: Mapping[str, Any], source: int, target: int) -> float:
    """Forward FLOPs of one row of ``source`` input and ``target`` target tokens (a
    decoder-only model reads them as one row of ``source + target``)."""
    d = Dims.of(config)
    inner, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    ffn = (3 if d.ffn_tensors in (4, 8) else 2) * d.h * d.f  # gated: two input projections

    def layer(tokens: int, keys: int) -> float:
        projections = 2 * d.h * inner + 2 * d.h * kv  # q, o and k, v
        return 2.0 * tokens * (projections + ffn) + 4.0 * tokens * keys * inner

    if d.causal:
        n = source + target
        return d.decoder_layers * layer(n, n) + 2.0 * n * d.h * d.vocab
    encoder = d.encoder_layers * layer(source, source)
    # cross-attention: q and o on the targets, k and v on the encoder's states
    cross = 2.0 * (target * 2 * d.h * inner + source * 2 * d.h * kv)
    cross += 4.0 * target * source * inner
    decoder = d.decoder_layers * (layer(target, target) + cross)
    return encoder + decoder + 2.0 * target * d.h * d.vocab


def row_flops(config: Mapping[str, Any], full: bool) -> Callable[[int, int], float]:
    """``(source, target) ->`` model FLOPs of training on one row: forward, input gradients,
    and with ``full`` fine-tuning the weight gradients."""
    factor = 3.0 if full else 2.0

    @functools.lru_cache(maxsize=4096)
    def flops(source: int, target: int) -> float:
        return factor * forward_flops(config, source, target)

    return flops


def utilisation(
    flops_per_second: float, device_name: str | None, precision: str, devices: int
) -> float | None:
    """Achieved over peak FLOP/s for ``devices`` devices of ``device_name`` (``None`` when its
    peak is not in :data:`PEAK_TFLOPS`, for example on a CPU)."""
    if not device_name:
        return None
    for fragment, peaks in PEAK_TFLOPS.items():
        if fragment in device_name:
            return flops_per_second / (peaks[precision] * 1e12 * devices)
    return None
