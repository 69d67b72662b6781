"""``mixlight tune CONFIG``: one tuning experiment from a config file, in either backend.

The run stands on the demo's pipeline: the backend's :class:`~mixlight_tune.steps.BackendSteps`
(``prepare``, ``tune``, ``evaluate``, ``save``), :class:`~mixlight_tune.steps.TuneSettings`
and :func:`~mixlight_tune.report.score_table`. What it writes to ``output_dir`` is the same
for both backends: ``adapter/`` (the portable adapter format; with ``adapter = "full"``,
``model/``, the whole tuned model: :mod:`~mixlight_tune.full_model`), ``metrics.json`` (the
resolved config, the loss of every step, the trainable share and the eval scores) and
``config.json`` (the resolved config, which ``mixlight tune`` accepts back, from any folder).

``output_dir`` is refused before anything loads when it holds files ``mixlight tune`` did not
write (:data:`TUNE_OUTPUT`), and claimed (created, marked) before the base loads; the sha256
of the training data is recorded there, and a resumed run on changed data is refused
(:class:`~mixlight_tune.checkpoint.DataRecord`).

The same config runs on one CPU, one GPU, N processes under ``torchrun`` (DDP or FSDP2) or a
JAX mesh over many devices and processes (``jax.distributed``): ``batch_size`` is the global
batch, the loss is normalised by the global batch's target tokens, and process 0 alone
writes (docs/tune.md, "Devices, processes, memory").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mixlight import AdapterFileError

from . import full_model, hub, model_shapes, results, sources
from ._files import atomic_write
from .checkpoint import DataRecord, Resume
from .experiment import DemoConfig, check_model_dir, prepare_base
from .flops import row_flops, utilisation
from .loop import Journal
from .memory import MIB, Layout, estimate, format_estimate
from .miniature.suite import build_suite
from .mixture_data import Mixture, open_mixture
from .output_dirs import OutputKind
from .report import eval_scores
from .run_logs import check_available, open_logs
from .schema import Example
from .steps import BackendSteps, DemoError, Pair, Runtime, TuneSettings, load_steps
from .token_cache import FILE as TOKENS_FILE
from .token_cache import SOURCES_DIR as TOKENS_DIR
from .token_cache import cache_key, cached_pairs
from .tune_config import TuneConfig, TuneConfigError, read_config

METRICS_FILE = "metrics.json"
RESOLVED_FILE = "config.json"
BEST_DIR = "best_adapter"
TUNE_OUTPUT = OutputKind("mixlight tune")
# JAX pads each batch's rows up to a multiple of this many tokens: few distinct shapes (each
# compiles once) without padding every batch to the data's longest row.
BUCKET = 16


def demo_config(cfg: TuneConfig) -> DemoConfig:
    """The demo config the backend steps read (base checkpoint, token limits, threads)."""
    return DemoConfig(
        backend=cfg.backend,
        model_path=model_dir(cfg),
        out_dir=cfg.output_dir,
        max_input_tokens=cfg.max_input_tokens,
        max_target_tokens=cfg.max_target_tokens,
        eval_batch_size=cfg.eval_batch_size,
        progress=cfg.progress,
        threads=1,
        dropout=0.0,
        shares=False,
    )


def runtime(cfg: TuneConfig) -> Runtime:
    """Where the backend runs the model: devices, threads, precision, processes."""
    return Runtime(
        device=cfg.device,
        threads=cfg.threads,
        precision=cfg.precision,
        gradient_checkpointing=cfg.gradient_checkpointing,
        distributed=cfg.distributed,
        mesh=cfg.mesh,
        coordinator_address=cfg.coordinator_address,
        num_processes=cfg.num_processes,
        process_id=cfg.process_id,
    )


def settings(cfg: TuneConfig) -> TuneSettings:
    """The optimisation recipe: the same in both backends (dropout included: both T5s drop
    out at the config's ``dropout``, whatever the checkpoint's ``dropout_rate``). The base
    is tuned in place: a run holds one copy of it."""
    return TuneSettings(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        optimizer=cfg.optimizer,
        seed=cfg.seed,
        dropout=cfg.dropout,
        max_input_tokens=cfg.max_input_tokens,
        max_target_tokens=cfg.max_target_tokens,
        progress=cfg.progress,
        label=f"tune {'full' if cfg.adapter is None else cfg.adapter.method} ({cfg.backend})",
        resume=run_dir(cfg),
        grad_accum_steps=cfg.grad_accum_steps,
        lr_schedule=cfg.lr_schedule,
        warmup_steps=cfg.warmup_steps,
        max_grad_norm=cfg.max_grad_norm,
        packing=cfg.packing,
        in_place=True,
        bucket=BUCKET,
        eval_every=cfg.eval_every,
    )


def launch_rank(cfg: TuneConfig) -> int | None:
    """This process's rank as the launcher set it (``torchrun``'s ``RANK``; JAX:
    ``process_id`` or ``JAX_PROCESS_ID``); ``None`` when only ``jax.distributed`` will
    know (a cluster it detects)."""
    if cfg.backend == "torch":
        return int(os.environ.get("RANK", "0"))
    count = cfg.num_processes or int(os.environ.get("JAX_NUM_PROCESSES") or 1)
    if count < 2:
        return 0
    pid = cfg.process_id
    if pid is None and os.environ.get("JAX_PROCESS_ID"):
        pid = int(os.environ["JAX_PROCESS_ID"])
    return pid


def run_dir(cfg: TuneConfig) -> Resume:
    """Where the run saves its training state every ``checkpoint_every`` steps, and the
    config a saved state must match to be continued."""
    return Resume(cfg.output_dir, cfg.checkpoint_every, cfg.resolved())


def load_data(cfg: TuneConfig) -> tuple[Sequence[Example], list[Example]]:
    """``(train, eval)``: the ``mixture``'s draws (a :class:`Mixture`, read when indexed),
    else the ``data`` sources, else the built-in mixture; eval holds the rows with answer
    choices (rank classification) of ``eval_suite`` then ``eval_data`` (a source with none is
    refused), and is empty without either."""
    train: Sequence[Example]
    if cfg.mixture is not None:
        train = _mixture(cfg)
    elif cfg.data is None:
        train = build_suite(cfg.data_seed, cfg.builtin_per_task, 0).train
    else:
        train = _read(cfg.data, "data")
    if not train and cfg.mixture is None:
        raise TuneConfigError(f"data = {sources.resolved(cfg.data)}: no rows to train on")
    evals: list[Example] = []
    for key, source in eval_sources(cfg):
        scored = [e for e in _read((source,), key) if e.choices]
        if not scored:
            raise TuneConfigError(
                f"{key} = {source}: no rows with answer_choices to score (an eval set needs "
                "answer_choices or P3's _score_eval layout)"
            )
        evals += scored
    return train, evals


def _mixture(cfg: TuneConfig) -> Mixture:
    """The ``mixture``'s sources opened and its ``steps × batch_size`` draws planned."""
    try:
        total = cfg.steps * cfg.batch_size
        return open_mixture(cfg.mixture or (), cfg.mixture_cap, total, cfg.data_seed)
    except sources.SourceError as err:
        raise TuneConfigError(str(err)) from None


