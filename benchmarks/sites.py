"""Cases 1 and 2: one adapter site, forward + backward, on ``[tokens, d]`` activations.

Case 1 (MoV site): ``h -> h * merged(h)`` with gradients for ``h``, the router and the
vectors: the fused op (on CUDA the Triton kernel, with the torch op as ``fused-torch``),
plain autograd through :mod:`mixlight.math`, and a plain (IA)³ site ``h * v``. Case 2
(MoLoRA site): ``x -> delta(x)`` (the adapter's delta, router included, without the frozen
base Linear) with gradients for ``x`` and every adapter weight: the fused op (its token
router inside), a per-expert Python loop, and one LoRA of rank ``E*r``.
"""

from __future__ import annotations

import dataclasses

import torch

from benchmarks.impl import Group, Impl, Pairs, grads_of, new_generator, randn
from mixlight.math import mix_vectors, router_logits, router_probs
from mixlight_torch.ops import FusedMoV, fused_mov, fused_routed_molora

Tensor = torch.Tensor
MOLORA_SCALE = 4.0  # alpha / r = 16 / 4, the preset's


def mov_group(tokens: int, d: int, n_experts: int, device: torch.device, seed: int = 0) -> Group:
    """Case 1 at one expert count; baseline ``ia3``."""
    g = new_generator(seed, device)
    h = randn((tokens, d), g, grad=True)
    w = randn((d, n_experts), g, std=0.1, grad=True)
    v = randn((n_experts, d), g, std=0.1, mean=1.0, grad=True)
    v_ia3 = v[0].detach().clone().requires_grad_()
    g_out = randn((tokens, d), g)

    def unfused() -> Tensor:
        return mix_vectors(h, router_probs(router_logits(h, w)), v)

    impls = {
        "ia3": Impl(lambda: h * v_ia3, grads_of({"h": h, "v": v_ia3}, g_out), [v_ia3]),
        "unfused": Impl(unfused, grads_of({"h": h, "router": w, "v": v}, g_out), [w, v]),
        "fused": Impl(
            lambda: fused_mov(h, w, v)[0], grads_of({"h": h, "router": w, "v": v}, g_out), [w, v]
        ),
    }
    same: Pairs = [("fused", "unfused", ("out", "h", "router", "v"))]
    if device.type == "cuda":  # "fused" runs the Triton kernel there; this is the torch op
        impls["fused-torch"] = Impl(
            lambda: FusedMoV.apply(h, w, v, None, None, True)[0],
            grads_of({"h": h, "router": w, "v": v}, g_out),
            [w, v],
        )
        same.append(("fused-torch", "unfused", ("out", "h", "router", "v")))
    if n_experts == 1:
        same.append(("fused", "ia3", ("out", "h")))
    return Group(f"E={n_experts}", "ia3", impls, same)


def compiled(group: Group, backend: str, fullgraph: bool = True) -> Group:
    """``group`` with every forward under ``torch.compile`` (backward is compiled with it by
    AOT autograd); ``backend`` is ``"inductor"`` or ``"aot_eager"``."""
    impls = {
        name: dataclasses.replace(
            impl, forward=torch.compile(impl.forward, backend=backend, fullgraph=fullgraph)
        )
        for name, impl in group.impls.items()
    }
    return Group(f"{group.label} compiled", group.baseline, impls, group.same)


def _loop_molora(x: Tensor, probs: Tensor, lora_A: Tensor, lora_B: Tensor) -> Tensor:
    """``scale * sum_e p_e (x @ A_e) @ B_e``, one full expert output per loop step."""
    out = torch.zeros((), device=x.device)
    for e in range(lora_A.shape[0]):
        out = out + probs[:, e : e + 1] * ((x @ lora_A[e]) @ lora_B[e])
    return out * MOLORA_SCALE


def molora_group(
    tokens: int,
    d: int,
    n_experts: int,
    rank: int,
    device: torch.device,
    seed: int = 0,
    router_std: float = 0.1,
) -> Group:
    """Case 2 at one expert count; baseline ``lora`` (rank ``E*r``). The LoRA baseline holds
    the concatenated experts with ``B / E``, so with ``router_std=0`` (uniform routing) all
    three implementations compute the same delta."""
    g = new_generator(seed, device)
    x = randn((tokens, d), g, grad=True)
    w = randn((d, n_experts), g, std=router_std, grad=True)
    a = randn((n_experts, d, rank), g, std=0.02, grad=True)
    b = randn((n_experts, rank, d), g, std=0.02, grad=True)
    a_cat = a.detach().permute(1, 0, 2).reshape(d, n_experts * rank).clone().requires_grad_()
    b_cat = (b.detach().reshape(n_experts * rank, d) / n_experts).requires_grad_()
    g_out = randn((tokens, d), g)
    routed = {"x": x, "router": w, "lora_A": a, "lora_B": b}

    def probs() -> Tensor:
        return router_probs(router_logits(x, w))

    impls = {
        "lora": Impl(
            lambda: (x @ a_cat) @ b_cat * MOLORA_SCALE,
            grads_of({"x": x, "lora_A": a_cat, "lora_B": b_cat}, g_out),
            [a_cat, b_cat],
        ),
        "loop": Impl(lambda: _loop_molora(x, probs(), a, b), grads_of(routed, g_out), [w, a, b]),
        "fused": Impl(
            lambda: fused_routed_molora(x, w, a, b, MOLORA_SCALE)[0],
            grads_of(routed, g_out),
            [w, a, b],
        ),
    }
    same: Pairs = [("fused", "loop", ("out", "x", "router", "lora_A", "lora_B"))]
    if router_std == 0:
        same.append(("fused", "lora", ("out", "x")))
    return Group(f"E={n_experts}", "lora", impls, same)
