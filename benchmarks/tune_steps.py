"""Case 9: ``mixlight tune`` optimiser steps per second, MoV-10 vs (IA)³ vs LoRA r=4, torch
and JAX, on one config. ``mov-1`` (one expert: a softmax over one logit is 1, so the math is
(IA)³'s) must give (IA)³'s losses step after step: the check that the rows run one pipeline.

Each implementation is the tune pipeline's own trainer (``make_trainer`` of
:mod:`mixlight_tune.frameworks.torch_steps` / ``jax_steps``): the config's base loaded by the
backend's ``prepare``, the adapter injected, the same built-in training mixture tokenised
once, and one timed call is one whole optimiser step (AdamW, dropout 0, one micro-batch) on
the next of the first 8 batches of the shared data order (each run once untimed first, so
JAX has compiled every padded shape): padding, host-to-device copies, forward, backward,
update and (JAX) dispatch included. Ratios are against (IA)³ in the same process; the
absolute steps per second are the baseline's ``1 / median``.

``--quick``: the shipped tiny T5 (0.33M parameters), batch 4. Full: a random-weight T5 of
t5-v1_1-small's block shapes (d_model 512, 8+8 layers, 6 heads, d_ff 1024) over the shipped
1,024-piece tokenizer (so its embeddings are small), batch 8.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import mixlight as ml
from benchmarks.impl import Group
from mixlight_tune.experiment import SHIPPED_BASE
from mixlight_tune.sampling import batches
from mixlight_tune.steps import load_steps
from mixlight_tune.tune_cli import demo_config, load_data, runtime, settings
from mixlight_tune.tune_config import parse

CYCLE = 8  # the timed steps go round the first CYCLE batches of the data order
METHODS = {
    "ia3": ml.IA3,
    "mov-10": lambda: ml.MoV(10),
    "lora-r4": lambda: ml.LoRA(rank=4),
    "mov-1": lambda: ml.MoV(1),  # one expert: its router's softmax is 1, so it is (IA)³
}


def small_checkpoint() -> Path:
    """A random t5-v1_1-small-shaped checkpoint with the shipped tokenizer (written once
    per process into a temporary folder)."""
    import shutil

    import transformers

    folder = Path(tempfile.mkdtemp(prefix="mixlight-bench-t5-"))
    config = transformers.T5Config.from_pretrained(str(SHIPPED_BASE))
    config.update({"d_model": 512, "d_kv": 64, "num_heads": 6, "d_ff": 1024})
    config.update({"num_layers": 8, "num_decoder_layers": 8, "dropout_rate": 0.0})
    torch.manual_seed(0)
    transformers.T5ForConditionalGeneration(config).save_pretrained(folder)
    shutil.copy(SHIPPED_BASE / "spiece.model", folder / "spiece.model")
    return folder


class TuneStep:
    """One method's trainer; ``step()`` runs the next optimiser step."""

    def __init__(self, backend: str, model: Path, method: str, batch: int, device: str):
        cfg = parse(
            {
                "backend": backend,
                "model": str(model),
                "optimizer": "adamw",
                "lr": 1e-3,
                "steps": 1_000_000,
                "batch_size": batch,
                "dropout": 0.0,
                "progress": False,
                "checkpoint_every": 0,
                "device": device,
                "threads": torch.get_num_threads(),
                "output_dir": tempfile.mkdtemp(prefix="mixlight-bench-tune-"),
            }
        )
        steps = load_steps(backend)
        base = steps.prepare(demo_config(cfg), runtime(cfg))
        train, _ = load_data(cfg)
        self.model, self.trainer = steps.make_trainer(  # type: ignore[attr-defined]
            base, METHODS[method](), train, settings(cfg)
        )
        order = batches(len(train), batch, cfg.steps, cfg.seed)
        self.cycle = [next(order) for _ in range(CYCLE)]
        self.pairs = self.trainer.pairs
        self.k = 0
        for _ in range(CYCLE):  # every batch shape compiled (JAX) before anything is timed
            self.step()

    def step(self) -> Mapping[str, Any]:
        indices = self.cycle[self.k % CYCLE]
        tokens = sum(len(self.pairs[i][1]) for i in indices)
        loss = self.trainer.step(self.k, [indices], 1e-3, tokens)
        self.k += 1
        return {"out": torch.tensor(loss)}

    def saved_bytes(self) -> int | None:
        return None


def tune_groups(quick: bool, device: torch.device) -> tuple[list[Group], str]:
    """One group per installed backend: (IA)³ the baseline, MoV-10 and LoRA r=4."""
    model = SHIPPED_BASE if quick else small_checkpoint()
    batch = 4 if quick else 8
    groups = []
    for backend in ("torch", "jax"):
        try:
            load_steps(backend)
        except ValueError:  # not installed (DemoError)
            continue
        where = device.type if backend == "torch" else "auto"
        impls = {m: TuneStep(backend, model, m, batch, where) for m in METHODS}
        same = [("mov-1", "ia3", ("out",))]  # the same losses, step after step
        groups.append(Group(f"{backend} tune step", "ia3", impls, same))
    what = "shipped tiny T5 (0.33M)" if quick else "random T5, t5-v1_1-small blocks, 1,024 vocab"
    return groups, (
        f"{what}; built-in mixture, batch {batch}, AdamW, dropout 0, one micro-batch; one call "
        "= one optimiser step of the tune pipeline's trainer"
    )