def eval_sources(cfg: TuneConfig) -> list[tuple[str, sources.DataSource]]:
    """``(key, source)`` of every evaluation source: ``eval_suite``'s, then ``eval_data``."""
    suite = () if cfg.eval_suite is None else cfg.eval_suite.sources()
    return [("eval_suite", s) for s in suite] + [("eval_data", s) for s in cfg.eval_data or ()]


def eval_columns(cfg: TuneConfig) -> dict[str, tuple[str, ...]]:
    """The report's grouped columns (``eval_suite``'s); other tasks are columns of their own."""
    return {} if cfg.eval_suite is None else cfg.eval_suite.columns()


def data_record(cfg: TuneConfig) -> DataRecord:
    """The sha256 of each training data source (a Hub dataset: its cached commit; none for
    the built-in mixture, which ``data_seed`` and ``builtin_per_task`` fix). ``eval_data`` is
    not recorded: it is scored afresh after training, so a resumed run may use a changed one."""
    feeds = [*(cfg.data or ()), *(e.source for e in cfg.mixture or ())]
    keys = {s: str(s.path) if s.hub_id is None else str(s) for s in feeds}
    return DataRecord(cfg.output_dir, {key: s.digest() for s, key in keys.items()})


def model_dir(cfg: TuneConfig) -> Path | None:
    """The local folder of ``model``: the folder itself, or the Hub id's snapshot (resolved
    once, :mod:`mixlight_tune.hub`)."""
    if isinstance(cfg.model, str):
        return hub.resolve_model(cfg.model, cfg.revision).folder
    return cfg.model


