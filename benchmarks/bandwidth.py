"""Achieved memory bandwidth of the MoV hot path on CUDA (``python -m benchmarks.bandwidth``).

Times forward + backward of one MoV site (case 1's shapes, E=10) for the Triton kernel and
the torch fused op, and a device-to-device copy of ``h`` as the practical peak. *Effective
GB/s* counts the bytes an ideal single-pass implementation must move (forward: read ``h``,
write ``out``; backward: read ``h`` and ``g_out``, write ``g_h``: five ``[n, d]`` tensors),
divided by the measured time; the copy moves two. Written as JSON and printed as a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from mixlight_torch.ops import FusedMoV
from mixlight_torch.ops.triton_mov import triton_mov


def _median_ms(step, repeats: int = 20) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(tokens: int = 8192, d: int = 1024, n_experts: int = 10, heads: int | None = None):
    gen = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(tokens, d, device="cuda", generator=gen, requires_grad=True)
    w = torch.randn(d // (heads or 1), n_experts, device="cuda", generator=gen) * 0.1
    v = 1.0 + 0.1 * torch.randn(n_experts, d, device="cuda", generator=gen)
    w.requires_grad_(), v.requires_grad_()
    g_out = torch.randn_like(h)

    def step(op):
        return lambda: torch.autograd.grad(op(h, w, v, heads)[0], (h, w, v), g_out)

    moved = 5 * h.numel() * h.element_size()
    rows = {
        "copy": (_median_ms(lambda: h.detach().clone()), 2 * h.numel() * h.element_size()),
        "triton": (_median_ms(step(triton_mov)), moved),
        "torch-fused": (
            _median_ms(step(lambda *a: FusedMoV.apply(*a, None, True))),
            moved,
        ),
    }
    return {
        "device": torch.cuda.get_device_name(0),
        "shape": {"tokens": tokens, "d": d, "experts": n_experts, "heads": heads},
        "rows": {k: {"ms": ms, "GB/s": nbytes / ms / 1e6} for k, (ms, nbytes) in rows.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.bandwidth: no CUDA device", file=sys.stderr)
        return 1
    results = [measure(), measure(heads=16)]
    args.out.write_text(json.dumps(results, indent=2))
    for r in results:
        copy_gbs = r["rows"]["copy"]["GB/s"]
        print(f"{r['device']} {r['shape']}")
        for name, row in r["rows"].items():
            share = row["GB/s"] / copy_gbs
            print(f"  {name:12s} {row['ms']:8.3f} ms  {row['GB/s']:8.1f} GB/s  {share:5.2f}x copy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
