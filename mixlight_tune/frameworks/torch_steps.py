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

import collections
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
from mixlight_tune import loop
from mixlight_tune.checkpoint import Checkpoint, resume_point
from mixlight_tune.corruption import span_corruption
from mixlight_tune.experiment import (
    BUILT_BASE,
    BaseSpec,
    DemoConfig,
    base_checkpoint,
    base_key,
    pretraining_data,
)
from mixlight_tune.frameworks import torch_resume
from mixlight_tune.frameworks import torch_sharded_load as sharded_load
from mixlight_tune.frameworks.torch_rows import collate, pack, summed_token_loss, token_logits
from mixlight_tune.frameworks.torch_scoring import rank_classification
from mixlight_tune.sampling import batches
from mixlight_tune.schema import Example
from mixlight_tune.steps import (
    DemoError,
    Pair,
    Parallel,
    Routing,
    Runtime,
    TuneSettings,
    adapter_fits,
    check_finite_loss,
)
from mixlight_tune.text_codec import TextCodec, codec_for
from mixlight_tune.tokenizer import EOS_ID, PAD_ID, Tokenizer, train_tokenizer

BASE_SETTING = "base folder"  # how errors name build_base's directory


@dataclass
class Base:
    """The frozen starting point every method copies (a T5 or a causal LM), its texts'
    tokenisation; where it runs."""

    model: transformers.PreTrainedModel
    codec: TextCodec
    path: Path
    description: str
    parallel: Parallel = dataclasses.field(default_factory=Parallel)
    runtime: Runtime | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    sharded_load: bool = False  # FSDP2: rank 0 holds the weights, the others the meta device

    @property
    def causal(self) -> bool:
        return self.codec.causal

    @property
    def pad_id(self) -> int:
        return int(getattr(self.model.config, "pad_token_id", None) or 0)


def t5_config(spec: BaseSpec, vocab_size: int) -> transformers.T5Config:
    """A T5 v1.1 config (gated-gelu, untied embeddings, no dropout) of ``spec``'s size."""
    # PreTrainedConfig settings T5Config does not declare: its dataclass signature lists only
    # the declared fields, though the config accepts further keywords
    settings: dict[str, Any] = {"tie_word_embeddings": False, "decoder_start_token_id": PAD_ID}
    return transformers.T5Config(
        vocab_size=vocab_size,
        d_model=spec.d_model,
        d_kv=spec.d_kv,
        num_heads=spec.num_heads,
        d_ff=spec.d_ff,
        num_layers=spec.num_layers,
        num_decoder_layers=spec.num_layers,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        **settings,
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


def train_loop(
    model: nn.Module,
    make_batch: Callable[[list[int]], dict[str, torch.Tensor]],
    n: int,
    settings: TuneSettings,
) -> list[float]:
    """Train ``model`` in place; return the loss of every step (none when nothing trains).
    An injected model's loss already holds its weighted router losses. The base's
    pre-training loop (one process, one micro-batch); tuning runs :mod:`mixlight_tune.loop`."""
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
        pairs = [pretraining_pair(chunks[i], rng, tok, spec.prefix_lm) for i in indices]
        return collate(pairs, PAD_ID)

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


def _load_tokenizer(path: Path) -> Any:
    """The checkpoint's own tokenizer: HF files when present, else ``spiece.model``."""
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        return transformers.AutoTokenizer.from_pretrained(str(path))
    return Tokenizer.load(path / "spiece.model")


def _load_model(path: Path, dtype: torch.dtype | None) -> transformers.PreTrainedModel:
    """A T5 (``T5ForConditionalGeneration``) or, for a decoder-only config, the family's
    causal LM (``AutoModelForCausalLM``)."""
    config = transformers.AutoConfig.from_pretrained(str(path))
    if config.is_encoder_decoder:
        return transformers.T5ForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)


def _codec(path: Path, config: transformers.PretrainedConfig) -> TextCodec:
    """The checkpoint tokenizer's :class:`TextCodec` (its encoding cached per text)."""
    codec = codec_for(
        _load_tokenizer(path),
        causal=not config.is_encoder_decoder,
        eos_id=config.eos_token_id,
        start_id=getattr(config, "bos_token_id", None),
    )
    return dataclasses.replace(codec, encode=lru_cache(maxsize=None)(codec.encode))


# --- where the run executes ---------------------------------------------------------------


