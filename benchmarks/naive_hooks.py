"""The anchor a user would write instead of mixlight: forward hooks with an einsum.

MoV and MoLoRA on the same T5 sites as mixlight's presets, in ~30 lines of plain autograd
(per-head routers on attention k/v, batched einsums over all experts), so case 3 compares
whole training steps against the simplest thing that works.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

MOV_SITES = r"(SelfAttention|EncDecAttention)\.(k|v)$|DenseReluDense\.act$"
MOLORA_SITES = r"(SelfAttention|EncDecAttention)\.(q|k|v|o)$|DenseReluDense\.(wi_0|wi|wo)$"
_GEN = torch.Generator().manual_seed(0)


def _normal(*shape: int, std: float = 0.02) -> nn.Parameter:
    return nn.Parameter(torch.randn(shape, generator=_GEN) * std)


def naive_mov(model: nn.Module, experts: int = 10) -> nn.Module:
    """MoV by forward hooks: ``h * (softmax(h_head @ W) @ V)`` per head on attention k/v,
    per token on the FFN activation. Adds ``model.naive`` (the trainable parameters)."""
    model.requires_grad_(False)
    store = nn.ModuleDict()
    for path, module in list(model.named_modules()):
        if not re.search(MOV_SITES, path):
            continue
        parent = model.get_submodule(path.rpartition(".")[0])
        heads = getattr(parent, "n_heads", None) or 1
        d = module.out_features if isinstance(module, nn.Linear) else parent.wo.in_features
        vectors = nn.Parameter(torch.ones(experts, heads, d // heads))
        p = nn.ParameterDict({"router": _normal(d // heads, experts), "vectors": vectors})
        store[path.replace(".", "_")] = p
        module.register_forward_hook(_mov_hook(p, heads))
    model.naive = store
    return model


def _mov_hook(p: nn.ParameterDict, heads: int):
    def hook(module: nn.Module, args: tuple, h: Tensor) -> Tensor:
        hh = h.unflatten(-1, (heads, -1))  # [b, s, H, k]
        probs = torch.softmax(torch.einsum("bshk,ke->bshe", hh, p["router"]), -1)
        return (hh * torch.einsum("bshe,ehk->bshk", probs, p["vectors"])).flatten(-2)

    return hook


def naive_molora(model: nn.Module, experts: int = 10, rank: int = 4) -> nn.Module:
    """MoLoRA by forward hooks: ``y + 16/r * sum_e p_e (x A_e) B_e``, ``p = softmax(x W)``,
    all experts in two batched einsums."""
    model.requires_grad_(False)
    store = nn.ModuleDict()
    for path, module in list(model.named_modules()):
        if not (re.search(MOLORA_SITES, path) and isinstance(module, nn.Linear)):
            continue
        d_in, d_out = module.in_features, module.out_features
        p = nn.ParameterDict(
            {
                "router": _normal(d_in, experts),
                "A": _normal(experts, d_in, rank),
                "B": nn.Parameter(torch.zeros(experts, rank, d_out)),
            }
        )
        store[path.replace(".", "_")] = p
        module.register_forward_hook(_molora_hook(p, 16.0 / rank))
    model.naive = store
    return model


def _molora_hook(p: nn.ParameterDict, scale: float):
    def hook(module: nn.Module, args: tuple, y: Tensor) -> Tensor:
        x = args[0]
        probs = torch.softmax(x @ p["router"], -1)  # [b, s, E]
        u = torch.einsum("bsi,eir->bser", x, p["A"]) * probs.unsqueeze(-1)
        return y + scale * torch.einsum("bser,ero->bso", u, p["B"])

    return hook