def check_output_dir(cfg: TuneConfig) -> None:
    """Refuse an ``output_dir`` that is one of the run's input folders or holds files
    ``mixlight tune`` did not write. Writes nothing."""
    inputs = [("model", cfg.model)] if isinstance(cfg.model, Path) else []
    for key in ("data", "eval_data"):
        inputs += [(key, path) for path in sources.local_paths(getattr(cfg, key))]
    mixed = [e.source for e in cfg.mixture or ()]
    inputs += [("mixture", path) for path in sources.local_paths(mixed)]
    for key, path in inputs:
        if path.is_dir() and _same_folder(path, cfg.output_dir):
            raise TuneConfigError(
                f"output_dir {cfg.output_dir} is the {key} folder; the run would write over "
                "its files: choose another output_dir"
            )
    TUNE_OUTPUT.check(cfg.output_dir, "output_dir")


def claim_output_dir(cfg: TuneConfig, resuming: bool, write: bool = True) -> DataRecord:
    """Before the base loads: refuse resuming on changed data, then (the writing process
    only) create and mark ``output_dir`` (failing here when it is not writable) and record
    the data's sha256."""
    record = data_record(cfg)
    if resuming:
        record.check()
    if write:
        _claim(cfg, record)
    return record


def _claim(cfg: TuneConfig, record: DataRecord) -> None:
    TUNE_OUTPUT.claim(cfg.output_dir, "output_dir")
    record.write()


def _same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _read(data: Sequence[sources.DataSource], key: str) -> list[Example]:
    try:
        return sources.read_all(data, key)
    except sources.SourceError as err:
        raise TuneConfigError(str(err)) from None


def _check_model(cfg: TuneConfig) -> None:
    try:
        folder = model_dir(cfg)
    except hub.HubError as err:
        raise TuneConfigError(str(err)) from None
    if folder is not None:
        try:
            check_model_dir(folder, causal_ok=cfg.backend == "torch")
        except DemoError as err:
            raise TuneConfigError(str(err).replace("--model", "model =", 1)) from None


def tokenised(cfg: TuneConfig, base: Any, train: Sequence[Example], writer: bool) -> Sequence[Pair]:
    """The training rows as ids, tokenised once per data, tokenizer and limits
    (:mod:`mixlight_tune.token_cache`); a mixture's once per source, read when indexed."""
    if isinstance(train, Mixture):
        bounds = (cfg.max_input_tokens, cfg.max_target_tokens)
        cache = cfg.output_dir / TOKENS_DIR
        try:
            return train.pairs(base.codec, Path(base.path), bounds, cache, writer)
        except sources.SourceError as err:
            raise TuneConfigError(str(err)) from None
    data: dict[str, Any] = {"builtin": [cfg.data_seed, cfg.builtin_per_task]}
    if cfg.data is not None:  # one plain file or folder keeps the key it always had
        digests = [s.digest() for s in cfg.data]
        plain = isinstance(sources.resolved(cfg.data), str)
        data = {"sha256": digests[0]}
        if not plain:
            data = {"sources": sources.resolved(cfg.data), "sha256": digests}
    limits = (cfg.max_input_tokens, cfg.max_target_tokens)
    key = cache_key(data, Path(base.path), limits)

    def tokenize() -> list[Pair]:
        return [base.codec.pair(e.inputs, e.targets, *limits) for e in train]

    return cached_pairs(cfg.output_dir / TOKENS_FILE, key, tokenize, writer)[0]


class Scorer:
    """Scores ``eval_data`` during training (the loop's evaluator): the average-median
    accuracy of each evaluation, and with ``keep_best`` the best adapter so far written to
    ``output_dir/best_adapter`` (every process calls it; process 0 writes)."""

    def __init__(
        self,
        cfg: TuneConfig,
        steps: BackendSteps,
        base: Any,
        evals: list[Example],
        demo: DemoConfig,
        journal: Journal,
    ) -> None:
        self.cfg, self.steps, self.base, self.evals, self.demo = cfg, steps, base, evals, demo
        self.journal = journal
        self.last: tuple[int, dict[str, Any]] | None = None

    def scores(self, model: Any) -> dict[str, Any]:
        """The paper's scores (:func:`~mixlight_tune.report.eval_scores`): per task and
        template, per report column, the average, and each source's accuracy."""
        correct, _routing = self.steps.evaluate(model, self.base, self.evals, self.demo)
        return eval_scores(self.evals, correct, eval_columns(self.cfg))

    def __call__(self, model: Any, step: int) -> float:
        table = self.scores(model)
        self.last = (step, table)
        average = float(table["average"])
        best = self.journal.best
        if self.cfg.keep_best and (best is None or average > best["eval_average"]):
            self.steps.save(model, self.cfg.output_dir / BEST_DIR)
            self.journal.best = {"step": step, "eval_average": average}
        return average


