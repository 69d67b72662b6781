"""The JAX train and score steps (:class:`mixlight_tune.steps.BackendSteps`), mirroring
:mod:`mixlight_tune.frameworks.torch_steps`.

The base is a HF T5 checkpoint directory loaded with :func:`mixlight_jax.t5.from_pretrained`:
``--model PATH``, or the shipped tiny T5 (a base for another ``BaseSpec`` is pre-trained by
the torch backend, so torch is needed only for that). Dropout is the NNX T5's own
(:mod:`mixlight_jax.t5.dropout`), its masks drawn from a key of the seed, the step and the
micro-batch alone.

``mixlight tune`` runs through :func:`prepare` with a :class:`~mixlight_tune.steps.Runtime`:
every device (of every process: ``jax.distributed.initialize`` first when the config or the
environment names several processes) in a ``(data, model)`` mesh. The batch is split over
``data``; the frozen base's kernels over ``model`` (their output axis, where it divides);
the adapters along their expert axis over ``model`` when the expert count divides, else
replicated. One jitted step serves one device and the mesh alike. The demo (no runtime)
pads every batch to the data's longest rows, so its jitted steps compile once; ``tune``
pads each batch to a multiple of ``settings.bucket`` tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

import mixlight as ml
from mixlight.site_spec import SOURCE
from mixlight_jax import AdapterParam, adapter_layers, t5
from mixlight_jax.model import is_injected, state_of
from mixlight_tune import loop
from mixlight_tune.checkpoint import Checkpoint
from mixlight_tune.experiment import DemoConfig, base_checkpoint
from mixlight_tune.frameworks import jax_resume
from mixlight_tune.sampling import routing_sites
from mixlight_tune.schema import Example
from mixlight_tune.steps import (
    DemoError,
    Pair,
    Parallel,
    Runtime,
    TuneSettings,
    adapter_fits,
    check_finite_loss,
)
from mixlight_tune.text_codec import TextCodec, as_encode, truncate
from mixlight_tune.tokenizer import PAD_ID, Tokenizer

# Adapter logical axes -> mesh axes: experts split over "model", the rest replicated.
LOGICAL_RULES = [("expert", "model"), ("embed", None), ("mlp", None), ("rank", None)]


@dataclass
class Base:
    """The frozen starting point every method copies, and its tokenizer; where it runs."""

    model: Any  # t5.T5ForConditionalGeneration
    codec: TextCodec
    path: Path
    description: str
    parallel: Parallel = field(default_factory=Parallel)
    runtime: Runtime | None = None
    mesh: Mesh | None = None


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


def _load_codec(path: Path) -> TextCodec:
    """The checkpoint tokenizer's :class:`TextCodec` (HF files when present, else
    ``spiece.model``), its encoding cached per text."""
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        import transformers

        tokenizer: Any = transformers.AutoTokenizer.from_pretrained(str(path))
    else:
        tokenizer = Tokenizer.load(path / "spiece.model")
    return TextCodec(lru_cache(maxsize=None)(as_encode(tokenizer)))


# --- processes, devices and the mesh --------------------------------------------------------

_JOINED: list[bool] = []  # jax.distributed.initialize may run once per process


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return None if value in (None, "") else int(value)


def join_processes(runtime: Runtime) -> None:
    """``jax.distributed.initialize`` when the config (``num_processes``,
    ``coordinator_address``, ``process_id``) or the environment (``JAX_NUM_PROCESSES``,
    ``JAX_COORDINATOR_ADDRESS``, ``JAX_PROCESS_ID``) asks for more than one process; what
    neither gives, JAX detects on a cluster it knows (SLURM, Open MPI, Cloud TPU)."""
    count = runtime.num_processes or _env_int("JAX_NUM_PROCESSES")
    if _JOINED or count is None or count < 2:
        return
    pid = runtime.process_id if runtime.process_id is not None else _env_int("JAX_PROCESS_ID")
    if runtime.device == "cpu" or os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=runtime.coordinator_address, num_processes=count, process_id=pid
    )
    _JOINED.append(True)


def _devices(name: str) -> list[Any]:
    """Every device of the run (all processes'): ``auto`` JAX's default platform, ``cpu``
    the host's, ``cuda`` the GPUs."""
    if name == "auto":
        return list(jax.devices())
    if name.startswith("cuda:"):
        raise DemoError(
            f'device = "{name}": the JAX backend uses every device it is given; choose GPUs '
            'with CUDA_VISIBLE_DEVICES and set device = "cuda" (or "auto")'
        )
    try:
        return list(jax.devices("cpu" if name == "cpu" else "gpu"))
    except RuntimeError as err:
        raise DemoError(f'device = "{name}": JAX has no such devices ({err})') from None


def make_mesh(runtime: Runtime) -> tuple[Mesh | None, Parallel]:
    """The ``(data, model)`` mesh over every device of the run (``None`` for one device)."""
    join_processes(runtime)
    devices = _devices(runtime.device)
    n = len(devices)
    wanted = dict(runtime.mesh or {})
    model_ways = wanted.get("model", 1)
    data_ways = wanted.get("data", n // model_ways if n % model_ways == 0 else 0)
    if data_ways * model_ways != n:
        raise DemoError(
            f"mesh {{data = {wanted.get('data', '?')}, model = {model_ways}}} does not cover the "
            f"{n} device(s) of this run: data x model must be {n}"
        )
    parallel = Parallel(
        processes=jax.process_count(),
        rank=jax.process_index(),
        devices=n,
        data=data_ways,
        model=model_ways,
        layout="mesh" if n > 1 else "single",
        device=devices[0].platform,
    )
    if n == 1:
        return None, parallel
    mesh = Mesh(np.array(devices).reshape(data_ways, model_ways), ("data", "model"))
    return mesh, parallel


def to_global(value: Any, sharding: NamedSharding) -> jax.Array:
    """``value`` (the same on every process) as a global array laid out as ``sharding``."""
    if jax.process_count() == 1:
        return jax.device_put(value, sharding)
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def to_host(value: Any) -> np.ndarray:
    """A device array's whole value on this host (gathered from every process when it spans
    several: then every process must call this, in the same order)."""
    if getattr(value, "is_fully_addressable", True):
        return np.asarray(jax.device_get(value))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(value, tiled=True))


def _kernel_sharding(mesh: Mesh, value: Any) -> NamedSharding:
    """Split a base kernel's output axis over ``model`` when it divides, else replicate."""
    size = mesh.shape["model"]
    if size > 1 and np.ndim(value) == 2 and value.shape[1] % size == 0:
        return NamedSharding(mesh, P(None, "model"))
    return NamedSharding(mesh, P())


def place(model: Any, mesh: Mesh) -> list[str]:
    """Put the base and the adapters on ``mesh`` (in place); returns notes on what could not
    be split as asked (an expert count the model axis does not divide: replicated)."""
    notes: list[str] = []
    replicated = NamedSharding(mesh, P())
    if is_injected(model):
        with nnx.logical_axis_rules(LOGICAL_RULES):
            wanted = nnx.get_named_sharding(nnx.state(model, AdapterParam), mesh)
        adapters = nnx.state(model, AdapterParam)

        def fits(value: Any, sharding: NamedSharding) -> NamedSharding:
            for dim, axis in zip(value.shape, sharding.spec, strict=False):
                if axis is not None and dim % mesh.shape[axis]:
                    note = (
                        f"{dim} experts do not split over model = {mesh.shape[axis]}: the "
                        "adapters are replicated on the model axis (choose a model axis that "
                        "divides the expert count to split them)"
                    )
                    if note not in notes:
                        notes.append(note)
                    return replicated
            return sharding

        shardings = jax.tree.map(fits, adapters, wanted)
        nnx.update(model, jax.tree.map(to_global, adapters, shardings))
    base = nnx.state(model, nnx.Not(AdapterParam))
    nnx.update(model, jax.tree.map(lambda v: to_global(v, _kernel_sharding(mesh, v)), base))
    return notes


def prepare(cfg: DemoConfig, runtime: Runtime | None = None) -> Base:
    """The base model: ``--model``, the shipped tiny T5, or one the torch backend builds and
    caches (torch is needed only to build a base that is not shipped); in bfloat16 for
    ``precision = "bf16"``, on ``runtime``'s mesh."""
    mesh, parallel = (None, Parallel()) if runtime is None else make_mesh(runtime)
    path = base_checkpoint(cfg)
    if cfg.model_path is None and not (path / "config.json").is_file():
        try:
            from mixlight_tune.frameworks.torch_steps import build_base
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
    bf16 = runtime is not None and runtime.precision == "bf16"
    model = t5.from_pretrained(path, jnp.bfloat16 if bf16 else jnp.float32)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    description = f"{origin} ({n / 1e6:.2f}M parameters)"
    return Base(model, _load_codec(Path(path)), Path(path), description, parallel, runtime, mesh)


def make_optimizer(
    name: str,
    lr: float | Callable[[Any], Any],
    max_grad_norm: float | None = None,
) -> optax.GradientTransformation:
    """Adafactor (parameter-scaled, no momentum), AdamW or plain SGD, as the torch backend,
    at a constant ``lr`` or a schedule of the step count; global-norm clipping first when
    ``max_grad_norm`` is set. ``min_dim_size_to_factor=1`` factors every matrix as HF's
    Adafactor does (optax's default 128 would not, and full fine-tuning losses would drift
    from torch's)."""
    if name == "adamw":
        tx = optax.adamw(lr, weight_decay=0.0)
    elif name == "sgd":
        tx = optax.sgd(lr)
    else:
        tx = optax.adafactor(lr, min_dim_size_to_factor=1, multiply_by_parameter_scale=True)
    if max_grad_norm is None:
        return tx
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), tx)


