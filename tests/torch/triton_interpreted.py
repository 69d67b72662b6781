"""The Triton MoV kernel, run on CPU by Triton's interpreter, against the torch fused op.

Run by ``test_triton.py`` in a subprocess with ``TRITON_INTERPRET=1`` (the interpreter must be
chosen before the kernels are defined). For each case, prints one JSON line with the largest
relative differences of the outputs and of every gradient. Not collected by pytest.
"""

import json

import torch

from mixlight_torch.ops import fused_mov
from mixlight_torch.ops.triton_mov import triton_mov

# (lead shape, heads, d_head, experts, dtype, which outputs carry gradient)
CASES = [
    ((37,), None, 24, 10, torch.float32, "out"),  # rows and width not multiples of the blocks
    ((2, 19), 4, 16, 3, torch.float32, "all"),  # per head; gradients through probs and logits
    ((5, 7), 1, 70, 1, torch.float32, "out"),  # one expert; k over one block
    ((33,), 2, 8, 17, torch.float32, "all"),  # d_head below 16, E above 16
    ((2, 16), 2, 32, 6, torch.bfloat16, "out"),
]


def _max_rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach(), want.detach()
    scale = want.abs().max().clamp_min(1e-6)
    return float((got.float() - want.float()).abs().max() / scale)


def run(lead, heads, d_head, n_experts, dtype, grads) -> dict[str, float]:
    gen = torch.Generator().manual_seed(sum(lead) + d_head + n_experts)
    d = (heads or 1) * d_head
    h = torch.randn(*lead, d, generator=gen).to(dtype)
    w = torch.randn(d_head if heads else d, n_experts, generator=gen) * 0.5
    v = 1.0 + 0.3 * torch.randn(n_experts, d, generator=gen)
    up = [torch.randn(*lead, d, generator=gen)]
    routed = (*lead, heads, n_experts) if heads else (*lead, n_experts)
    up += [torch.randn(routed, generator=gen), torch.randn(routed, generator=gen)]
    results = []
    for op in (triton_mov, fused_mov):
        inputs = [t.detach().clone().requires_grad_() for t in (h, w, v)]
        outs = op(*inputs, heads)
        used = outs if grads == "all" else outs[:1]
        loss = sum((o.float() * u).sum() for o, u in zip(used, up, strict=False))
        results.append([*outs, *torch.autograd.grad(loss, inputs)])
    names = ["out", "probs", "logits", "g_h", "g_router", "g_vectors"]
    return {n: _max_rel(a, b) for n, a, b in zip(names, *results, strict=True)}


if __name__ == "__main__":
    for case in CASES:
        print(json.dumps({"case": repr(case), "max_rel_diff": run(*case)}), flush=True)
