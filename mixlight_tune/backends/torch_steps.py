"""The torch train and score steps (:class:`mixlight_tune.steps.BackendSteps`).

The built-in base is a tiny T5 v1.1 (gated-gelu, untied head) built from ``T5Config`` with a
SentencePiece vocabulary, pre-trained on the miniature world's corpus (span corruption mixed
with prefix LM) and written as ``save_pretrained`` + ``spiece.model`` (+ ``pretraining.json``),
which ``--model`` also accepts. Tuning pads each batch to its longest row; labels use -100
for padding.

``mixlight tune`` runs through :func:`prepare` with a :class:`~mixlight_tune.steps.Runtime`:
the device (``auto``: CUDA when present), the CPU threads, bfloat16 base weights, activation
checkpointing and, under ``torchrun``, the process group (NCCL on CUDA, gloo on the CPU) with
the model wrapped in DDP or sharded with FSDP2 (:mod:`mixlight_torch.distributed`). The loop
itself is :mod:`mixlight_tune.loop`; :class:`TorchTrainer` is its step.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from torch import nn
from tqdm.auto import tqdm

import mixlight as ml
from mixlight_tune.backends import torch_resume
from mixlight_tune.backends.torch_scoring import as_encode, pad, rank_classification, truncate
from mixlight_tune.checkpoint import resume_point
from mixlight_tune.corruption import span_corruption
from mixlight_tune.experiment import (
    BUILT_BASE,
    BaseSpec,
    DemoConfig,
    base_checkpoint,
    base_key,
    pretraining_data,
)
from mixlight_tune.sampling import batches
from mixlight_tune.schema import Example
from mixlight_tune import loop
from mixlight_tune.checkpoint import Checkpoint
from mixlight_tune.steps import (
    DemoError,
    Pair,
    Parallel,
    Runtime,
    TuneSettings,
    adapter_fits,
    check_finite_loss,
)
from mixlight_tune.tokenizer import EOS_ID, PAD_ID, Tokenizer, train_tokenizer

BASE_SETTING = "base folder"  # how errors name build_base's directory


@dataclass
class Base:
    """The frozen starting point every method copies, and its tokenizer; where it runs."""

    model: transformers.T5ForConditionalGeneration
    encode: Callable[[str], list[int]]
    path: Path
    description: str
    parallel: Parallel = dataclasses.field(default_factory=Parallel)
    runtime: Runtime | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))


def t5_config(spec: BaseSpec, vocab_size: int) -> transformers.T5Config:
    """A T5 v1.1 config (gated-gelu, untied embeddings, no dropout) of ``spec``'s size."""
    return transformers.T5Config(
        vocab_size=vocab_size,
        d_model=spec.d_model,
        d_kv=spec.d_kv,
        num_heads=spec.num_heads,
        d_ff=spec.d_ff,
        num_layers=spec.num_layers,
        num_decoder_layers=spec.num_layers,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
    )


