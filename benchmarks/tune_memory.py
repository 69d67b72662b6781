"""The ``mixlight tune --dry-run`` memory estimate against what a run takes, at two model
sizes you can run on a CPU: ``python -m benchmarks.tune_memory``.

Two random T5 v1.1 models over the shipped 1,024-piece tokenizer (``small``: d_model 256,
4+4 layers; ``medium``: d_model 512, 8+8 layers), MoV-10, AdamW, float32, batch 16 of the
built-in mixture, dropout 0.1, and for each:

- **torch (CPU)**: the growth of the process's peak resident memory (``ru_maxrss``) over
  three optimiser steps, from the resident size just before the first (the base, the
  adapters and the data already loaded). torch keeps no allocator statistics on the CPU, so
  this counts what the OS gave the process: allocator caching and freed-but-kept pages
  included. Set against the estimate's activations + gradients + optimiser state.
- **JAX (CPU)**: XLA's own accounting of the compiled step
  (``compiled.memory_analysis()``): ``temp_size_in_bytes``, the buffers the step allocates
  besides its arguments and outputs (activations, gradients, the update's temporaries). Set
  against the estimate's activations + gradients.

Each measurement runs in a fresh subprocess. Prints a markdown table.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES = {
    "small": {"d_model": 256, "d_kv": 64, "num_heads": 4, "d_ff": 512, "num_layers": 4},
    "medium": {"d_model": 512, "d_kv": 64, "num_heads": 8, "d_ff": 1024, "num_layers": 8},
}
BATCH = 16


def checkpoint(size: str, folder: Path) -> Path:
    import shutil

    import torch
    import transformers

    from mixlight_tune.experiment import SHIPPED_BASE

    config = transformers.T5Config.from_pretrained(str(SHIPPED_BASE))
    config.update(SIZES[size] | {"num_decoder_layers": SIZES[size]["num_layers"]})
    torch.manual_seed(0)
    transformers.T5ForConditionalGeneration(config).save_pretrained(folder)
    shutil.copy(SHIPPED_BASE / "spiece.model", folder / "spiece.model")
    return folder


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(backend: str, size: str) -> dict:
    """One run in this process: the estimate's parts and the measured bytes."""
    from mixlight_tune.memory import Layout, estimate
    from mixlight_tune.sampling import batches
    from mixlight_tune.steps import load_steps
    from mixlight_tune.tune_cli import demo_config, load_data, runtime, settings, tokenised
    from mixlight_tune.tune_config import parse

    folder = checkpoint(size, Path(tempfile.mkdtemp(prefix="mixlight-mem-")))
    cfg = parse(
        {
            "backend": backend,
            "model": str(folder),
            "optimizer": "adamw",
            "lr": 1e-3,
            "batch_size": BATCH,
            "dropout": 0.1,
            "progress": False,
            "device": "cpu",
            "threads": 2,
            "checkpoint_every": 0,
            "output_dir": tempfile.mkdtemp(prefix="mixlight-mem-out-"),
        }
    )
    import mixlight as ml

    steps = load_steps(backend)
    base = steps.prepare(demo_config(cfg), runtime(cfg))
    train, _ = load_data(cfg)
    pairs = tokenised(cfg, base, train, True)
    tune_settings = settings(cfg)
    import dataclasses

    tune_settings = dataclasses.replace(tune_settings, pairs=pairs)
    model, trainer = steps.make_trainer(base, ml.MoV(10), train, tune_settings)
    order = list(batches(len(pairs), BATCH, 3, cfg.seed))
    # the longest batch of the three, padded as the backend pads it
    source = max(max(len(pairs[i][0]) for i in b) for b in order)
    target = max(max(len(pairs[i][1]) for i in b) for b in order)
    if backend == "jax":
        source, target = (min(-(-n // 16) * 16, cap) for n, cap in ((source, 256), (target, 64)))
    est = estimate(
        steps.memory_inputs(model),
        optimizer="adamw",
        precision="fp32",
        micro_batch=BATCH,
        source=source,
        target=target,
        checkpointing=False,
        layout=Layout(),
    )
    out = {"backend": backend, "size": size, "estimate": est, "lengths": [source, target]}
    if backend == "torch":
        from benchmarks.measure import saved_bytes

        longest = max(order, key=lambda b: max(len(pairs[i][0]) for i in b))
        tokens = sum(len(pairs[i][1]) for i in longest)
        frozen = list(model.parameters())
        model.train()
        out["saved"] = saved_bytes(
            lambda: trainer._loss(trainer._batch(longest), tokens, 1), frozen
        )
        before = _rss()
        for k, indices in enumerate(order):
            trainer.step(k, [indices], 1e-3, sum(len(pairs[i][1]) for i in indices))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out["measured"] = peak - before
        out["compared"] = est["activations"] + est["gradients"] + est["optimizer_state"]
    else:
        longest = max(order, key=lambda b: max(len(pairs[i][0]) for i in b))
        batch = trainer._batch(longest)
        lowered = trainer._step.lower(trainer.model, trainer.optimizer, batch, trainer._key(0))
        stats = lowered.compile().memory_analysis()
        out["measured"] = int(stats.temp_size_in_bytes)
        out["compared"] = est["activations"] + est["gradients"]
    return out


def main() -> None:
    if len(sys.argv) == 3:  # one measurement (the subprocess)
        print(json.dumps(measure(sys.argv[1], sys.argv[2])))
        return
    rows = []
    for backend in ("torch", "jax"):
        for size in SIZES:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.tune_memory", backend, size],
                capture_output=True,
                text=True,
                env=dict(os.environ, JAX_PLATFORMS="cpu"),
            )
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    mib = 2**20
    print(
        "| backend | size | lengths | estimated total MiB | estimated activations MiB "
        "| saved for backward MiB | estimate compared MiB | measured MiB | measured / estimate |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        est = r["estimate"]
        saved = "-" if "saved" not in r else f"{r['saved'] / mib:,.1f}"
        print(
            f"| {r['backend']} | {r['size']} | {r['lengths'][0]}+{r['lengths'][1]} "
            f"| {est['total'] / mib:,.1f} | {est['activations'] / mib:,.1f} | {saved} "
            f"| {r['compared'] / mib:,.1f} | {r['measured'] / mib:,.1f} "
            f"| {r['measured'] / r['compared']:.2f} |"
        )
        print(json.dumps(r), file=sys.stderr)


if __name__ == "__main__":
    main()