def run(cfg: TuneConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Tune, save the adapter, score ``eval_data``; write and return the metrics. In a
    parallel run every process calls it (the same config); process 0 writes and logs."""
    check_output_dir(cfg)
    _check_model(cfg)
    check_available(cfg.log)
    train, evals = load_data(cfg)
    steps = load_steps(cfg.backend)
    saved = run_dir(cfg).load()  # refuses a run directory of another config before loading
    rank = launch_rank(cfg)
    record = claim_output_dir(cfg, resuming=saved is not None, write=rank == 0)
    demo = demo_config(cfg)
    base = prepare_base(steps, demo, "model =", runtime(cfg))
    snapshot = hub.resolve_model(cfg.model, cfg.revision) if isinstance(cfg.model, str) else None
    if snapshot is not None:  # the adapter's base record names the Hub id and commit
        hub.name_model(base.model, snapshot)
    parallel = base.parallel
    if rank is None and parallel.writer:
        _claim(cfg, record)
    if not parallel.writer:
        log = _silent
    pairs = tokenised(cfg, base, train, parallel.writer)
    if isinstance(train, Mixture):
        log(train.describe())
    log(
        f"base: {base.description}; {len(train)} training examples; backend {cfg.backend}; "
        f"{parallel.processes} process(es), {parallel.devices} device(s) ({parallel.device}, "
        f"{parallel.layout})"
    )
    for note in [*parallel.notes, *config_notes(cfg)]:
        log(f"note: {note}")
    if saved is not None:
        log(f"resuming {cfg.output_dir} from step {saved.step} of {cfg.steps}")
    config = json.loads((Path(base.path) / "config.json").read_text(encoding="utf-8"))
    journal = Journal(row_flops=row_flops(config, full=cfg.adapter is None))
    scorer = Scorer(cfg, steps, base, evals, demo, journal) if evals and cfg.eval_every else None
    logger, close_logs = (None, _nothing)
    if parallel.writer:
        logger, close_logs = open_logs(cfg.log, cfg.output_dir, cfg.resolved())
    tune_settings = dataclasses.replace(
        settings(cfg), pairs=pairs, journal=journal, evaluator=scorer, logger=logger
    )
    start = time.perf_counter()
    try:
        model, losses = steps.tune(base, cfg.adapter, train, tune_settings)
    finally:
        close_logs()
    seconds = time.perf_counter() - start
    parallel = base.parallel  # placement may have added notes
    adapter_dir = steps.save(model, cfg.output_dir / "adapter")
    model_dir_out = None  # full fine-tuning saves the whole model (mixlight_tune.full_model)
    if cfg.adapter is None and cfg.steps > 0:
        model_dir_out = full_model.save(cfg.backend, model, base, cfg.output_dir)
    scores = None
    if evals:
        if scorer is not None and scorer.last is not None and scorer.last[0] == cfg.steps:
            scores = scorer.last[1]
        else:
            scores = Scorer(cfg, steps, base, evals, demo, journal).scores(model)
    best = None
    if journal.best is not None:
        best = journal.best | {"adapter": str(cfg.output_dir / BEST_DIR)}
    metrics = {
        "config": cfg.resolved(),
        "base": base.description,
        "trainable_percent": steps.trainable_percent(model),
        "losses": losses,
        "train_seconds": round(seconds, 2),
        "tokens_per_second": journal.tokens_per_second,
        **throughput(journal, steps.device_name(base), cfg.precision, parallel.devices),
        "parallel": parallel.record(),
        "eval": scores,
        "eval_history": journal.evals,
        "best": best,
        "adapter": None if adapter_dir is None else str(adapter_dir),
        "model": None if model_dir_out is None else str(model_dir_out),
        "data_sha256": dict(record.digests),
        "mixture": train.record() if isinstance(train, Mixture) else None,
    }
    if snapshot is not None:
        metrics["hub_model"] = {
            "id": snapshot.repo_id,
            "revision": cfg.revision,
            "commit": snapshot.commit,
            "folder": str(snapshot.folder),
        }
    peak = getattr(steps, "peak_memory", None)
    if peak is not None:
        metrics["peak_memory_bytes"] = peak(base)
    if parallel.writer:
        atomic_write(cfg.output_dir / RESOLVED_FILE, json.dumps(cfg.resolved(), indent=2) + "\n")
        atomic_write(cfg.output_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
        if scores is not None:  # results.md + results.json: the paper's table, one row
            results.write(cfg.output_dir, [results.run_row(metrics, cfg.output_dir.name)])
    final = f"final loss {losses[-1]:.4f}" if losses else "no steps"
    accuracy = "" if scores is None else f", eval accuracy {100 * scores['average']:.1f}%"
    speed = (
        "" if journal.tokens_per_second is None else f", {journal.tokens_per_second:,.0f} tokens/s"
    )
    saved_as = "adapter" if model_dir_out is None else f"{full_model.DIR}/"
    log(f"{final}{accuracy}{speed}; {saved_as} and {METRICS_FILE} in {cfg.output_dir}")
    return metrics


def throughput(
    journal: Journal, device: str | None, precision: str, devices: int
) -> dict[str, float | None]:
    """``metrics.json``'s model TFLOP/s (the whole job's) and MFU (``None`` where the
    device's peak is unknown: a CPU, a GPU not in ``flops.PEAK_TFLOPS``)."""
    rate = journal.flops_per_second
    if rate is None:
        return {"model_tflops_per_second": None, "mfu": None}
    mfu = utilisation(rate, device, precision, devices)
    return {
        "model_tflops_per_second": round(rate / 1e12, 6),
        "mfu": None if mfu is None else round(mfu, 4),
    }


def _silent(_: str) -> None:
    pass


def _nothing() -> None:
    pass


def dry_run(
    cfg: TuneConfig, log: Callable[[str], None] = print, processes: int | None = None
) -> dict[str, Any]:
    """Validate everything, load the base and inject the adapter; train and write nothing.
    Returns the resolved config with the trainable share, the parallel layout and the
    estimated peak memory per device (:mod:`mixlight_tune.memory`), for ``processes``
    data-parallel processes when given (the intended layout; default: this launch's).

    A ``model`` folder holding only a ``config.json`` (no weights, no tokenizer) is enough,
    and a Hub model id is read as its ``config.json`` alone (:mod:`.model_shapes`): the
    model is built on the meta device (torch) and the estimate taken at the
    ``max_input_tokens``/``max_target_tokens`` limits, without reading the data."""
    check_output_dir(cfg)
    if processes is not None and processes < 1:
        raise TuneConfigError(f"--processes must be at least 1, got {processes}")
    if isinstance(cfg.model, str):  # a Hub id: its config.json, never its weights
        folder = model_shapes.hub_config_folder(cfg.model, cfg.revision)
        return _shapes_dry_run(cfg, folder, log, processes)
    if cfg.model is not None and model_shapes.config_only(cfg.model):
        return _shapes_dry_run(cfg, cfg.model, log, processes)
    _check_model(cfg)
    check_available(cfg.log)
    train, _ = load_data(cfg)
    steps = load_steps(cfg.backend)
    base = prepare_base(steps, demo_config(cfg), "model =", runtime(cfg))
    zero = dataclasses.replace(settings(cfg), steps=0, resume=None)
    model, _ = steps.tune(base, cfg.adapter, train[:1], zero)
    parallel = base.parallel
    percent = steps.trainable_percent(model)
    resolved = cfg.resolved() | {"trainable_percent": percent, "parallel": parallel.record()}
    source, target = cfg.max_input_tokens, cfg.max_target_tokens  # a mixture's: the limits
    if not isinstance(train, Mixture):  # (its draws are read when trained on)
        pairs = [base.codec.pair(e.inputs, e.targets, None, None) for e in train]
        source = min(max(len(p[0]) for p in pairs), source)
        target = min(max(len(p[1]) for p in pairs), target)
    if cfg.backend == "jax":
        source = min(-(-source // BUCKET) * BUCKET, cfg.max_input_tokens)
        target = min(-(-target // BUCKET) * BUCKET, cfg.max_target_tokens)
    layout = Layout(parallel.processes, parallel.data, parallel.model, parallel.layout == "fsdp")
    if processes is not None:
        layout = model_shapes.intended_layout(cfg, processes)
    memory = _estimate(cfg, steps.memory_inputs(model), layout, source, target, resolved)
    if parallel.writer:
        log(json.dumps(resolved, indent=2))
        print(format_estimate(memory, percent), file=sys.stderr)  # beside the parseable JSON
        for note in config_notes(cfg):
            print(f"note: {note}", file=sys.stderr)
    return resolved


def config_notes(cfg: TuneConfig) -> list[str]:
    """Warnings about a config that runs but may not do what it means."""
    if cfg.adapter is None and cfg.precision == "bf16":
        return [
            'adapter = "full" with precision = "bf16" trains bfloat16 weights: an optimiser '
            "step smaller than a weight's rounding step (2^-8 of it; Adafactor's steps are "
            'about lr times its size) is lost; precision = "fp32" trains them in float32'
        ]
    return []


def _estimate(
    cfg: TuneConfig,
    inputs: dict[str, Any],
    layout: Layout,
    source: int,
    target: int,
    resolved: dict[str, Any],
) -> dict[str, int]:
    """:func:`memory.estimate` for ``cfg``, recorded in ``resolved`` (MiB)."""
    memory = estimate(
        inputs,
        optimizer=cfg.optimizer,
        precision=cfg.precision,
        micro_batch=cfg.batch_size // cfg.grad_accum_steps,
        source=source,
        target=target,
        checkpointing=cfg.gradient_checkpointing,
        layout=layout,
    )
    resolved["memory_per_device_mib"] = {k: round(v / MIB, 1) for k, v in memory.items()}
    resolved["memory_lengths"] = {"source": source, "target": target}
    resolved["memory_layout"] = dataclasses.asdict(layout)
    return memory


def _shapes_dry_run(
    cfg: TuneConfig, folder: Path, log: Callable[[str], None], processes: int | None
) -> dict[str, Any]:
    """The dry run of a model's ``config.json`` alone (see :func:`dry_run`), for either
    backend: the model is built on torch's meta device (the same shapes JAX's T5 has)."""
    try:
        from .frameworks import torch_meta
        from .frameworks import torch_steps as steps
    except ImportError:
        raise TuneConfigError(
            f"a dry run without the weights of {cfg.model} builds the model from its "
            "config.json on torch's meta device, and torch (with transformers) is not "
            "installed: pip install 'mixlight[torch,t5]', or give a model folder with weights"
        ) from None
    model = torch_meta.shape_model(folder, cfg.adapter, cfg.precision)
    percent = steps.trainable_percent(model)
    layout = model_shapes.intended_layout(cfg, processes)
    resolved = cfg.resolved() | {"trainable_percent": percent, "shapes_only": True}
    source, target = cfg.max_input_tokens, cfg.max_target_tokens
    memory = _estimate(cfg, steps.memory_inputs(model), layout, source, target, resolved)
    log(json.dumps(resolved, indent=2))
    print(format_estimate(memory, percent), file=sys.stderr)
    for note in config_notes(cfg):
        print(f"note: {note}", file=sys.stderr)
    return resolved


def main(argv: Sequence[str] | None = None) -> int:
    """``mixlight tune CONFIG`` (or ``mixlight tune report RUN_DIR...``, :mod:`results`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        return results.main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="mixlight tune",
        description=(__doc__ or "").splitlines()[0],
        epilog="mixlight tune report RUN_DIR... [--out FILE] joins finished runs' results into "
        "one table (docs/tune.md)",
    )
    parser.add_argument("config", type=Path, help="a .toml or .json file (see docs/tune.md)")
    parser.add_argument("--backend", help='override the config\'s backend ("torch" or "jax")')
    parser.add_argument(
        "--output-dir", type=Path, help="override the config's output_dir (relative: to here)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key of the config (repeatable; adapter.num_experts=2 sets a key "
        "of [adapter]; values as in TOML)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config, the trainable share and the estimated peak memory "
        "per device; train nothing",
    )
    parser.add_argument(
        "--processes",
        type=int,
        help="with --dry-run: estimate the memory per device for this many data-parallel "
        "processes (the intended launch; a JAX config's mesh sets its own axes) instead of "
        "this one",
    )
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {} if args.backend is None else {"backend": args.backend}
    if args.output_dir is not None:
        overrides["output_dir"] = str(args.output_dir.resolve())
    try:
        cfg = read_config(args.config, args.set, **overrides)
        if args.dry_run:
            dry_run(cfg, processes=args.processes)
        else:
            run(cfg)
    except (DemoError, AdapterFileError, OSError) as err:
        print(f"mixlight tune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nmixlight tune: interrupted; the same command resumes the run from its last "
            "checkpoint (saved every checkpoint_every steps)",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    from mixlight._torch_group import end_launched_process

    sys.exit(end_launched_process(main()))
