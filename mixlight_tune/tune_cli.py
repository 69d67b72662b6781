"""``mixlight tune CONFIG``: one tuning experiment from a config file, in either backend.

The run stands on the demo's pipeline: the backend's :class:`~mixlight_tune.steps.BackendSteps`
(``prepare``, ``tune``, ``evaluate``, ``save``), :class:`~mixlight_tune.steps.TuneSettings`
and :func:`~mixlight_tune.report.score_table`. What it writes to ``output_dir`` is the same
for both backends: ``adapter/`` (the portable adapter format), ``metrics.json`` (the
resolved config, the loss of every step, the trainable share and the eval scores) and
``config.json`` (the resolved config, which ``mixlight tune`` accepts back, from any folder).

``output_dir`` is refused before anything loads when it holds files ``mixlight tune`` did not
write (:data:`TUNE_OUTPUT`), and claimed (created, marked) before the base loads; the sha256
of the training data is recorded there, and a resumed run on changed data is refused
(:class:`~mixlight_tune.checkpoint.DataRecord`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mixlight import AdapterFileError

from ._files import atomic_write, sha256_of
from .checkpoint import DATA_FILE, DataRecord, Resume
from .checkpoint import FILE as CHECKPOINT_FILE
from .data_files import load_examples
from .experiment import DemoConfig, check_t5_dir, prepare_base
from .miniature.suite import build_suite
from .output_dirs import OutputKind
from .report import score_table
from .schema import Example
from .steps import DemoError, TuneSettings, load_steps
from .tune_config import TuneConfig, TuneConfigError, read_config

METRICS_FILE = "metrics.json"
RESOLVED_FILE = "config.json"
TUNE_OUTPUT = OutputKind(
    "mixlight tune",
    names=("adapter", METRICS_FILE, RESOLVED_FILE, CHECKPOINT_FILE, DATA_FILE),
    results=(METRICS_FILE, CHECKPOINT_FILE),
)


def demo_config(cfg: TuneConfig) -> DemoConfig:
    """The demo config the backend steps read (base checkpoint, token limits, threads)."""
    return DemoConfig(
        backend=cfg.backend,
        model_path=cfg.model,
        out_dir=cfg.output_dir,
        max_input_tokens=cfg.max_input_tokens,
        max_target_tokens=cfg.max_target_tokens,
        eval_batch_size=cfg.eval_batch_size,
        progress=cfg.progress,
        threads=1,
        dropout=0.0,
        shares=False,
    )


def settings(cfg: TuneConfig) -> TuneSettings:
    """The optimisation recipe. Dropout is off: the JAX T5 has none, and the two backends
    must run the same experiment."""
    return TuneSettings(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        optimizer=cfg.optimizer,
        seed=cfg.seed,
        dropout=0.0,
        max_input_tokens=cfg.max_input_tokens,
        max_target_tokens=cfg.max_target_tokens,
        progress=cfg.progress,
        label=f"tune {cfg.adapter.method} ({cfg.backend})",
        resume=run_dir(cfg),
    )


def run_dir(cfg: TuneConfig) -> Resume:
    """Where the run saves its training state every ``checkpoint_every`` steps, and the
    config a saved state must match to be continued."""
    return Resume(cfg.output_dir, cfg.checkpoint_every, cfg.resolved())


def load_data(cfg: TuneConfig) -> tuple[list[Example], list[Example]]:
    """``(train, eval)``: the JSONL files, else the built-in mixture; eval keeps only rows
    with ``answer_choices`` (rank classification) and is empty without ``eval_data``."""
    if cfg.data is None:
        train = build_suite(cfg.data_seed, cfg.builtin_per_task, 0).train
    else:
        train = _read(cfg.data, "data")
    if not train:
        raise TuneConfigError(f"data = {cfg.data}: no rows to train on")
    evals: list[Example] = []
    if cfg.eval_data is not None:
        evals = [e for e in _read(cfg.eval_data, "eval_data") if e.choices]
        if not evals:
            raise TuneConfigError(
                f"eval_data = {cfg.eval_data}: no rows with answer_choices to score"
            )
    return train, evals


def data_record(cfg: TuneConfig) -> DataRecord:
    """The sha256 of the training data file (none for the built-in mixture, which
    ``data_seed`` and ``builtin_per_task`` fix). ``eval_data`` is not recorded: it is scored
    afresh after training, so a resumed run may use a changed one."""
    files = [] if cfg.data is None else [cfg.data]
    return DataRecord(cfg.output_dir, {str(path): sha256_of(path) for path in files})


def check_output_dir(cfg: TuneConfig) -> None:
    """Refuse an ``output_dir`` that is one of the run's input folders or holds files
    ``mixlight tune`` did not write. Writes nothing."""
    for key in ("model", "data", "eval_data"):
        path = getattr(cfg, key)
        if path is not None and path.is_dir() and _same_folder(path, cfg.output_dir):
            raise TuneConfigError(
                f"output_dir {cfg.output_dir} is the {key} folder; the run would write over "
                "its files: choose another output_dir"
            )
    TUNE_OUTPUT.check(cfg.output_dir, "output_dir")


def claim_output_dir(cfg: TuneConfig, resuming: bool) -> DataRecord:
    """Before the base loads: refuse resuming on changed data, then create and mark
    ``output_dir`` (failing here when it is not writable) and record the data's sha256."""
    record = data_record(cfg)
    if resuming:
        record.check()
    TUNE_OUTPUT.claim(cfg.output_dir, "output_dir")
    record.write()
    return record


