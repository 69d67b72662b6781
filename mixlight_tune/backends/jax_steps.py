"""The JAX train and score steps (:class:`mixlight_tune.steps.BackendSteps`), mirroring
:mod:`mixlight_tune.backends.torch_steps`.

The base is a HF T5 checkpoint directory loaded with :func:`mixlight_jax.t5.from_pretrained`:
``--model PATH``, or the shipped tiny T5 (a base for another ``BaseSpec`` is pre-trained by
the torch backend, so torch is needed only for that).
Batches are padded to fixed lengths (``max_input_tokens`` / ``max_target_tokens``) so the
jitted train and scoring steps compile once. The NNX T5 has no dropout, so a run that asks
for it is refused rather than silently run without.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

import mixlight as ml
from mixlight.site_spec import SOURCE
from mixlight_jax import AdapterParam, adapter_layers, t5
from mixlight_jax.model import is_injected, state_of
from mixlight_tune.backends import jax_resume
from mixlight_tune.checkpoint import resume_point
from mixlight_tune.experiment import DemoConfig, base_checkpoint
from mixlight_tune.sampling import batches, routing_sites
from mixlight_tune.schema import Example
from mixlight_tune.steps import DemoError, TuneSettings, adapter_fits, check_finite_loss
from mixlight_tune.tokenizer import PAD_ID, Tokenizer

Encode = Callable[[str], list[int]]


@dataclass
class Base:
    """The frozen starting point every method copies, and its tokenizer."""

    model: Any  # t5.T5ForConditionalGeneration
    encode: Encode
    path: Path
    description: str


def truncate(ids: list[int], limit: int | None) -> list[int]:
    """The first ``limit`` ids, keeping the last one (EOS) last; all of them when it fits."""
    return ids if limit is None or len(ids) <= limit else ids[: limit - 1] + ids[-1:]


def pad_to(rows: Sequence[Sequence[int]], width: int, value: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id lists to ``width``: ``(ids [len(rows), width], 1/0 mask of real tokens)``."""
    ids = np.full((len(rows), width), value, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def shift_right(labels: np.ndarray, mask: np.ndarray, start: int) -> np.ndarray:
    """Decoder inputs: ``[start] + labels[:-1]``, padding replaced by ``PAD_ID``."""
    labels = np.where(mask > 0, labels, PAD_ID)
    return np.concatenate([np.full((len(labels), 1), start, np.int32), labels[:, :-1]], 1)


def _load_tokenizer(path: Path) -> Encode:
    """The checkpoint's own tokenizer: HF files when present, else ``spiece.model``."""
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    else:
        tokenizer = Tokenizer.load(path / "spiece.model")
    return lambda text: list(tokenizer.encode(text))


def prepare(cfg: DemoConfig) -> Base:
    """The base model: ``--model``, the shipped tiny T5, or one the torch backend builds and
    caches (torch is needed only to build a base that is not shipped)."""
    path = base_checkpoint(cfg)
    if cfg.model_path is None and not (path / "config.json").is_file():
        try:
            from mixlight_tune.backends.torch_steps import build_base
        except ImportError as error:
            raise DemoError(
                f"the base for this --base spec is not built yet ({path}); building it needs "
                f"torch ({error}). Pass --model PATH (a HF T5 checkpoint with its tokenizer) "
                "or keep the default spec to use the shipped base"
            ) from error
        build_base(cfg, path, keep_existing=True)
    origin = str(path)
    if (path / "pretraining.json").is_file():
        loss = json.loads((path / "pretraining.json").read_text())["final_loss"]
        origin = f"tiny T5 v1.1 pre-trained on the miniature world (final loss {loss:.2f}), {path}"
    model = t5.from_pretrained(path)
    encode = lru_cache(maxsize=None)(_load_tokenizer(Path(path)))
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return Base(model, encode, Path(path), f"{origin} ({n / 1e6:.2f}M parameters)")


def make_optimizer(name: str, lr: float) -> optax.GradientTransformation:
    """Adafactor (parameter-scaled, constant lr, no momentum), AdamW or plain SGD, as the
    torch backend. ``min_dim_size_to_factor=1`` factors every matrix as HF's Adafactor does
    (optax's default 128 would not, and full fine-tuning losses would drift from torch's)."""
    if name == "adamw":
        return optax.adamw(lr, weight_decay=0.0)
    if name == "sgd":
        return optax.sgd(lr)
    return optax.adafactor(lr, min_dim_size_to_factor=1, multiply_by_parameter_scale=True)


def _decoder_start(model: Any) -> int:
    start = getattr(model.config, "decoder_start_token_id", None)
    return PAD_ID if start is None else int(start)


def tune(
    base: Base,
    adapter: ml.AdapterConfig | None,
    examples: Sequence[Example],
    settings: TuneSettings,
) -> tuple[Any, list[float]]:
    """A trained copy of the base (``adapter`` injected; ``None``: all weights train) and its
    loss at every step. Routers' auxiliary losses are added when the config weights them."""
    if settings.dropout > 0:
        raise DemoError(
            f"{settings.label}: dropout {settings.dropout} asked, but the JAX T5 has no dropout; "
            "use dropout 0 (the demo's default) or --backend torch"
        )
    model = nnx.clone(base.model)
    if adapter is not None:
        with adapter_fits(adapter):
            ml.inject(model, adapter, seed=settings.seed)
        wrt: Any = AdapterParam
    else:
        wrt = nnx.Param
    model.mixlight_demo_full = adapter is None and settings.steps > 0
    pairs = [
        (
            truncate(base.encode(e.inputs), settings.max_input_tokens),
            truncate(base.encode(e.targets), settings.max_target_tokens),
        )
        for e in examples
    ]
    if settings.steps == 0 or not pairs:
        return model, []
    in_len = max(len(p[0]) for p in pairs)
    out_len = max(len(p[1]) for p in pairs)
    start = _decoder_start(model)
    optimizer = nnx.Optimizer(model, make_optimizer(settings.optimizer, settings.lr), wrt=wrt)
    aux = adapter is not None

    def loss_fn(model, ids, attn, dec_in, labels, label_mask):
        logits = model(input_ids=ids, attention_mask=attn, decoder_input_ids=dec_in)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
        token = jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
        loss = -(token * label_mask).sum() / jnp.maximum(label_mask.sum(), 1)
        if aux:
            loss = loss + ml.aux_losses(model)
        return loss

    @nnx.jit
    def step(model, optimizer, ids, attn, dec_in, labels, label_mask):
        grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))
        loss, grads = grad_fn(model, ids, attn, dec_in, labels, label_mask)
        optimizer.update(model, grads)
        return loss

    resume = settings.resume

    @nnx.jit
    def forward(model, ids, attn, dec_in):
        return model(input_ids=ids, attention_mask=attn, decoder_input_ids=dec_in)

    def batch(indices: list[int]) -> tuple[np.ndarray, ...]:
        ids, attn = pad_to([pairs[i][0] for i in indices], in_len, PAD_ID)
        labels, label_mask = pad_to([pairs[i][1] for i in indices], out_len, PAD_ID)
        dec_in = shift_right(labels, label_mask, start)
        return ids, attn, dec_in, labels, label_mask.astype(np.float32)

    def restore(checkpoint: Any) -> None:
        # After its first step, a run's step also takes the adapters' last-forward caches
        # (routing probabilities) as inputs; one forward pass creates them, and the restore
        # gives them the saved run's values: the same program on the same bits.
        ids, attn, dec_in, _, _ = batch(list(range(min(settings.batch_size, len(pairs)))))
        forward(model, ids, attn, dec_in)
        jax_resume.restore(model, optimizer, wrt, checkpoint)

    done, losses = resume_point(resume, restore)
    order = itertools.islice(
        batches(len(pairs), settings.batch_size, settings.steps, settings.seed), done, None
    )
    bar = tqdm(
        order,
        total=settings.steps,
        initial=done,
        desc=settings.label,
        disable=not settings.progress,
    )
    for indices in bar:
        loss = step(model, optimizer, *batch(indices))
        losses.append(float(loss))
        check_finite_loss(losses[-1], len(losses) - 1, settings)
        if len(losses) % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
        if resume is not None and resume.due(len(losses), settings.steps):
            resume.save(len(losses), losses, jax_resume.train_state(model, optimizer, wrt))
    return model, losses