def schedule(settings: TuneSettings) -> float | Callable[[Any], Any]:
    """``settings.lr`` times :func:`mixlight_tune.loop.lr_factor` of the optimiser's step
    count, in jnp (a constant rate without warmup stays a float)."""
    steps, warmup, kind = settings.steps, settings.warmup_steps, settings.lr_schedule
    if kind == "constant" and warmup == 0:
        return settings.lr

    def rate(count: Any) -> Any:
        count = jnp.asarray(count, jnp.float32)
        p = (count - warmup) / max(1, steps - warmup)
        decay = {"constant": 1.0, "linear": 1.0 - p, "cosine": 0.5 * (1.0 + jnp.cos(jnp.pi * p))}
        after = jnp.asarray(decay[kind], jnp.float32)
        ramp = (count + 1.0) / max(1, warmup)
        return settings.lr * jnp.where(count < warmup, ramp, after)

    return rate


def _decoder_start(model: Any) -> int:
    start = getattr(model.config, "decoder_start_token_id", None)
    return PAD_ID if start is None else int(start)


def _round_up(length: int, bucket: int, limit: int) -> int:
    return min(limit, -(-length // bucket) * bucket) if bucket else limit


def tune(
    base: Base,
    adapter: ml.AdapterConfig | None,
    examples: Sequence[Example],
    settings: TuneSettings,
) -> tuple[Any, list[float]]:
    """A trained copy of the base (the base itself with ``settings.in_place``; ``adapter``
    injected; ``None``: all weights train) and its loss at every step. Routers' auxiliary
    losses are added when the config weights them."""
    model, trainer = make_trainer(base, adapter, examples, settings)
    if trainer is None:
        return model, []
    return model, loop.train(
        trainer, trainer.pairs, settings, base.parallel, lambda *a: check_finite_loss(*a)
    )


def make_trainer(
    base: Base,
    adapter: ml.AdapterConfig | None,
    examples: Sequence[Example],
    settings: TuneSettings,
) -> tuple[Any, JaxTrainer | None]:
    """The model to tune (adapter injected, dropout and rematerialisation set, placed on
    the mesh) and its trainer (``None`` when nothing trains)."""
    model = base.model if settings.in_place else nnx.clone(base.model)
    if adapter is not None:
        with adapter_fits(adapter):
            ml.inject(model, adapter, seed=settings.seed)
        wrt: Any = AdapterParam
    else:
        wrt = nnx.Param
    model.mixlight_demo_full = adapter is None and settings.steps > 0
    t5.set_dropout(model, settings.dropout)
    runtime = base.runtime
    if runtime is not None and runtime.gradient_checkpointing:
        t5.set_gradient_checkpointing(model, True)
    limits = settings.max_input_tokens, settings.max_target_tokens
    pairs = (
        list(settings.pairs)
        if settings.pairs is not None
        else [base.codec.pair(e.inputs, e.targets, *limits) for e in examples]
    )
    if base.mesh is not None:
        base.parallel = _with_notes(base.parallel, place(model, base.mesh))
    if settings.steps == 0 or not pairs:
        return model, None
    loop.check_divisible(settings, base.parallel.data, "the mesh's data axis")
    tx = make_optimizer(settings.optimizer, schedule(settings), settings.max_grad_norm)
    optimizer = nnx.Optimizer(model, tx, wrt=wrt)
    if base.mesh is not None:
        replicated = NamedSharding(base.mesh, P())
        state = nnx.state(optimizer)
        nnx.update(optimizer, jax.tree.map(lambda v: to_global(v, replicated), state))
    return model, JaxTrainer(model, optimizer, wrt, pairs, settings, base, adapter is not None)


def _with_notes(parallel: Parallel, notes: list[str]) -> Parallel:
    import dataclasses

    return dataclasses.replace(parallel, notes=tuple(dict.fromkeys([*parallel.notes, *notes])))


def _clear_traces(model: Any) -> None:
    """Forget the adapters' last-forward routing (a pure output of each step): a step then
    never takes the previous batch's traces as inputs, so it compiles once per batch shape
    and a resumed step is the same program on the same bits."""
    if not is_injected(model):
        return
    for layer in adapter_layers(model).values():
        layer.last_probs.set_value(None)
        layer.last_logits.set_value(None)


class JaxTrainer:
    """:class:`mixlight_tune.loop.Trainer` for the NNX T5.

    The loss of a micro-batch is its summed token losses over the global batch's target
    tokens (one micro-batch: over its own, as the demo always did), plus the weighted router
    losses over the number of micro-batches; gradients are summed over micro-batches, then
    one optimiser update. On a mesh each micro-batch is one global array split over ``data``,
    so the sum runs over every device's rows."""

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        wrt: Any,
        pairs: Sequence[Pair],
        settings: TuneSettings,
        base: Base,
        aux: bool,
    ) -> None:
        self.model, self.optimizer, self.wrt = model, optimizer, wrt
        self.pairs, self.settings, self.mesh = pairs, settings, base.mesh
        self.start = _decoder_start(model)
        self.shapes: set[tuple[int, int, int]] = set()
        self.compiled = False
        self.in_limit = max(len(p[0]) for p in pairs)
        self.out_limit = max(len(p[1]) for p in pairs)
        self.data = None if base.mesh is None else NamedSharding(base.mesh, P("data"))
        self.replicated = None if base.mesh is None else NamedSharding(base.mesh, P())

        def loss_fn(model, ids, attn, dec_in, labels, label_mask, tokens, parts, key):
            logits = model(
                input_ids=ids,
                attention_mask=attn,
                decoder_input_ids=dec_in,
                **({} if key is None else {"dropout_rng": key}),
            )
            logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
            token = jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
            total = jnp.maximum(label_mask.sum(), 1) if tokens is None else tokens
            loss = -(token * label_mask).sum() / total
            if aux:
                loss = loss + ml.aux_losses(model) / parts
            return loss

        def dropout_key(seed, counter):
            if seed is None:
                return None
            return jax.random.fold_in(jax.random.key(seed), counter)

        @nnx.jit
        def step(model, optimizer, batch, key_in):
            grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))
            loss, grads = grad_fn(model, *batch, None, 1, dropout_key(*key_in))
            optimizer.update(model, grads)
            return loss

        @nnx.jit(static_argnums=3)
        def gradients(model, batch, tokens, parts, key_in):
            grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))
            return grad_fn(model, *batch, tokens, parts, dropout_key(*key_in))

        @nnx.jit
        def update(model, optimizer, grads):
            optimizer.update(model, grads)

        self._step, self._gradients, self._update = step, gradients, update
        self._add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))

    def _batch(self, indices: list[int]) -> tuple[Any, ...]:
        rows = [self.pairs[i] for i in indices]
        bucket = self.settings.bucket
        in_len = _round_up(max(len(r[0]) for r in rows), bucket, self.in_limit)
        out_len = _round_up(max(len(r[1]) for r in rows), bucket, self.out_limit)
        shape = (len(rows), in_len, out_len)
        self.compiled = self.compiled or shape not in self.shapes
        self.shapes.add(shape)
        ids, attn = pad_to([r[0] for r in rows], in_len, PAD_ID)
        labels, label_mask = pad_to([r[1] for r in rows], out_len, PAD_ID)
        dec_in = shift_right(labels, label_mask, self.start)
        arrays = (ids, attn, dec_in, labels, label_mask.astype(np.float32))
        if self.data is None:
            return arrays
        return tuple(to_global(a, self.data) for a in arrays)

    def _key(self, counter: int) -> tuple[Any, Any]:
        if self.settings.dropout == 0:
            return None, None
        return np.uint32(self.settings.seed), np.uint32(counter)

    def step(self, step: int, micro: list[list[int]], lr: float, tokens: int) -> float:
        _clear_traces(self.model)
        self.compiled = False  # set when a micro-batch has a shape not seen before
        parts = len(micro)
        if parts == 1:
            loss = self._step(self.model, self.optimizer, self._batch(micro[0]), self._key(step))
            return float(to_host(loss))
        total_tokens = np.float32(tokens)
        grads, loss = None, 0.0
        for j, indices in enumerate(micro):
            _clear_traces(self.model)
            part_loss, part = self._gradients(
                self.model, self._batch(indices), total_tokens, parts, self._key(step * parts + j)
            )
            grads = part if grads is None else self._add(grads, part)
            loss += float(to_host(part_loss))
        self._update(self.model, self.optimizer, grads)
        return loss

    def train_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return jax_resume.train_state(self.model, self.optimizer, self.wrt, to_host), {}

    def restore(self, checkpoint: Checkpoint) -> None:
        jax_resume.restore(self.model, self.optimizer, self.wrt, checkpoint, to_global)


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
    encode = base.codec.encode
    inputs = [truncate(encode(e.inputs), cfg.max_input_tokens) for e in examples]
    choices = [[encode(c) for c in e.choices or ()] for e in examples]
    in_len = max(len(r) for r in inputs)
    out_len = max(len(c) for cs in choices for c in cs)
    n_choices = max(len(cs) for cs in choices)
    size = max(1, min(cfg.eval_batch_size, len(examples)))
    rows = size * n_choices
    start = _decoder_start(model)
    replicated = None if base.mesh is None else NamedSharding(base.mesh, P())
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
    show = cfg.progress and base.parallel.writer
    for first in tqdm(starts, desc="evaluate", disable=not show, leave=False):
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
        arrays: tuple[np.ndarray | jax.Array, ...] = (ids, attn, np.asarray(owner, np.int32))
        arrays += (dec_in, labels, label_mask.astype(np.float32))
        if replicated is not None:
            arrays = tuple(to_global(a, replicated) for a in arrays)
        flat, probs = score(model, *arrays)
        flat = to_host(flat).tolist()
        tasks = [examples[i].task for i in batch]
        row_tasks = [tasks[k] for k in owner[:real]]
        for site, p in probs.items():
            p = to_host(p)
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
    """``ml.save_adapter`` for adapter methods; full fine-tuning saves nothing. With several
    processes every one calls it (the adapter and the base's identity samples are gathered
    from all of them) and process 0 alone writes."""
    if not is_injected(model):
        return None
    if jax.process_count() == 1:
        return ml.save_adapter(model, directory)
    from jax.experimental import multihost_utils

    import mixlight.extend as mlx
    from mixlight._model_card import facts_of

    backend = _model_backend()
    config, specs, arrays = backend.adapter_state(model)
    identity = backend.base_identity(model)
    card = facts_of(backend, model)
    if jax.process_index() == 0:
        mlx.write_adapter(directory, config, specs, arrays, base=identity, card=card)
    multihost_utils.sync_global_devices(f"mixlight tune saved {directory}")
    return Path(directory)


