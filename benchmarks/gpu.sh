#!/usr/bin/env bash
# CUDA checks in one short run (under 10 minutes): the CUDA tests (the Triton MoV kernel among
# them), `mixlight check` (every CUDA path -- eager, compiled, the Triton kernel; JAX on the
# GPU when installed -- against the loop reference in float32, bf16 and fp16; its table is
# appended to benchmarks/RESULTS.md), the kernel's achieved bandwidth
# (benchmarks/bandwidth-gpu.{txt,json}), then `mixlight bench` on the GPU (cases 1-4, 7),
# written to benchmarks/RESULTS-gpu.md and benchmarks/results-gpu.json.
# Exits 0 with a message when no CUDA device is present.
#   usage: bash benchmarks/gpu.sh [extra `mixlight bench` arguments, e.g. --repeats 5]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=python3

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
then
    echo "benchmarks/gpu.sh: no CUDA device (or no CUDA torch) here; nothing to do."
    exit 0
fi
"$PY" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'

echo "== CUDA tests"
timeout 180 "$PY" -m pytest tests/torch -k cuda -q -rs

echo "== mixlight check: every CUDA path against the loop reference (table -> RESULTS.md)"
# A failing check is reported (exit 1: a path differs, 2: an error) without stopping the run.
timeout 240 "$PY" -m mixlight.cli check --framework all --examples 5 \
    --dtypes float32,bfloat16,float16 --append benchmarks/RESULTS.md \
    || echo "mixlight check: exit $? (see above and benchmarks/RESULTS.md)"

echo "== Triton MoV kernel: achieved bandwidth"
timeout 120 "$PY" -m benchmarks.bandwidth --out benchmarks/bandwidth-gpu.json \
    | tee benchmarks/bandwidth-gpu.txt

echo "== mixlight bench on CUDA"
out=$(mktemp -d)
timeout 300 "$PY" -m mixlight.cli bench --device cuda --cases 1,2,3,4,7 --out "$out" "$@"
cp "$out/RESULTS.md" benchmarks/RESULTS-gpu.md
cp "$out/results.json" benchmarks/results-gpu.json
rm -rf "$out"
echo "wrote benchmarks/RESULTS-gpu.md and benchmarks/results-gpu.json"