def default_routing_sites(model: Any) -> list[str]:
    """The last encoder and last decoder FFN activation sites that have a router."""
    return routing_sites(p for p, layer in adapter_layers(model).items() if layer.spec.has_router)


def _head_mean(probs: jax.Array) -> jax.Array:
    """``[rows, seq, E]`` or ``[rows, seq, H, E]`` -> ``[rows, seq, E]`` (float32)."""
    probs = probs.astype(jnp.float32)
    return probs.reshape(*probs.shape[:2], -1, probs.shape[-1]).mean(2)


def evaluate(
    model: Any, base: Base, examples: Sequence[Example], cfg: DemoConfig
) -> tuple[list[bool], dict[str, dict[str, list[float]]]]:
    """Rank-classification correctness (summed log-likelihood of each choice's target ids,
    EOS included; ties to the first choice) and per-task mean routing probabilities."""
    if any(not e.choices or e.answer is None for e in examples):
        raise ValueError("rank classification needs examples with choices and an answer")
    encode = base.encode
    inputs = [truncate(encode(e.inputs), cfg.max_input_tokens) for e in examples]
    choices = [[encode(c) for c in e.choices or ()] for e in examples]
    in_len = max(len(r) for r in inputs)
    out_len = max(len(c) for cs in choices for c in cs)
    n_choices = max(len(cs) for cs in choices)
    size = max(1, min(cfg.eval_batch_size, len(examples)))
    rows = size * n_choices
    start = _decoder_start(model)
    sites = default_routing_sites(model) if is_injected(model) else []
    sides = {spec.path: spec.side for spec in state_of(model).specs} if sites else {}

    @nnx.jit
    def score(model, ids, attn, owner, dec_in, labels, label_mask):
        layers = adapter_layers(model) if sites else {}
        hidden = model.encode(ids, attn)
        probs = {s: _head_mean(layers[s].last_probs.get_value()) for s in sites if "encoder." in s}
        logits = model.decode(dec_in, hidden[owner], attn[owner])
        for s in sites:
            if s.startswith("decoder."):
                probs[s] = _head_mean(layers[s].last_probs.get_value())
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
        token = jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
        return (token * label_mask).sum(1), probs

    sums: dict[str, dict[str, np.ndarray]] = {s: {} for s in sites}
    counts: dict[str, dict[str, float]] = {s: {} for s in sites}

    def tally(site: str, probs: np.ndarray, mask: np.ndarray, tasks: Sequence[str | None]):
        weighted = (probs * mask[..., None]).sum(1)
        for task, row, count in zip(tasks, weighted, mask.sum(1), strict=True):
            if task is None:
                continue
            sums[site][task] = sums[site].get(task, 0.0) + row
            counts[site][task] = counts[site].get(task, 0.0) + float(count)

    scores: list[list[float]] = []
    starts = range(0, len(examples), size)
    for first in tqdm(starts, desc="evaluate", disable=not cfg.progress, leave=False):
        batch = range(first, min(first + size, len(examples)))
        ids, attn = pad_to([inputs[i] for i in batch], in_len, PAD_ID)
        ids = np.pad(ids, ((0, size - len(batch)), (0, 0)), constant_values=PAD_ID)
        attn = np.pad(attn, ((0, size - len(batch)), (0, 0)))
        owner = [k for k, i in enumerate(batch) for _ in choices[i]]
        targets = [c for i in batch for c in choices[i]]
        real = len(targets)
        owner += [0] * (rows - real)
        targets += [[]] * (rows - real)
        labels, label_mask = pad_to(targets, out_len, PAD_ID)
        dec_in = shift_right(labels, label_mask, start)
        flat, probs = score(
            model, ids, attn, np.asarray(owner, np.int32), dec_in, labels,
            label_mask.astype(np.float32),
        )  # fmt: skip
        flat = np.asarray(flat).tolist()
        tasks = [examples[i].task for i in batch]
        row_tasks = [tasks[k] for k in owner[:real]]
        for site, p in probs.items():
            p = np.asarray(p)
            if site.startswith("encoder."):
                tally(site, p[: len(batch)], attn[: len(batch)].astype(np.float32), tasks)
            else:
                memory = sides[site] == SOURCE  # cross-attention keys/values read the encoder
                mask = attn[np.asarray(owner)] if memory else label_mask
                tally(site, p[:real], mask[:real].astype(np.float32), row_tasks)
        k = 0
        for i in batch:
            scores.append(flat[k : k + len(choices[i])])
            k += len(choices[i])
    predicted = [int(np.argmax(s)) for s in scores]
    correct = [p == e.answer for p, e in zip(predicted, examples, strict=True)]
    routing = {
        s: {t: (v / counts[s][t]).round(5).tolist() for t, v in by_task.items()}
        for s, by_task in sums.items()
    }
    return correct, routing


def trainable_percent(model: Any) -> float:
    """% of the model's parameters that train (``ml.trainable_parameters`` when injected)."""
    if is_injected(model):
        return float(ml.trainable_parameters(model).percent)
    return 100.0 if getattr(model, "mixlight_demo_full", False) else 0.0


def save(model: Any, directory: Path) -> Path | None:
    """``ml.save_adapter`` for adapter methods; full fine-tuning saves nothing."""
    if not is_injected(model):
        return None
    return ml.save_adapter(model, directory)