def _model_backend() -> ml.extend.Backend[Any, Any]:
    """mixlight's JAX backend (``load_backend`` types it as the array part of the contract;
    a framework's backend is a whole :class:`~mixlight.extend.Backend`)."""
    import mixlight.extend as mlx

    backend = mlx.load_backend("jax")
    assert isinstance(backend, mlx.Backend)
    return backend


def memory_inputs(model: Any) -> dict[str, Any]:
    """Base parameter count and bytes, trainable shapes and the model config (its dimensions)."""
    import dataclasses

    frozen = jax.tree.leaves(nnx.state(model, nnx.All(nnx.Param, nnx.Not(AdapterParam))))
    arrays = _model_backend().adapter_state(model)[2]
    return {
        "base_params": sum(int(x.size) for x in frozen),
        "base_bytes": sum(int(x.size) * x.dtype.itemsize for x in frozen),
        "trainable": {name: tuple(a.shape) for name, a in arrays.items()},
        "config": dataclasses.asdict(model.config),
    }


def device_name(base: Base) -> str | None:
    """The accelerator's kind (``"NVIDIA H100 80GB HBM3"``, ``"TPU v5 lite"``; ``None`` on
    the CPU)."""
    device = jax.local_devices()[0]
    return None if device.platform == "cpu" else str(device.device_kind)


def peak_memory(base: Base) -> int | None:
    """The largest peak bytes in use of this process's devices, where the platform reports
    it (GPUs, TPUs; ``None`` on the CPU)."""
    peaks = []
    for device in jax.local_devices():
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None