def _launched() -> tuple[int, int, int, int]:
    """``(rank, world size, local rank, local world size)`` that ``torchrun`` set (one
    process of its own otherwise)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local = int(env.get("LOCAL_RANK", str(rank)))
    local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    return rank, world, local, local_world


def resolve_device(name: str, local_rank: int, world: int) -> torch.device:
    """``auto``: this process's CUDA device when CUDA is present, else the CPU; ``cuda``:
    the process's own GPU (``LOCAL_RANK`` under torchrun); ``cuda:N`` (one process only)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DemoError(f'device = "{name}" but torch sees no CUDA device; use "auto" or "cpu"')
    if name == "cuda":
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if world > 1:
        raise DemoError(
            f'device = "{name}" names one GPU, but torchrun started {world} processes; use '
            '"cuda" or "auto" (each process takes the GPU of its LOCAL_RANK)'
        )
    index = int(name.split(":")[1])
    if index >= torch.cuda.device_count():
        raise DemoError(f"device = {name!r}: torch sees {torch.cuda.device_count()} GPU(s)")
    return torch.device("cuda", index)


def setup(runtime: Runtime | None, threads: int) -> tuple[torch.device, Parallel]:
    """Threads, the device and (under torchrun) the process group of this process."""
    if runtime is None:  # the demo: the CPU, its own thread count, one process
        torch.set_num_threads(threads)
        return torch.device("cpu"), Parallel()
    rank, world, local, local_world = _launched()
    device = resolve_device(runtime.device, local, world)
    default_threads = max(1, (os.cpu_count() or 1) // max(1, local_world))
    torch.set_num_threads(runtime.threads or default_threads)
    if world == 1:
        return device, Parallel(device=str(device))
    from mixlight._torch_group import join_process_group

    if device.type == "cuda":
        torch.cuda.set_device(device)
    join_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, Parallel(
        processes=world,
        rank=rank,
        devices=world,
        data=world,
        layout=runtime.distributed,
        device=device.type,
    )


def prepare(cfg: DemoConfig, runtime: Runtime | None = None) -> Base:
    """The base model: ``--model``, the shipped tiny T5, or one built and cached here;
    loaded in its ``runtime`` dtype (bfloat16 for ``precision = "bf16"``) and moved to its
    device. Under FSDP2 only rank 0 reads the weights (kept on the CPU until sharded); the
    other ranks build the model on the meta device (:mod:`.torch_sharded_load`)."""
    device, parallel = setup(runtime, cfg.threads)
    path = base_checkpoint(cfg)
    if cfg.model_path is None and not (path / "config.json").is_file():
        build_base(cfg, path, keep_existing=True)
    origin = str(path)
    if (path / "pretraining.json").is_file():
        loss = json.loads((path / "pretraining.json").read_text())["final_loss"]
        origin = f"tiny T5 v1.1 pre-trained on the miniature world (final loss {loss:.2f}), {path}"
    dtype = torch.bfloat16 if runtime is not None and runtime.precision == "bf16" else None
    sharded = parallel.processes > 1 and parallel.layout == "fsdp"
    if sharded and parallel.rank != 0:
        model = sharded_load.empty_model(path, dtype)
    else:
        model = _load_model(path, dtype)
        if not sharded:
            _move(model, device)
    model.eval().requires_grad_(False)
    n = sum(p.numel() for p in model.parameters())
    description = f"{origin} ({n / 1e6:.2f}M parameters)"
    codec = _codec(path, model.config)
    return Base(model, codec, path, description, parallel, runtime, device, sharded)


def _move(model: nn.Module, device: torch.device) -> None:
    """``model.to(device)`` (in place). Through ``nn.Module``'s type: transformers wraps its
    ``to`` override in ``functools.wraps``, whose typeshed type mypy does not bind to the
    model."""
    model.to(device)


def set_dropout(model: transformers.PreTrainedModel, rate: float) -> None:
    """Every dropout of the model at ``rate``: the ``nn.Dropout`` modules and the attention
    dropout HF's attention modules apply functionally from a float attribute (T5's
    ``dropout``, Llama's ``attention_dropout``: the checkpoint's), so the config, not the
    checkpoint, decides."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = rate
        for name in ("dropout", "attention_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, rate)
    if hasattr(model, "config"):
        model.config.dropout_rate = rate


def _checkpoint_activations(model: transformers.PreTrainedModel) -> None:
    """HF's per-block activation checkpointing (non-reentrant: frozen inputs, trainable
    adapters inside the blocks); its newer name when transformers has it."""
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False  # a cache is for generation, and checkpointing refuses it


def _pairs(base: Base, examples: Sequence[Example], settings: TuneSettings) -> list[Pair]:
    if settings.pairs is not None:
        return list(settings.pairs)
    limits = settings.max_input_tokens, settings.max_target_tokens
    return [base.codec.pair(e.inputs, e.targets, *limits) for e in examples]


def tune(
    base: Base,
    adapter: ml.AdapterConfig | None,
    examples: Sequence[Example],
    settings: TuneSettings,
) -> tuple[nn.Module, list[float]]:
    """A trained copy of the base (the base itself with ``settings.in_place``; ``adapter``
    injected; ``None``: all weights train) and its loss at every step. Routers' auxiliary
    losses count when the config weights them."""
    model, trainer = make_trainer(base, adapter, examples, settings)
    if trainer is None:
        return model, []
    model.train()
    try:
        losses = loop.train(
            trainer, trainer.pairs, settings, base.parallel, lambda *a: check_finite_loss(*a)
        )
    finally:
        model.eval()
    return model, losses


def make_trainer(
    base: Base,
    adapter: ml.AdapterConfig | None,
    examples: Sequence[Example],
    settings: TuneSettings,
) -> tuple[nn.Module, TorchTrainer | None]:
    """The model to tune (adapter injected, dropout and checkpointing set, on its device)
    and its trainer (``None`` when nothing trains: no steps or no trainable weights)."""
    if settings.packing:
        check_packing(base, adapter)
    torch.manual_seed(settings.seed)
    model = base.model if settings.in_place else copy.deepcopy(base.model)
    if adapter is None:
        model.requires_grad_(settings.steps > 0)
    else:
        with adapter_fits(adapter):
            ml.inject(model, adapter, seed=settings.seed)
    if not base.sharded_load:
        _move(model, base.device)  # adapters are created on the base's device; a no-op then
    set_dropout(model, settings.dropout)
    runtime = base.runtime
    if runtime is not None and runtime.gradient_checkpointing:
        _checkpoint_activations(model)
    pairs = _pairs(base, examples, settings)
    parallel = base.parallel
    wrapped: nn.Module = model
    if base.sharded_load:  # shard, then fill every rank's shards from rank 0's weights
        full = sharded_load.full_weights(model) if parallel.rank == 0 else {}
        wrapped = _wrap(model, parallel, base.device)
        sharded_load.fill_shards(model, full, base.device)
        del full
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or settings.steps == 0:
        return model, None
    loop.check_divisible(settings, parallel.data, "the number of processes")
    if not base.sharded_load:
        wrapped = _wrap(model, parallel, base.device)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = make_optimizer(settings.optimizer, params, settings.lr)
    return model, TorchTrainer(wrapped, model, optimizer, params, pairs, settings, parallel, base)


def check_packing(base: Base, adapter: ml.AdapterConfig | None) -> None:
    """``packing = true`` needs a causal LM (a T5 pair is two rows) and token routing (a
    sequence router would pool over every example packed in a row)."""
    if not base.causal:
        raise DemoError(
            f"packing = true packs decoder-only rows, and {base.path} is an encoder-decoder "
            "(T5); remove packing"
        )
    if adapter is not None and adapter.routing == "sequence":
        raise DemoError(
            'packing = true with routing = "sequence": a packed row holds several examples, '
            'which one sequence router would pool together; use routing = "token" or remove '
            "packing"
        )


def _wrap(model: nn.Module, parallel: Parallel, device: torch.device) -> nn.Module:
    """DDP or FSDP2 around ``model`` in a multi-process run; the model itself otherwise."""
    if parallel.processes == 1:
        return model
    if parallel.layout == "fsdp":
        from mixlight_torch.distributed import shard_model

        if "mixlight_state" not in model.__dict__:
            raise DemoError(
                'distributed = "fsdp" shards an adapter run; full fine-tuning: use "ddp"'
            )
        return shard_model(model)
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _mix(*numbers: int) -> int:
    """A 63-bit seed from integers (dropout's seed per step, micro-batch and process)."""
    import hashlib

    digest = hashlib.sha256(repr(numbers).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class TorchTrainer:
    """:class:`mixlight_tune.loop.Trainer` for a (possibly wrapped) HF T5.

    A step runs each micro-batch on this process's share of it and sums the token losses
    normalised by the global batch's target-token count (times the world size, which DDP's
    and FSDP2's gradient averaging divide out), accumulating gradients without a sync until
    the last micro-batch. One process with one micro-batch in float32 calls the model with
    ``labels`` as plain HF training does (the demo's exact arithmetic)."""

    def __init__(
        self,
        wrapped: nn.Module,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        params: list[nn.Parameter],
        pairs: Sequence[Pair],
        settings: TuneSettings,
        parallel: Parallel,
        base: Base,
    ) -> None:
        self.wrapped, self.model, self.optimizer, self.params = wrapped, model, optimizer, params
        self.pairs, self.settings, self.parallel, self.device = (
            pairs,
            settings,
            parallel,
            base.device,
        )
        runtime = base.runtime
        self.bf16 = runtime is not None and runtime.precision == "bf16"
        self.injected = "mixlight_state" in model.__dict__
        self.fsdp = parallel.processes > 1 and parallel.layout == "fsdp"
        self.causal, self.pad_id = base.causal, base.pad_id
        self.width = settings.max_input_tokens + settings.max_target_tokens
        self.no_cache = {"use_cache": False} if self.causal else {}

    def _batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        pairs = [self.pairs[i] for i in indices]
        if self.settings.packing:
            batch = pack(pairs, self.pad_id, self.width)
        else:
            batch = collate(pairs, self.pad_id, self.causal)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _sync(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        if self.parallel.processes == 1:
            return contextlib.nullcontext()
        if self.fsdp:
            self.wrapped.set_requires_gradient_sync(last)  # type: ignore[operator]
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last else self.wrapped.no_sync()  # type: ignore[operator]

    def _loss(self, batch: dict[str, torch.Tensor], tokens: int, parts: int) -> torch.Tensor:
        world = self.parallel.data
        if world == 1 and parts == 1 and not self.bf16:
            return self.wrapped(**batch, **self.no_cache).loss  # mean over its tokens (+ routers)
        shift = None
        if not self.causal:
            assert isinstance(self.model, transformers.T5PreTrainedModel)  # (_load_model's)
            shift = self.model._shift_right
        summed = summed_token_loss(*token_logits(self.wrapped, batch, self.causal, shift))
        loss = summed * (world / tokens)
        if self.injected:
            loss = loss + ml.aux_losses(self.model) / parts
        return loss

    def step(self, step: int, micro: list[list[int]], lr: float, tokens: int) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for j, indices in enumerate(micro):
            mine = loop.shard(indices, self.parallel.rank, self.parallel.data)
            if self.settings.dropout > 0:  # masks from (seed, step, micro-batch, rank) alone
                torch.manual_seed(_mix(self.settings.seed, step, j, self.parallel.rank))
            with self._sync(j == len(micro) - 1):
                loss = self._loss(self._batch(mine), tokens, len(micro))
                loss.backward()
            total += loss.detach()
        if self.settings.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.parallel.processes > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
            total /= self.parallel.processes
        return float(total.item())

    def train_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.fsdp:
            return torch_resume.train_state_sharded(self.wrapped, self.optimizer)
        return torch_resume.train_state(self.model, self.optimizer)

    def restore(self, checkpoint: Checkpoint) -> None:
        if self.fsdp:
            torch_resume.restore_sharded(self.wrapped, self.optimizer, checkpoint)
        else:
            torch_resume.restore(self.model, self.optimizer, checkpoint)


@contextlib.contextmanager
def _gathered(model: nn.Module) -> Iterator[None]:
    """An FSDP2 model's root parameters (embeddings, LM head, final norms) gathered for
    calls that enter below the root (the scorer calls the encoder itself)."""
    unshard = getattr(model, "unshard", None)
    if unshard is None:
        yield
        return
    unshard()
    try:
        yield
    finally:
        model.reshard()  # type: ignore[operator]


PAD_TASK = "\0padding"  # a slot past the end of a process's share; its results are dropped
Share = tuple[list[int], list[bool], dict[str, Any], dict[str, Any]]


def evaluate(
    model: nn.Module, base: Base, examples: Sequence[Example], cfg: DemoConfig
) -> tuple[list[bool], Routing]:
    """Rank-classification correctness and per-task mean routing probabilities. A parallel
    run splits the examples over its processes (:func:`score_share`) and gathers the
    results."""
    parallel = base.parallel
    part = score_share(model, base, examples, cfg, parallel.rank, parallel.processes)
    parts = [part]
    if parallel.processes > 1:
        import torch.distributed as dist

        parts = [None] * parallel.processes  # type: ignore[list-item]
        dist.all_gather_object(parts, part)
    return combine_shares(parts, len(examples))


def score_share(
    model: nn.Module,
    base: Base,
    examples: Sequence[Example],
    cfg: DemoConfig,
    rank: int,
    processes: int,
) -> Share:
    """Process ``rank``'s share of the examples scored: ``(indices, correct, routing means,
    routing token counts)``. Every process scores the same number of slots (FSDP2's forward
    is collective, so each must run as many batches); the last ones pad their share with
    an example whose results are dropped."""
    share = -(-len(examples) // processes)
    mine = list(range(rank * share, min(len(examples), (rank + 1) * share)))
    slots = [examples[i] for i in mine]
    if examples:
        slots += [dataclasses.replace(examples[0], task=PAD_TASK)] * (share - len(mine))
    if not slots:
        return [], [], {}, {}
    with _gathered(model):
        result = rank_classification(
            model,
            base.codec,
            slots,
            cfg.eval_batch_size,
            max_input_tokens=cfg.max_input_tokens,
            progress=cfg.progress and rank == 0,
        )
    return mine, result.correct[: len(mine)], result.routing, result.routing_tokens


def combine_shares(parts: Sequence[Share], n: int) -> tuple[list[bool], Routing]:
    """The processes' shares as one result over ``n`` examples."""
    correct = [False] * n
    for indices, right, _, _ in parts:
        for i, ok in zip(indices, right, strict=True):
            correct[i] = ok
    return correct, _merged_routing([(means, counts) for _, _, means, counts in parts])


def _merged_routing(parts: list[tuple[dict[str, Any], dict[str, Any]]]) -> Routing:
    """Processes' ``(means, token counts)`` per site and task as one token-weighted mean
    (padding slots left out)."""
    sums: dict[str, dict[str, Any]] = collections.defaultdict(dict)
    tokens: dict[str, dict[str, float]] = collections.defaultdict(dict)
    for means, counts in parts:
        for site, by_task in means.items():
            for task, mean in by_task.items():
                if task == PAD_TASK:
                    continue
                n = counts[site][task]
                sums[site][task] = sums[site].get(task, 0.0) + np.asarray(mean) * n
                tokens[site][task] = tokens[site].get(task, 0.0) + n
    return {
        site: {task: (sums[site][task] / n).round(5).tolist() for task, n in by_task.items()}
        for site, by_task in tokens.items()
    }


def trainable_percent(model: nn.Module) -> float:
    """% of the model's parameters that train (``ml.trainable_parameters`` when injected)."""
    if "mixlight_state" in model.__dict__:
        return float(ml.trainable_parameters(model).percent)
    total = sum(p.numel() for p in model.parameters())
    return 100.0 * sum(p.numel() for p in model.parameters() if p.requires_grad) / total


def save(model: nn.Module, directory: Path) -> Path | None:
    """``ml.save_adapter`` for adapter methods; full fine-tuning saves nothing (a full copy
    of the base per run is not worth the disk). In a multi-process run every process calls
    it: FSDP2 shards are gathered (``save_adapter_distributed``), and rank 0 alone writes."""
    if "mixlight_state" not in model.__dict__:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return ml.save_adapter(model, directory)
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        from mixlight_torch.distributed import save_adapter_distributed

        return save_adapter_distributed(model, directory)
    error = None
    if dist.get_rank() == 0:
        try:
            ml.save_adapter(model, directory)
        except Exception as err:  # reported to every rank below
            error = f"{type(err).__name__}: {err}"
    outcome = [error]
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise DemoError(f"saving the adapter to {directory} failed on rank 0: {outcome[0]}")
    return Path(directory)


def memory_inputs(model: transformers.PreTrainedModel) -> dict[str, Any]:
    """Base parameter count and bytes, trainable shapes and the model config (its dimensions)."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    trainable = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    return {
        "base_params": sum(p.numel() for p in frozen),
        "base_bytes": sum(p.numel() * p.element_size() for p in frozen),
        "trainable": trainable,  # shapes only: a model on the meta device has no values
        "config": model.config.to_dict(),
    }


def device_name(base: Base) -> str | None:
    """The GPU's name (``None`` on the CPU)."""
    return torch.cuda.get_device_name(base.device) if base.device.type == "cuda" else None


def peak_memory(base: Base) -> int | None:
    """The peak bytes torch allocated on this process's GPU (``None`` on the CPU, where
    torch keeps no such count)."""
    if base.device.type != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated(base.device))
