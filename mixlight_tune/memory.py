"""Peak memory per device of a ``mixlight tune`` run, estimated before it starts
(``mixlight tune --dry-run``): the frozen base, the adapters, their gradients and optimiser
state, and the activations one micro-batch keeps for the backward pass.

The activation count is what HF's eager T5 saves for the backward pass, tensor by tensor
(:func:`_activations`), and the float32 log-probabilities of the LM head; activation
checkpointing keeps each block's input and one block's activations instead. Routing
probabilities of MoV/MoLoRA sites (float32, ``experts`` a token, times ``heads`` for
per-head routers) are added. It is an estimate: allocator slack, the backward pass's own
temporaries, the framework's workspace (CUDA context, XLA scratch) and FSDP2's prefetch of
the next block are not counted. Measured against it (``python -m benchmarks.tune_memory``,
docs/scaling.md): torch's saved-for-backward bytes within 2%, XLA's compiled temporaries
about 0.9x, a CPU process's peak resident growth about 1.8x.
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


@dataclass(frozen=True)
class Dims:
    """The sizes the estimate reads from a model config: width ``h``, attention ``heads``
    of ``head_dim`` (keys/values: ``kv_heads``), feed-forward width ``f`` (``ffn_tensors``
    of that width kept per token), layers of the encoder and decoder stacks (a decoder-only
    model: ``encoder_layers == 0``, ``causal``), ``vocab``."""

    h: int
    heads: int
    head_dim: int
    kv_heads: int
    f: int
    ffn_tensors: int
    encoder_layers: int
    decoder_layers: int
    vocab: int
    causal: bool = False

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Dims:
        """From an HF config dict: T5's keys, or a decoder-only model's (Llama's names,
        GPT-2's ``n_embd``/``n_head``/``n_layer``/``n_inner``)."""
        if "d_model" in config and "d_kv" in config:  # T5
            layers = int(config["num_layers"])
            gated = str(config.get("feed_forward_proj", "relu")).startswith("gated")
            heads = int(config["num_heads"])
            return cls(
                int(config["d_model"]), heads, int(config["d_kv"]), heads, int(config["d_ff"]),
                8 if gated else 3, layers, int(config.get("num_decoder_layers") or layers),
                int(config["vocab_size"]),
            )  # fmt: skip
        h = int(config.get("hidden_size") or config["n_embd"])
        heads = int(config.get("num_attention_heads") or config["n_head"])
        f = int(config.get("intermediate_size") or config.get("n_inner") or 4 * h)
        gated = "gate" in str(config.get("hidden_act", "")) or "llama" in _kinds(config)
        return cls(
            h, heads, int(config.get("head_dim") or h // heads),
            int(config.get("num_key_value_heads") or heads), f, 4 if gated else 3,
            0, int(config.get("num_hidden_layers") or config["n_layer"]),
            int(config["vocab_size"]), causal=True,
        )  # fmt: skip


def _kinds(config: Mapping[str, Any]) -> str:
    """Lower-case model type and architectures (which families gate their FFN)."""
    names = [str(config.get("model_type", "")), *map(str, config.get("architectures") or [])]
    gated = ("llama", "mistral", "qwen", "gemma", "phi3")
    return "llama" if any(g in n.lower() for n in names for g in gated) else ""


def _activations(
    d: Dims,
    rows: int,
    source: int,
    target: int,
    act_bytes: int,
    checkpointing: bool,
) -> tuple[int, int]:
    """``(bytes kept by the base model's activations, bytes of the LM head's)``.

    Per token, what HF's eager T5 saves for backward (counted tensor by tensor with
    ``torch.autograd.graph.saved_tensors_hooks`` on a small T5; ``benchmarks/tune_memory.py``):
    each pre-norm keeps its input, the normalised input and its output (3 ``d_model``); an
    attention its query, key and value projections and its attended output (4 ``inner``),
    and three copies of the probabilities (the softmax output, its dropped-out copy, the
    batched-matmul view; float32); a gated-GELU feed-forward eight ``d_ff``-wide tensors
    (the tanh-GELU's intermediates, the gate, the product; a plain one three). A
    decoder-only model is counted the same way over its one row (prompt and answer, so
    ``source + target`` tokens) with grouped key/value heads and a SwiGLU's four ``f``-wide
    tensors; that count is not calibrated against a measurement."""
    h, heads = d.h, d.heads
    inner, kv = heads * d.head_dim, d.kv_heads * d.head_dim

    def attention(q: int, k: int) -> int:
        values = q * (3 * h + inner + inner) + 2 * k * kv
        return values * act_bytes + 3 * heads * q * k * 4

    def ffn(n: int) -> int:
        return n * (3 * h + d.ffn_tensors * d.f) * act_bytes

    if d.causal:
        source, target = 0, source + target  # one row, every position predicts (HF's logits)
    enc = attention(source, source) + ffn(source)
    dec = attention(target, target) + ffn(target)
    if not d.causal:
        dec += attention(target, source)
    if checkpointing:
        kept = (d.encoder_layers * source + d.decoder_layers * target) * h * act_bytes
        kept += max(enc, dec)
    else:
        kept = d.encoder_layers * enc + d.decoder_layers * dec
    kept += 2 * (source + target) * h * act_bytes  # embeddings and final norms
    head = target * d.vocab * 4  # the float32 log-probabilities
    return rows * kept, rows * head


def _routing(
    trainable: Mapping[str, Sequence[int]],
    d: Dims,
    rows: int,
    source: int,
    target: int,
) -> int:
    """Float32 routing probabilities the adapters keep, for every routed site."""
    total = 0
    for name, shape in trainable.items():
        if not name.endswith(".router") or len(shape) != 2:
            continue
        experts = shape[-1]
        per_head = shape[0] == d.head_dim and d.head_dim != d.h
        reads_source = name.startswith("encoder.") or "EncDecAttention.k" in name
        reads_source = reads_source or "EncDecAttention.v" in name
        tokens = source + target if d.causal else source if reads_source else target
        total += rows * tokens * experts * (d.heads if per_head else 1) * 4
    return total


def estimate(
    inputs: Mapping[str, Any],
    *,
    optimizer: str,
    precision: str,
    micro_batch: int,
    source: int,
    target: int,
    checkpointing: bool,
    layout: Layout,
) -> dict[str, int]:
    """Bytes per device by kind (``base_weights``, ``adapter_weights``, ``gradients``,
    ``optimizer_state``, ``activations``, ``total``). ``inputs`` is a backend's
    ``memory_inputs(model)`` (its ``config``: the HF config as a dict); ``micro_batch`` the
    rows of one micro-batch over all devices; ``source``/``target`` the padded lengths of the
    longest batch (a decoder-only model's prompt and answer)."""
    d = Dims.of(inputs["config"])
    shapes = dict(inputs["trainable"])
    trainable = sum(_size(s) for s in shapes.values())
    base = int(inputs["base_bytes"])
    if layout.fsdp:
        layers = d.encoder_layers + d.decoder_layers
        base = base // layout.processes + base // max(1, layers)  # shard + one gathered block
    else:
        base = base // layout.model
    adapter_share = layout.processes if layout.fsdp else 1
    rows = max(1, micro_batch // max(1, layout.data))
    act_bytes = 2 if precision == "bf16" else 4
    kept, head = _activations(d, rows, source, target, act_bytes, checkpointing)
    out = {
        "base_weights": base,
        "adapter_weights": 4 * trainable // adapter_share,
        "gradients": 4 * trainable // adapter_share,
        "optimizer_state": 4 * optimizer_floats(optimizer, list(shapes.values())) // adapter_share,
        "activations": kept + head + _routing(shapes, d, rows, source, target),
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
