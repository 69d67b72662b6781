"""The tables of ``docs/scaling.md``: how MoV and MoLoRA scale at T5-XL and T5-XXL shapes.

Adapter sizes come from the presets and ``SiteSpec.param_specs()`` planned against the
modules of a T5 v1.1 stack (no weights are built). Router and mixing costs are counted per
token from the same specs. The memory kept for backward is measured with torch's
saved-tensor hooks on one site of each distinct shape (16 tokens), for the fused ops and for
the plain autograd graph of the core math (``mixlight.extend.apply_site``), and scaled to a batch.

Run: ``python benchmarks/scaling_table.py`` (a few seconds on a CPU).
"""

from __future__ import annotations

import functools

import attrs
import numpy as np

import mixlight as ml
import mixlight.extend as mlx
from mixlight.extend import ModuleShape, SiteSpec, plan_sites

VOCAB, ENC_LEN, DEC_LEN, BATCH, RANKS = 32128, 512, 128, 32, 8
EXPERTS = (1, 10, 30, 60)


@attrs.frozen
class T5Shape:
    name: str
    d_model: int
    d_kv: int
    heads: int
    d_ff: int
    layers: int  # per stack (encoder and decoder alike)

    def modules(self) -> dict[str, ModuleShape]:
        """Every Linear (and FFN activation) of a T5 v1.1 stack, by HF module path."""
        inner, d = self.d_kv * self.heads, self.d_model
        out: dict[str, ModuleShape] = {}
        stacks = {"encoder": ["SelfAttention"], "decoder": ["SelfAttention", "EncDecAttention"]}
        for stack, attentions in stacks.items():
            for i in range(self.layers):
                for j, attn in enumerate(attentions):
                    prefix = f"{stack}.block.{i}.layer.{j}.{attn}"
                    for name in "qkv":
                        out[f"{prefix}.{name}"] = ModuleShape(d, inner, self.heads)
                    out[f"{prefix}.o"] = ModuleShape(inner, d, self.heads)
                ffn = f"{stack}.block.{i}.layer.{len(attentions)}.DenseReluDense"
                out[f"{ffn}.wi_0"] = out[f"{ffn}.wi_1"] = ModuleShape(d, self.d_ff)
                out[f"{ffn}.wo"] = ModuleShape(self.d_ff, d)
                out[f"{ffn}.act"] = ModuleShape(self.d_ff, self.d_ff)
        return out

    def base_params(self) -> int:
        """Weights of the whole model: Linears, untied embedding and LM head, layer norms,
        relative position biases."""
        linear = sum(s.d_in * s.d_out for p, s in self.modules().items() if not p.endswith("act"))
        norms = (2 * self.layers + 1 + 3 * self.layers + 1) * self.d_model
        return linear + 2 * VOCAB * self.d_model + norms + 2 * 32 * self.heads

    def base_flops(self) -> int:
        """Matmul FLOPs of one forward over one example (attention scores left out)."""
        flops = 2 * VOCAB * self.d_model * DEC_LEN
        for path, s in self.modules().items():
            if not path.endswith("act"):
                flops += 2 * s.d_in * s.d_out * tokens(path)
        return flops


XL = T5Shape("T5-XL", 2048, 64, 32, 5120, 24)
XXL = T5Shape("T5-XXL", 4096, 64, 64, 10240, 24)


def tokens(path: str) -> int:
    """Tokens of one example a module sees: cross-attention k/v read encoder states."""
    encoder = path.startswith("encoder") or path.endswith(
        ("EncDecAttention.k", "EncDecAttention.v")
    )
    return ENC_LEN if encoder else DEC_LEN


def specs(config: ml.AdapterConfig, shape: T5Shape) -> list[SiteSpec]:
    return plan_sites(config, shape.modules())


def n_params(site_specs: list[SiteSpec]) -> int:
    return sum(int(np.prod(p.shape)) for s in site_specs for p in s.param_specs().values())


def mix_flops(s: SiteSpec) -> int:
    """Forward FLOPs per token of one site: ``(router, experts)``."""
    router = 2 * s.d_route * (s.heads or 1) * s.num_experts if s.has_router else 0
    if isinstance(s.expert, mlx.LowRank):
        r = s.expert.rank * s.num_experts
        return router, 2 * r * (s.d_in + s.d_out) + r + s.d_out
    return router, 2 * s.num_experts * s.d_out * bool(s.has_router) + s.d_out


def configs() -> dict[str, list[ml.AdapterConfig]]:
    return {
        "MoV": [ml.MoV(e) for e in EXPERTS],
        "MoLoRA r=4": [ml.MoLoRA(e, 4) for e in EXPERTS],
    }


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.1f}"


