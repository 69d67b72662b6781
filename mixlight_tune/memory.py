"""Peak memory per device of a ``mixlight tune`` run, estimated before it starts
(``mixlight tune --dry-run``): the frozen base, the adapters, their gradients and optimiser
state, and the activations one micro-batch keeps for the backward pass.

The activation count is T5's own (Korthikanti et al.'s bookkeeping applied to T5 v1.1
blocks): per token and layer, the residual input and the normed input of each sub-layer, the
query/key/value and attended outputs, the softmax probabilities (``heads x key length``),
the feed-forward's hidden activations, dropout masks (one byte) when dropout is on, and the
float32 logits and log-probabilities of the LM head. Activation checkpointing keeps each
block's input and one block's activations instead. Routing probabilities of MoV/MoLoRA
sites (float32, ``experts`` a token, times ``heads`` for per-head routers) are added. It is
an estimate: allocator slack, temporary buffers of fused kernels, the framework's own
workspace (CUDA context, XLA scratch) and FSDP2's prefetch of the next block are not
counted. ``docs/scaling.md`` compares it with measured peaks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MIB = 2**20


@dataclass(frozen=True)
class Layout:
    """How the run is spread: processes, data and model ways, FSDP2 or not."""

    processes: int = 1
    data: int = 1
    model: int = 1
    fsdp: bool = False


def optimizer_floats(optimizer: str, shapes: Sequence[Sequence[int]]) -> int:
    """Float32 state entries: AdamW two per parameter, SGD none, Adafactor (no momentum)
    a row and a column factor per matrix (``shape[:-1]`` and ``shape[:-2] + shape[-1:]``)
    and one per entry of a vector."""
    total = 0
    for shape in shapes:
        size = 1
        for d in shape:
            size *= d
        if optimizer == "adamw":
            total += 2 * size
        elif optimizer == "adafactor":
            if len(shape) >= 2:
                lead = size // (shape[-1] * shape[-2])
                total += lead * (shape[-2] + shape[-1]) + 1
            else:
                total += size + 1
    return total


def _activations(
    t5: Mapping[str, Any],
    rows: int,
    source: int,
    target: int,
    act_bytes: int,
    dropout: bool,
    checkpointing: bool,
) -> tuple[int, int]:
    """``(bytes kept by the base model's activations, bytes of the LM head's)``."""
    h, heads = int(t5["d_model"]), int(t5["num_heads"])
    inner, f = heads * int(t5["d_kv"]), int(t5["d_ff"])
    gated = str(t5.get("feed_forward_proj", "relu")).startswith("gated")
    enc_layers = int(t5["num_layers"])
    dec_layers = int(t5.get("num_decoder_layers") or enc_layers)
    mask = 1 if dropout else 0  # bytes per dropped element

    def attention(q: int, k: int, own_kv: bool) -> int:
        values = q * (2 * h + 2 * inner) + (2 * k * inner if own_kv else 2 * q * inner)
        probs = heads * q * k
        return values * act_bytes + probs * (4 + mask) + q * h * mask

    def ffn(n: int) -> int:
        hidden = (4 if gated else 2) * f
        return n * (2 * h + hidden) * act_bytes + n * (f + h) * mask

    enc = attention(source, source, True) + ffn(source)
    dec = attention(target, target, True) + attention(target, source, False) + ffn(target)
    if checkpointing:
        kept = (enc_layers * source + dec_layers * target) * h * act_bytes + max(enc, dec)
    else:
        kept = enc_layers * enc + dec_layers * dec
    kept += 2 * (source + target) * h * act_bytes  # embeddings and final norms
    head = target * int(t5["vocab_size"]) * (act_bytes + 8)  # logits, float32 copy, log-probs
    return rows * kept, rows * head


def _routing(
    trainable: Mapping[str, Sequence[int]],
    t5: Mapping[str, Any],
    rows: int,
    source: int,
    target: int,
) -> int:
    """Float32 routing probabilities the adapters keep, for every routed site."""
    d_kv, heads = int(t5["d_kv"]), int(t5["num_heads"])
    total = 0
    for name, shape in trainable.items():
        if not name.endswith(".router") or len(shape) != 2:
            continue
        experts = shape[-1]
        per_head = shape[0] == d_kv and d_kv != int(t5["d_model"])
        reads_source = name.startswith("encoder.") or "EncDecAttention.k" in name
        reads_source = reads_source or "EncDecAttention.v" in name
        tokens = source if reads_source else target
        total += rows * tokens * experts * (heads if per_head else 1) * 4
    return total


def estimate(
    inputs: Mapping[str, Any],
    *,
    optimizer: str,
    precision: str,
    micro_batch: int,
    source: int,
    target: int,
    dropout: float,
    checkpointing: bool,
    layout: Layout,
) -> dict[str, int]:
    """Bytes per device by kind (``base_weights``, ``adapter_weights``, ``gradients``,
    ``optimizer_state``, ``activations``, ``total``). ``inputs`` is a backend's
    ``memory_inputs(model)``; ``micro_batch`` the rows of one micro-batch over all devices;
    ``source``/``target`` the padded lengths of the longest batch."""
    t5 = inputs["t5"]
    shapes = dict(inputs["trainable"])
    trainable = sum(_size(s) for s in shapes.values())
    base = int(inputs["base_bytes"])
    if layout.fsdp:
        layers = int(t5["num_layers"]) + int(t5.get("num_decoder_layers") or t5["num_layers"])
        base = base // layout.processes + base // max(1, layers)  # shard + one gathered block
    else:
        base = base // layout.model
    adapter_share = layout.processes if layout.fsdp else 1
    rows = max(1, micro_batch // max(1, layout.data))
    act_bytes = 2 if precision == "bf16" else 4
    kept, head = _activations(t5, rows, source, target, act_bytes, dropout > 0, checkpointing)
    out = {
        "base_weights": base,
        "adapter_weights": 4 * trainable // adapter_share,
        "gradients": 4 * trainable // adapter_share,
        "optimizer_state": 4 * optimizer_floats(optimizer, list(shapes.values())) // adapter_share,
        "activations": kept + head + _routing(shapes, t5, rows, source, target),
    }
    out["total"] = sum(out.values())
    return out


def _size(shape: Sequence[int]) -> int:
    size = 1
    for d in shape:
        size *= d
    return size


def format_estimate(estimate: Mapping[str, int], trainable_percent: float) -> str:
    """A small table in MiB, the trainable share beside it."""
    lines = [f"estimated peak memory per device (trainable: {trainable_percent:.3g}% of the model)"]
    for key, value in estimate.items():
        lines.append(f"  {key.replace('_', ' '):16s} {value / MIB:12,.1f} MiB")
    return "\n".join(lines)
