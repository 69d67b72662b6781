"""Decoder-only MoV and MoLoRA in JAX, on a Llama-style Flax NNX model whose adapter files
load into Hugging Face's torch ``LlamaForCausalLM``.

The model (RoPE, grouped-query attention, SwiGLU MLP, RMSNorm) names its modules as HF's
Llama does (``model.layers.N.self_attn.q_proj`` ... ``mlp.down_proj``, ``lm_head``) and keeps
its layers stacked: one ``DecoderLayer`` built by ``nnx.vmap``, every parameter with a
leading layer axis, run by ``nnx.scan`` (``scan_layers=False`` builds an ``nnx.List`` of
layers instead). mixlight adapts a stacked module once, its adapter stacked the same way,
and lists and saves it per layer under HF's paths, so one adapter file serves the scanned
model, the unrolled one and the torch model alike.

The sites are explicit, so the example does not lean on any preset: MoV scales the keys and
values (routed per key/value head) and the input of ``down_proj`` (``Site(tensor="input")``,
what PEFT's (IA)³ ``feedforward_modules`` scale); MoLoRA adapts every projection.

Run: ``python examples/llama_nnx.py [output directory]``; it trains each adapter a few
steps under ``jit``, saves it, copies the base weights into a tiny random HF
``LlamaForCausalLM``, loads the file there and prints how far the torch logits are from the
JAX ones (about 1e-6).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import mixlight as ml
import mixlight.extend as mlx
from mixlight_jax import AdapterParam


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """The fields of HF's ``LlamaConfig`` this model uses (tiny defaults)."""

    vocab_size: int = 128
    hidden_size: int = 32
    intermediate_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    scan_layers: bool = True
    model_type: str = "llama"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class RMSNorm(nnx.Module):
    def __init__(self, size: int, eps: float):
        self.weight = nnx.Param(jnp.ones((size,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * h.astype(x.dtype)


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """``cos``, ``sin`` ``[length, head_dim]`` of HF Llama's default rotary embedding."""
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    freqs = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``x [batch, seq, heads, head_dim]`` rotated as HF's ``apply_rotary_pos_emb``."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


class Attention(nnx.Module):
    def __init__(self, config: LlamaConfig, rngs: nnx.Rngs):
        d, hd = config.hidden_size, config.head_dim
        self.num_heads, self.num_key_value_heads = (
            config.num_attention_heads,
            config.num_key_value_heads,
        )
        self.head_dim = hd
        kv = config.num_key_value_heads * hd
        self.q_proj = nnx.Linear(d, config.num_attention_heads * hd, use_bias=False, rngs=rngs)
        self.k_proj = nnx.Linear(d, kv, use_bias=False, rngs=rngs)
        self.v_proj = nnx.Linear(d, kv, use_bias=False, rngs=rngs)
        self.o_proj = nnx.Linear(config.num_attention_heads * hd, d, use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        batch, length, _ = x.shape
        heads, kv_heads, hd = self.num_heads, self.num_key_value_heads, self.head_dim
        q = apply_rope(self.q_proj(x).reshape(batch, length, heads, hd), cos, sin)
        k = apply_rope(self.k_proj(x).reshape(batch, length, kv_heads, hd), cos, sin)
        v = self.v_proj(x).reshape(batch, length, kv_heads, hd)
        k, v = (jnp.repeat(t, heads // kv_heads, axis=2) for t in (k, v))  # HF's repeat_kv
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * hd**-0.5
        causal = jnp.tril(jnp.ones((length, length), bool))
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(q.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, length, heads * hd)
        return self.o_proj(out)


class MLP(nnx.Module):
    def __init__(self, config: LlamaConfig, rngs: nnx.Rngs):
        d, ff = config.hidden_size, config.intermediate_size
        self.gate_proj = nnx.Linear(d, ff, use_bias=False, rngs=rngs)
        self.up_proj = nnx.Linear(d, ff, use_bias=False, rngs=rngs)
        self.down_proj = nnx.Linear(ff, d, use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, config: LlamaConfig, rngs: nnx.Rngs):
        self.self_attn = Attention(config, rngs)
        self.mlp = MLP(config, rngs)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nnx.Module):
    def __init__(self, config: LlamaConfig, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = nnx.Embed(config.vocab_size, config.hidden_size, rngs=rngs)
        if config.scan_layers:

            @nnx.split_rngs(splits=config.num_hidden_layers)
            @nnx.vmap(in_axes=0, out_axes=0)
            def stacked(rngs: nnx.Rngs) -> DecoderLayer:
                return DecoderLayer(config, rngs)

            self.layers: Any = stacked(rngs)
        else:
            self.layers = nnx.List(
                [DecoderLayer(config, rngs) for _ in range(config.num_hidden_layers)]
            )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        config = self.config
        x = self.embed_tokens(input_ids)
        cos, sin = rope_tables(input_ids.shape[-1], config.head_dim, config.rope_theta)
        if config.scan_layers:

            @nnx.scan(in_axes=(0, nnx.Carry, None, None), out_axes=nnx.Carry)
            def step(layer: DecoderLayer, x: jax.Array, cos: jax.Array, sin: jax.Array):
                return layer(x, cos, sin)

            x = step(self.layers, x, cos, sin)
        else:
            for layer in self.layers:
                x = layer(x, cos, sin)
        return self.norm(x)


class LlamaForCausalLM(nnx.Module):
    """``input_ids [batch, seq]`` -> logits ``[batch, seq, vocab]`` (causal, no padding)."""

    def __init__(self, config: LlamaConfig, rngs: nnx.Rngs):
        self.config = config
        self.model = LlamaModel(config, rngs)
        self.lm_head = nnx.Linear(config.hidden_size, config.vocab_size, use_bias=False, rngs=rngs)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        return self.lm_head(self.model(input_ids))


# --- adapters ---------------------------------------------------------------------------------

LAYERS = r"model\.layers\.\d+\."


def mov(config: LlamaConfig, num_experts: int = 4) -> ml.AdapterConfig:
    """MoV on the keys and values (one router per key/value head) and down_proj's input."""
    vectors = mlx.Vectors()
    return ml.AdapterConfig(
        [
            ml.Site(
                LAYERS + r"self_attn\.(?:k_proj|v_proj)",
                vectors,
                heads=config.num_key_value_heads,
            ),
            ml.Site(LAYERS + r"mlp\.down_proj", vectors, tensor="input"),
        ],
        num_experts,
        method=f"MoV-{num_experts}",
    )


def molora(num_experts: int = 4, rank: int = 4) -> ml.AdapterConfig:
    """MoLoRA on every projection of the attention and the MLP."""
    return ml.MoLoRA(
        num_experts,
        rank,
        targets=[
            LAYERS + r"self_attn\.(?:q_proj|k_proj|v_proj|o_proj)",
            LAYERS + r"mlp\.(?:gate_proj|up_proj|down_proj)",
        ],
    )


def train(model: LlamaForCausalLM, ids: jax.Array, steps: int, lr: float = 3e-2) -> list[float]:
    """``steps`` Adam steps of next-token prediction on ``ids``, adapters only: in JAX
    ``ml.inject`` freezes nothing, so the optimizer and the gradient pick the adapter
    parameters by their type, ``AdapterParam``."""
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=AdapterParam)

    @nnx.jit
    def step(model: LlamaForCausalLM, optimizer: nnx.Optimizer, ids: jax.Array) -> jax.Array:
        def loss_fn(model: LlamaForCausalLM) -> jax.Array:
            logits = model(ids[:, :-1])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()
            return loss + ml.aux_losses(model)

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, AdapterParam))(model)
        optimizer.update(model, grads)
        return loss

    return [float(step(model, optimizer, ids)) for _ in range(steps)]


# --- HF torch --------------------------------------------------------------------------------


def hf_state_dict(model: LlamaForCausalLM) -> dict[str, np.ndarray]:
    """The model's weights under HF ``LlamaForCausalLM`` names (torch ``Linear`` weights are
    ``[out, in]``, NNX kernels ``[in, out]``), a stacked layer split per layer."""
    config = model.config
    out = {
        "model.embed_tokens.weight": np.asarray(model.model.embed_tokens.embedding[...]),
        "model.norm.weight": np.asarray(model.model.norm.weight[...]),
        "lm_head.weight": np.asarray(model.lm_head.kernel[...]).T,
    }
    for i in range(config.num_hidden_layers):
        for name, variable in nnx.to_flat_state(nnx.state(_layer(model, i), nnx.Param)):
            value = np.asarray(variable.get_value())
            value = value[i] if config.scan_layers else value
            dotted = ".".join(map(str, name))
            if dotted.endswith(".kernel"):
                dotted, value = dotted.removesuffix(".kernel") + ".weight", value.T
            out[f"model.layers.{i}.{dotted}"] = value
    return out


def _layer(model: LlamaForCausalLM, i: int) -> nnx.Module:
    return model.model.layers if model.config.scan_layers else model.model.layers[i]


def to_torch(model: LlamaForCausalLM) -> Any:
    """A HF ``LlamaForCausalLM`` (float32, eager attention) with ``model``'s weights."""
    import torch
    import transformers

    config = model.config
    hf_config = transformers.LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope_theta,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    state = {k: torch.tensor(np.array(v)) for k, v in hf_state_dict(model).items()}
    hf.load_state_dict(state, strict=True)
    return hf


def torch_logits(hf: Any, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return hf(torch.tensor(np.array(ids))).logits.numpy()


def run(out_dir: str | Path, *, steps: int = 8, scan_layers: bool = True) -> dict[str, Any]:
    """Train MoV and MoLoRA on the NNX Llama, save them under ``out_dir``, load each into
    the HF torch Llama holding the same base weights. By method: the losses, the largest
    logit differences torch vs JAX (``base_diff``, ``adapted_diff``) and adapted vs base
    (``moved``), the parameter count, the adapter's directory, the ids and JAX logits."""
    config = LlamaConfig(scan_layers=scan_layers)
    ids = jax.random.randint(jax.random.key(0), (4, 16), 0, config.vocab_size)
    results: dict[str, Any] = {}
    for name, adapter in {"mov": mov(config), "molora": molora()}.items():
        model = LlamaForCausalLM(config, rngs=nnx.Rngs(0))
        base = np.asarray(model(ids))
        hf = to_torch(model)
        base_diff = np.abs(torch_logits(hf, ids) - base).max()
        ml.inject(model, adapter, seed=0)
        losses = train(model, ids, steps)
        directory = ml.save_adapter(model, Path(out_dir) / name)
        logits = np.asarray(model(ids))
        ml.load_adapter(hf, directory)
        results[name] = {
            "losses": losses,
            "base_diff": float(base_diff),
            "adapted_diff": float(np.abs(torch_logits(hf, ids) - logits).max()),
            "moved": float(np.abs(logits - base).max()),
            "trainable": ml.trainable_parameters(model),
            "directory": directory,
            "ids": ids,
            "logits": logits,
        }
    return results


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else Path(tempfile.mkdtemp(prefix="llama-nnx-"))
    for name, r in run(out).items():
        print(
            f"{name}: {r['trainable']}; loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}; "
            f"saved to {r['directory']}; torch vs JAX logits: base {r['base_diff']:.1e}, "
            f"adapted {r['adapted_diff']:.1e} (the adapter moved them by {r['moved']:.2f})"
        )


if __name__ == "__main__":
    main(sys.argv)
