"""The Triton MoV kernel (:mod:`mixlight_torch.ops.triton_mov`): on CPU through Triton's
interpreter (in a subprocess, which must set ``TRITON_INTERPRET=1`` before the kernels are
defined), and on CUDA against the CPU torch op when a device is present."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

HERE = Path(__file__).parent
TOLERANCE = {"torch.float32": 1e-5, "torch.bfloat16": 2e-2}


def test_interpreted_kernel_matches_the_torch_op() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "triton_interpreted.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 5
    for line in lines:
        tol = TOLERANCE["torch.bfloat16" if "bfloat16" in line["case"] else "torch.float32"]
        worst = {k: v for k, v in line["max_rel_diff"].items() if not v <= tol}
        assert not worst, f"{line['case']}: {worst}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("heads", [None, 4])
def test_cuda_soft_mov_runs_the_kernel_and_matches_cpu(heads: int | None) -> None:
    from mixlight_torch import ops as fused
    from mixlight_torch.ops import mov as _fused_mov

    gen = torch.Generator().manual_seed(0)
    h = torch.randn(3, 50, 256, generator=gen)
    w = torch.randn(64 if heads else 256, 10, generator=gen) * 0.1
    v = 1.0 + 0.1 * torch.randn(10, 256, generator=gen)
    assert _fused_mov._triton_applies(h.cuda())
    results = []
    for device in ("cpu", "cuda"):
        inputs = [t.to(device).requires_grad_() for t in (h, w, v)]
        out, probs, logits = fused.fused_mov(*inputs, heads)
        (out.sum() + (probs * logits).sum()).backward()
        results.append([t.detach().cpu() for t in (out, probs, *(i.grad for i in inputs))])
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