def params_table() -> None:
    print(
        "\n### Adapter parameters and training state (float32 params + grads + AdamW m, v = "
        f"16 B/param; FSDP2 per rank at {RANKS} ranks)\n"
    )
    print("| model | method | experts | sites | params | % of base | state MiB | per rank MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for shape in (XL, XXL):
        base = shape.base_params()
        for method, cfgs in configs().items():
            for cfg in cfgs:
                ss = specs(cfg, shape)
                n = n_params(ss)
                print(
                    f"| {shape.name} | {method} | {cfg.num_experts} | {len(ss)} | {n:,} | "
                    f"{100 * n / base:.3f} | {mib(16 * n)} | {mib(16 * n / RANKS)} |"
                )
    for shape in (XL, XXL):
        base = shape.base_params()
        print(
            f"\n{shape.name}: {base:,} base parameters; frozen bf16 weights {mib(2 * base)} MiB "
            f"replicated (DDP), {mib(2 * base / RANKS)} MiB per rank (FSDP2, {RANKS} ranks)."
        )


def flops_table() -> None:
    print(
        f"\n### Router and expert cost (forward FLOPs per example of {ENC_LEN} input + "
        f"{DEC_LEN} target tokens, vs the base model's matmuls)\n"
    )
    print("| model | method | experts | router GFLOP | experts GFLOP | base GFLOP | adapter % |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for shape in (XL, XXL):
        base = shape.base_flops()
        for method, cfgs in configs().items():
            for cfg in cfgs:
                router = experts = 0
                for s in specs(cfg, shape):
                    r, e = mix_flops(s)
                    router, experts = router + r * tokens(s.path), experts + e * tokens(s.path)
                print(
                    f"| {shape.name} | {method} | {cfg.num_experts} | {router / 1e9:.2f} | "
                    f"{experts / 1e9:.2f} | {base / 1e9:,.0f} | "
                    f"{100 * (router + experts) / base:.2f} |"
                )


@functools.cache
def saved_bytes(spec: SiteSpec, fused: bool, n: int) -> int:
    """Bytes the adapter adds to what autograd keeps for backward over ``n`` tokens at one
    site (its input, its base output and its parameters excluded: those exist either way)."""
    import torch

    from mixlight_torch.layers import AdapterLayer, AdapterSwitch

    rng = np.random.default_rng(0)
    layer = AdapterLayer(torch.nn.Identity(), AdapterSwitch())
    layer.add("default", spec, spec.init_params(rng))
    x = torch.randn(n, spec.d_in, requires_grad=True)
    h = torch.randn(n, spec.d_out, requires_grad=True)
    known = {t.untyped_storage().data_ptr() for t in (x, h, *layer.adapter.values())}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in known:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if fused:
            layer.mix("default", x, h)
        else:
            mlx.apply_site(spec, dict(layer.adapter.items()), x, h)
    return sum(kept.values())


def saved_total(spec: SiteSpec, fused: bool, n_tokens: int) -> float:
    """:func:`saved_bytes` at ``n_tokens``, extrapolated from 16 and 32 tokens (the part that
    grows with the tokens, plus a fixed part such as re-laid-out LoRA kernels)."""
    spec = attrs.evolve(spec, path="")  # sites of one shape share the measurement
    small, large = saved_bytes(spec, fused, 16), saved_bytes(spec, fused, 32)
    per_token = (large - small) / 16
    return small + per_token * (n_tokens - 16)


def memory_table() -> None:
    print(
        f"\n### Activation memory the adapter keeps for backward (float32 activations, batch "
        f"{BATCH} x ({ENC_LEN} + {DEC_LEN}) tokens), fused ops vs the plain autograd graph\n"
    )
    print("| model | method | experts | fused MiB | naive MiB | naive / fused |")
    print("|---|---|---:|---:|---:|---:|")
    for shape in (XL, XXL):
        for method, cfgs in configs().items():
            for cfg in cfgs:
                if cfg.num_experts == 1:
                    continue
                totals = [
                    sum(saved_total(s, fused, BATCH * tokens(s.path)) for s in specs(cfg, shape))
                    for fused in (True, False)
                ]
                print(
                    f"| {shape.name} | {method} | {cfg.num_experts} | {mib(totals[0])} | "
                    f"{mib(totals[1])} | {totals[1] / totals[0]:.1f}x |"
                )


if __name__ == "__main__":
    params_table()
    flops_table()
    memory_table()