def _same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _read(path: Path, key: str) -> list[Example]:
    try:
        return load_examples(path)
    except (ValueError, OSError, ImportError) as err:
        raise TuneConfigError(f"{key}: {err}") from None


def _check_model(cfg: TuneConfig) -> None:
    if cfg.model is not None:
        try:
            check_t5_dir(cfg.model)
        except DemoError as err:
            raise TuneConfigError(str(err).replace("--model", "model =", 1)) from None


def run(cfg: TuneConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Tune, save the adapter, score ``eval_data``; write and return the metrics."""
    check_output_dir(cfg)
    _check_model(cfg)
    train, evals = load_data(cfg)
    steps = load_steps(cfg.backend)
    saved = run_dir(cfg).load()  # refuses a run directory of another config before loading
    record = claim_output_dir(cfg, resuming=saved is not None)
    demo = demo_config(cfg)
    base = prepare_base(steps, demo, "model =")
    log(f"base: {base.description}; {len(train)} training examples; backend {cfg.backend}")
    if saved is not None:
        log(f"resuming {cfg.output_dir} from step {saved.step} of {cfg.steps}")
    start = time.perf_counter()
    model, losses = steps.tune(base, cfg.adapter, train, settings(cfg))
    seconds = time.perf_counter() - start
    adapter_dir = steps.save(model, cfg.output_dir / "adapter")
    scores = None
    if evals:
        correct, _routing = steps.evaluate(model, base, evals, demo)
        scores = score_table((e.task, e.template, c) for e, c in zip(evals, correct, strict=True))
    metrics = {
        "config": cfg.resolved(),
        "base": base.description,
        "trainable_percent": steps.trainable_percent(model),
        "losses": losses,
        "train_seconds": round(seconds, 2),
        "eval": scores,
        "adapter": None if adapter_dir is None else str(adapter_dir),
        "data_sha256": dict(record.digests),
    }
    atomic_write(cfg.output_dir / RESOLVED_FILE, json.dumps(cfg.resolved(), indent=2) + "\n")
    atomic_write(cfg.output_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    final = f"final loss {losses[-1]:.4f}" if losses else "no steps"
    accuracy = "" if scores is None else f", eval accuracy {100 * scores['average']:.1f}%"
    log(f"{final}{accuracy}; adapter and {METRICS_FILE} in {cfg.output_dir}")
    return metrics


def dry_run(cfg: TuneConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Validate everything, load the base and inject the adapter; train and write nothing.
    Returns the resolved config with the trainable share."""
    check_output_dir(cfg)
    _check_model(cfg)
    train, _ = load_data(cfg)
    steps = load_steps(cfg.backend)
    base = prepare_base(steps, demo_config(cfg), "model =")
    zero = dataclasses.replace(settings(cfg), steps=0, resume=None)
    model, _ = steps.tune(base, cfg.adapter, train[:1], zero)
    resolved = cfg.resolved() | {"trainable_percent": steps.trainable_percent(model)}
    log(json.dumps(resolved, indent=2))
    return resolved


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mixlight tune", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("config", type=Path, help="a .toml or .json file (see docs/tune.md)")
    parser.add_argument("--backend", help='override the config\'s backend ("torch" or "jax")')
    parser.add_argument(
        "--output-dir", type=Path, help="override the config's output_dir (relative: to here)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config and the trainable share; train nothing",
    )
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {} if args.backend is None else {"backend": args.backend}
    if args.output_dir is not None:
        overrides["output_dir"] = str(args.output_dir.resolve())
    try:
        cfg = read_config(args.config, **overrides)
        if args.dry_run:
            dry_run(cfg)
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
    sys.exit(main())