def make_optimizer(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """HF Adafactor as in the paper (parameter-scaled, constant lr, no momentum), AdamW or
    plain SGD."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return transformers.optimization.Adafactor(
        params, lr=lr, scale_parameter=True, relative_step=False, warmup_init=False
    )


def collate(pairs: Sequence[Pair]) -> dict[str, torch.Tensor]:
    """Model inputs for ``(input ids, target ids)`` pairs; padded labels are -100."""
    input_ids, attention_mask = pad([p[0] for p in pairs], PAD_ID)
    labels, _ = pad([p[1] for p in pairs], -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def train_loop(
    model: nn.Module,
    make_batch: Callable[[list[int]], dict[str, torch.Tensor]],
    n: int,
    settings: TuneSettings,
) -> list[float]:
    """Train ``model`` in place; return the loss of every step (none when nothing trains).
    An injected model's loss already holds its weighted router losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or settings.steps == 0:
        return []
    optimizer = make_optimizer(settings.optimizer, params, settings.lr)
    model.train()
    resume = settings.resume
    done, losses = resume_point(resume, lambda c: torch_resume.restore(model, optimizer, c))
    steps = itertools.islice(
        batches(n, settings.batch_size, settings.steps, settings.seed), done, None
    )
    bar = tqdm(
        steps,
        total=settings.steps,
        initial=done,
        desc=settings.label,
        disable=not settings.progress,
    )
    for indices in bar:
        loss = model(**make_batch(indices)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        check_finite_loss(losses[-1], len(losses) - 1, settings)
        if len(losses) % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
        if resume is not None and resume.due(len(losses), settings.steps):
            resume.save(len(losses), losses, *torch_resume.train_state(model, optimizer))
    model.eval()
    return losses


def pretraining_pair(
    chunk: list[int], rng: random.Random, tok: Tokenizer, prefix_lm: float
) -> Pair:
    """One pre-training example from ``chunk``: span corruption, or with probability
    ``prefix_lm`` a prefix-LM split (T5's "LM adaptation": continue the text), EOS appended."""
    if rng.random() < prefix_lm:
        cut = rng.randint(1, len(chunk) - 1)
        inputs, targets = chunk[:cut], chunk[cut:]
    else:
        inputs, targets = span_corruption(chunk, rng, tok.sentinel_ids)
    return [*inputs, EOS_ID], [*targets, EOS_ID]


def _pretrain(model: nn.Module, tok: Tokenizer, corpus: list[str], spec: BaseSpec, progress: bool):
    """Pre-train on ``chunk_tokens``-long pieces of the concatenated corpus, each drawn
    example corrupted (or split) afresh; return the mean loss of the last 100 steps."""
    stream = [i for sentence in corpus for i in tok.encode(sentence)[:-1]]
    size = spec.chunk_tokens
    chunks = [stream[i : i + size] for i in range(0, len(stream) - size + 1, size)]
    rng = random.Random(f"mixlight-demo-pretrain:{spec.seed}")

    def make_batch(indices: list[int]) -> dict[str, torch.Tensor]:
        return collate([pretraining_pair(chunks[i], rng, tok, spec.prefix_lm) for i in indices])

    settings = TuneSettings(
        steps=spec.pretrain_steps,
        batch_size=spec.pretrain_batch_size,
        lr=spec.pretrain_lr,
        optimizer="adafactor",
        seed=spec.seed,
        dropout=0.0,
        max_input_tokens=size,
        max_target_tokens=size,
        progress=progress,
        label="pre-train base",
    )
    return float(np.mean(train_loop(model, make_batch, len(chunks), settings)[-100:]))


def build_base(cfg: DemoConfig, directory: Path, *, keep_existing: bool = False) -> Path:
    """Train the tokenizer, pre-train the tiny T5 of ``cfg.base`` and put both in ``directory``.

    ``directory`` may be missing, empty or a base built before (replaced; kept instead with
    ``keep_existing``, when another run built it meanwhile); a folder holding anything else is
    refused before any work. The base is written whole into a fresh sibling staging folder and
    renamed into place (:class:`~mixlight_tune.output_dirs.OutputKind`), so ``directory`` is
    never half written and nothing the user put there is deleted."""
    BUILT_BASE.check(directory, BASE_SETTING)
    staging = BUILT_BASE.staging(directory, BASE_SETTING)
    try:
        _write_base(cfg, staging)
        if not (keep_existing and BUILT_BASE.owns(directory)):
            BUILT_BASE.move_into_place(staging, directory, BASE_SETTING)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # ours; already moved unless it failed
    return directory


def _write_base(cfg: DemoConfig, folder: Path) -> None:
    """Pre-train the base and save it, its tokenizer, ``pretraining.json`` and the marker."""
    corpus, tokenizer_texts = pretraining_data(cfg)
    tok = train_tokenizer(tokenizer_texts, vocab_size=cfg.base.vocab_size)
    torch.manual_seed(cfg.base.seed)
    model = transformers.T5ForConditionalGeneration(t5_config(cfg.base, tok.vocab_size))
    start = time.perf_counter()
    loss = _pretrain(model, tok, corpus, cfg.base, cfg.progress)
    model.save_pretrained(folder)
    tok.save(folder / "spiece.model")
    info = {
        "key": base_key(cfg),
        "spec": dataclasses.asdict(cfg.base),
        "final_loss": round(loss, 4),
        "seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
    }
    (folder / "pretraining.json").write_text(json.dumps(info, indent=2) + "\n")
    BUILT_BASE.mark(folder)


def _load_tokenizer(path: Path) -> Callable[[str], list[int]]:
    """The checkpoint's own tokenizer: HF files when present, else ``spiece.model``."""
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        return as_encode(transformers.AutoTokenizer.from_pretrained(str(path)))
    return as_encode(Tokenizer.load(path / "spiece.model"))


def prepare(cfg: DemoConfig) -> Base:
    """The base model: ``--model``, the shipped tiny T5, or one built and cached here."""
    torch.set_num_threads(cfg.threads)
    path = base_checkpoint(cfg)
    if cfg.model_path is None and not (path / "config.json").is_file():
        build_base(cfg, path, keep_existing=True)
    origin = str(path)
    if (path / "pretraining.json").is_file():
        loss = json.loads((path / "pretraining.json").read_text())["final_loss"]
        origin = f"tiny T5 v1.1 pre-trained on the miniature world (final loss {loss:.2f}), {path}"
    model = transformers.T5ForConditionalGeneration.from_pretrained(str(path)).eval()
    model.requires_grad_(False)
    encode = lru_cache(maxsize=None)(_load_tokenizer(path))
    n = sum(p.numel() for p in model.parameters())
    return Base(model, encode, path, f"{origin} ({n / 1e6:.2f}M parameters)")


def _set_dropout(model: nn.Module, rate: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = rate


def tune(
    base: Base,
    adapter: ml.AdapterConfig | None,
    examples: Sequence[Example],
    settings: TuneSettings,
) -> tuple[nn.Module, list[float]]:
    """A trained copy of the base (``adapter`` injected; ``None``: all weights train) and its
    loss at every step. Routers' auxiliary losses count when the config weights them."""
    torch.manual_seed(settings.seed)
    model = copy.deepcopy(base.model)
    if adapter is None:
        model.requires_grad_(settings.steps > 0)
    else:
        with adapter_fits(adapter):
            ml.inject(model, adapter, seed=settings.seed)
    _set_dropout(model, settings.dropout)
    pairs = [
        (
            truncate(base.encode(e.inputs), settings.max_input_tokens),
            truncate(base.encode(e.targets), settings.max_target_tokens),
        )
        for e in examples
    ]

    def make_batch(indices: list[int]) -> dict[str, torch.Tensor]:
        return collate([pairs[i] for i in indices])

    losses = train_loop(model, make_batch, len(pairs), settings)
    return model, losses


def evaluate(
    model: nn.Module, base: Base, examples: Sequence[Example], cfg: DemoConfig
) -> tuple[list[bool], dict[str, dict[str, list[float]]]]:
    """Rank-classification correctness and per-task mean routing probabilities."""
    result = rank_classification(
        model,
        base.encode,
        examples,
        cfg.eval_batch_size,
        max_input_tokens=cfg.max_input_tokens,
        progress=cfg.progress,
    )
    routing = {
        site: {task: np.asarray(p).round(5).tolist() for task, p in by_task.items()}
        for site, by_task in result.routing.items()
    }
    return result.correct, routing


def trainable_percent(model: nn.Module) -> float:
    """% of the model's parameters that train (``ml.trainable_parameters`` when injected)."""
    if "mixlight_state" in model.__dict__:
        return float(ml.trainable_parameters(model).percent)
    total = sum(p.numel() for p in model.parameters())
    return 100.0 * sum(p.numel() for p in model.parameters() if p.requires_grad) / total


def save(model: nn.Module, directory: Path) -> Path | None:
    """``ml.save_adapter`` for adapter methods; full fine-tuning saves nothing (a full copy
    of the base per run is not worth the disk)."""
    if "mixlight_state" not in model.__dict__:
        return None
    return ml.save_adapter(model, directory)
