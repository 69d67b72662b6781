"""The demo's orchestration, backend-neutral: config, methods table, seeds loop, outputs.

The paper in miniature (paper.md §4–5): pre-train a tiny T5 v1.1 (span corruption mixed with
prefix LM), tune it on the suite's training mixture with each method (same steps, data order
and seed), score the held-out tasks zero-shot by rank classification, and report Table 1
(median over templates per task, mean over tasks, mean ± std over seeds) with plots.

Framework code lives in a backend module ``mixlight_<backend>.instruct``, imported by name
only when a run starts (this module never imports torch or JAX). Its interface:

``prepare(cfg: DemoConfig) -> Base``
    Build or load the base model: ``cfg.model_path`` when set, else the built-in tiny T5
    pre-trained on :func:`pretraining_data` and cached under ``cfg.cache_dir /
    base_cache_name(cfg)``. ``Base`` is backend-defined; the demo only passes it back and
    reads ``base.description`` (str) and ``base.path`` (the checkpoint directory).
``tune(base, adapter: AdapterConfig | None, examples, settings: TuneSettings)``
    ``-> (model, loss of every step)``: a fresh copy of the base, injected with ``adapter``
    (``None``: full fine-tuning), trained on ``examples`` (``inputs`` -> ``targets``) for
    ``settings.steps`` steps in the order ``settings.seed`` fixes.
``evaluate(model, base, examples, cfg) -> (correct: list[bool], routing)``
    Rank classification of every example (each has ``choices``); ``routing`` maps a site
    path to ``{task: mean routing probability per expert}`` (empty when nothing routes).
``trainable_percent(model) -> float`` and ``save(model, directory) -> Path | None``
    (``None`` when the method saves nothing, as for full fine-tuning).

A missing ``mixlight_<backend>.instruct`` is reported as "the <backend> demo backend is not
available yet", before anything trains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import mixlight as ml

from ._files import atomic_write
from .miniature.corpus import pretraining_corpus
from .data_files import load_examples
from .report import aggregate_seeds, format_table, score_table, write_results
from .schema import Example
from .miniature.suite import build_suite


class DemoError(ValueError):
    """Bad demo input, reported before any training starts."""


@dataclass(frozen=True)
class Method:
    """A row of the table: display label, learning-rate family, adapter config factory
    (``None``: every base parameter trains; ``family == "none"``: nothing trains)."""

    label: str
    family: str
    make: Callable[[], ml.AdapterConfig] | None = None


METHODS: dict[str, Method] = {
    "full": Method("Full FT", "full"),
    "ia3": Method("(IA)³", "vectors", ml.IA3),
    "lora": Method("LoRA r=4", "low_rank", lambda: ml.LoRA(rank=4)),
    "mov": Method("MoV-10", "vectors", lambda: ml.MoV(10)),
    "molora": Method("MoLoRA-10 r=4", "low_rank", lambda: ml.MoLoRA(10, rank=4)),
    "mov30": Method("MoV-30", "vectors", lambda: ml.MoV(30)),
    "lora8": Method("LoRA r=8", "low_rank", lambda: ml.LoRA(rank=8)),
    "molora15": Method("MoLoRA-15 r=4", "low_rank", lambda: ml.MoLoRA(15, rank=4)),
    "base": Method("No tuning", "none"),
}
DEFAULT_METHODS = ("full", "ia3", "lora", "mov", "molora")

# Constant learning rates per optimiser and method family, chosen once from a held-in pilot
# (300 steps, loss and rank accuracy on unseen items of the *training* tasks; never a held-out
# number): Adafactor full FT {1e-3, 1e-2, 3e-2, 1e-1} -> 3e-2, MoV and LoRA {1e-2, 3e-2, 1e-1,
# 3e-1} -> 1e-1. With ``scale_parameter`` the lr is a step relative to each parameter's RMS
# (paper.md §4.2); the paper's 3e-4 / 1e-3 assume 500K / 10K steps, not a few hundred.
# AdamW rates are single pilot points, not swept. See docs/demo/README.md.
LEARNING_RATES: dict[str, dict[str, float]] = {
    "adafactor": {"full": 3e-2, "vectors": 1e-1, "low_rank": 1e-1, "none": 0.0},
    "adamw": {"full": 1e-3, "vectors": 1e-2, "low_rank": 3e-3, "none": 0.0},
}
BACKENDS = ("torch", "jax")


@dataclass(frozen=True)
class BaseSpec:
    """The built-in tiny T5 v1.1 (gated-gelu) and its pre-training: span corruption mixed
    with a ``prefix_lm`` share of prefix-LM examples (T5's "LM adaptation", which the
    paper's backbones had), on ``chunk_tokens``-long pieces of the demo corpus."""

    d_model: int = 64
    d_kv: int = 16
    num_heads: int = 4
    d_ff: int = 128
    num_layers: int = 3
    vocab_size: int = 512
    corpus_sentences: int = 20_000
    chunk_tokens: int = 48
    prefix_lm: float = 0.5
    pretrain_steps: int = 1500
    pretrain_batch_size: int = 32
    pretrain_lr: float = 1e-2
    seed: int = 0


@dataclass(frozen=True)
class TuneSettings:
    """What ``tune`` needs besides the data: one method's optimisation recipe."""

    steps: int
    batch_size: int
    lr: float
    optimizer: str
    seed: int
    dropout: float
    max_input_tokens: int
    max_target_tokens: int
    progress: bool
    label: str


@dataclass(frozen=True)
class DemoConfig:
    """Everything one ``mixlight demo`` run depends on."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    seeds: int = 1
    steps: int = 600
    batch_size: int = 32
    optimizer: str = "adafactor"
    lr: float | None = None
    dropout: float = 0.1
    out_dir: Path = Path("runs/demo")
    cache_dir: Path = Path("runs/cache")
    model_path: Path | None = None
    data_path: Path | None = None
    eval_data_path: Path | None = None
    backend: str = "torch"
    base: BaseSpec = field(default_factory=BaseSpec)
    data_seed: int = 0
    train_per_task: int = 200
    eval_per_template: int = 50
    max_input_tokens: int = 256
    max_target_tokens: int = 64
    eval_batch_size: int = 32
    threads: int = 2
    progress: bool = True

    def lr_for(self, method: str) -> float:
        """``--lr`` when given, else the table's rate for the method's family."""
        if self.lr is not None:
            return self.lr
        return LEARNING_RATES[self.optimizer][METHODS[method].family]


QUICK = DemoConfig(
    steps=40,
    batch_size=16,
    base=BaseSpec(
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        vocab_size=256,
        corpus_sentences=2000,
        pretrain_steps=100,
        pretrain_batch_size=16,
    ),
    train_per_task=20,
    eval_per_template=4,
    # One thread: at this size a second brings nothing, and on a busy 2-core machine OpenMP
    # barriers made full-parameter steps ~20x slower (pre-training 101 s vs 4 s).
    threads=1,
)


@dataclass
class Plan:
    """A validated run: the backend module and the data, ready before training starts."""

    backend: ModuleType
    train: list[Example]
    eval: list[Example]
    held_out: bool


def _check_methods(methods: Sequence[str]) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise DemoError(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; valid: {', '.join(METHODS)}"
        )


def _check_writable(directory: Path, what: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise DemoError(f"{what} {directory} is not writable: {err.strerror or err}") from None


def check_t5_dir(path: Path) -> None:
    """``path`` is a directory holding a T5 ``config.json`` and a tokenizer, else DemoError."""
    config = path / "config.json"
    if not path.is_dir():
        raise DemoError(f"--model {path}: no such directory")
    if not config.is_file():
        raise DemoError(f"--model {path}: no config.json (expected a Hugging Face T5 checkpoint)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as err:
        raise DemoError(f"--model {path}: config.json is not a JSON object ({err})") from None
    if model_type != "t5":
        raise DemoError(f"--model {path}: model_type is {model_type!r}, the demo needs 't5'")
    if not any((path / n).is_file() for n in ("spiece.model", "tokenizer.json")):
        raise DemoError(f"--model {path}: no tokenizer (spiece.model or tokenizer.json) there")


def load_backend(name: str) -> ModuleType:
    """Import ``mixlight_<name>.instruct``, turning a missing module into a clear DemoError."""
    if name not in BACKENDS:
        raise DemoError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    module = f"mixlight_tune.backends.{name}_steps"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name in (module, f"mixlight_{name}"):
            raise DemoError(f"the {name} demo backend is not available yet ({module})") from None
        raise DemoError(f"the {name} demo backend needs {err.name!r}: {err}") from None


def _load_data(cfg: DemoConfig) -> tuple[list[Example], list[Example], bool]:
    """``(train, eval, eval_is_held_out)`` from the suite or the user's files."""
    if cfg.data_path is None:
        suite = build_suite(cfg.data_seed, cfg.train_per_task, cfg.eval_per_template)
        return suite.train, suite.eval, True
    try:
        train = load_examples(cfg.data_path)
        evals = load_examples(cfg.eval_data_path) if cfg.eval_data_path else train
    except (ValueError, FileNotFoundError) as err:
        raise DemoError(str(err)) from None
    evals = [e for e in evals if e.choices]
    if not train:
        raise DemoError(f"{cfg.data_path}: no rows to train on")
    if not evals:
        raise DemoError("no rows with answer_choices to evaluate on")
    return train, evals, cfg.eval_data_path is not None


def validate(cfg: DemoConfig) -> Plan:
    """Check every input that could fail later, before anything trains."""
    _check_methods(cfg.methods)
    for name, value in (("--steps", cfg.steps), ("--seeds", cfg.seeds)):
        if value < 1:
            raise DemoError(f"{name} must be at least 1, got {value}")
    if cfg.batch_size < 1 or (cfg.lr is not None and cfg.lr <= 0):
        raise DemoError("--batch-size must be at least 1 and --lr positive")
    if cfg.optimizer not in LEARNING_RATES:
        raise DemoError(f"unknown optimizer {cfg.optimizer!r}; valid: {', '.join(LEARNING_RATES)}")
    if cfg.eval_data_path is not None and cfg.data_path is None:
        raise DemoError("--eval-data needs --data")
    if cfg.model_path is not None:
        check_t5_dir(cfg.model_path)
    train, evals, held_out = _load_data(cfg)
    _check_writable(cfg.out_dir, "output directory")
    if cfg.model_path is None:
        _check_writable(cfg.cache_dir, "cache directory")
    return Plan(load_backend(cfg.backend), train, evals, held_out)


def pretraining_data(cfg: DemoConfig) -> tuple[list[str], list[str]]:
    """``(corpus sentences, tokenizer training texts)`` for the built-in base model."""
    corpus = pretraining_corpus(cfg.base.seed, cfg.base.corpus_sentences)
    suite = build_suite(cfg.data_seed, cfg.train_per_task, 0)
    return corpus, corpus + [t for e in suite.train for t in (e.inputs, e.targets)]


def base_cache_name(cfg: DemoConfig) -> str:
    """``base-<hash>``: changes whenever anything the cached base depends on changes."""
    key = {
        "format": 1,
        "base": dataclasses.asdict(cfg.base),
        "tokenizer_data": [cfg.data_seed, cfg.train_per_task],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return f"base-{digest[:12]}"


def _settings(cfg: DemoConfig, method: str, seed: int) -> TuneSettings:
    none = METHODS[method].family == "none"
    return TuneSettings(
        steps=0 if none else cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr_for(method),
        optimizer=cfg.optimizer,
        seed=seed,
        dropout=cfg.dropout,
        max_input_tokens=cfg.max_input_tokens,
        max_target_tokens=cfg.max_target_tokens,
        progress=cfg.progress,
        label=f"tune {method} (seed {seed})",
    )


class Outputs:
    """Results collected so far and the files under ``out_dir``, rewritten after every run
    so an interrupted demo keeps everything it finished."""

    def __init__(self, cfg: DemoConfig, base_description: str) -> None:
        self.cfg = cfg
        self.out = cfg.out_dir
        self.per_seed: list[dict[str, Any]] = []
        self.info: dict[str, dict[str, Any]] = {}
        self.routing: dict[str, dict[str, dict[str, list[float]]]] = {}
        self.base_description = base_description

    def add(self, seed_index: int, method: str, table: dict[str, Any], run: RunRecord) -> None:
        """Record one (seed, method) run and rewrite every output file."""
        while len(self.per_seed) <= seed_index:
            self.per_seed.append({})
        self.per_seed[seed_index][method] = table
        info = self.info.setdefault(
            method,
            {
                "label": METHODS[method].label,
                "trainable_percent": run.trainable_percent,
                "lr": run.settings.lr,
                "optimizer": run.settings.optimizer,
                "steps": run.settings.steps,
                "batch_size": run.settings.batch_size,
                "runs": [],
            },
        )
        info["runs"].append(run.summary())
        if run.routing and method not in self.routing:  # experts do not align across seeds
            self.routing[method] = run.routing
        self.write()

    def aggregated(self) -> dict[str, Any]:
        """``aggregate_seeds`` over the runs so far, in the configured method order."""
        agg = aggregate_seeds([s for s in self.per_seed if s])
        return {m: agg[m] for m in self.cfg.methods if m in agg}

    def write(self) -> None:
        """results.json/results.md, routing.json and config.json (cheap: after every run)."""
        write_results(self.aggregated(), self.out, self.info)
        atomic_write(self.out / "routing.json", json.dumps(self.routing, indent=1) + "\n")
        atomic_write(self.out / "config.json", json.dumps(self.describe(), indent=2) + "\n")

    def plot(self) -> None:
        """accuracy_vs_params.png and one routing_<method>.png per routed method."""
        from .plots import plot_accuracy_vs_params, plot_routing_heatmap

        agg = self.aggregated()
        if any(i["trainable_percent"] > 0 for i in self.info.values()):
            plot_accuracy_vs_params(agg, self.out / "accuracy_vs_params.png", self.info)
        for method, routing in self.routing.items():
            title = f"{METHODS[method].label}: mean routing probability per task (seed 0)"
            panels = {short_site(site): by_task for site, by_task in routing.items()}
            plot_routing_heatmap(panels, self.out / f"routing_{method}.png", title)

    def describe(self) -> dict[str, Any]:
        """The run's configuration as JSON-ready data."""
        cfg = json.loads(json.dumps(dataclasses.asdict(self.cfg), default=str))
        return {"config": cfg, "base": self.base_description}


@dataclass
class RunRecord:
    """One (method, seed) run: settings, outcome and timings."""

    settings: TuneSettings
    trainable_percent: float
    losses: list[float]
    routing: dict[str, dict[str, list[float]]]
    train_seconds: float
    eval_seconds: float
    saved: Path | None

    @property
    def train_loss(self) -> float:
        """Mean loss over the last tenth of the steps (NaN when nothing trained)."""
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return statistics.fmean(tail) if tail else math.nan

    def summary(self) -> dict[str, Any]:
        """The JSON-ready per-run entry of ``results.json``'s ``methods_info``."""
        return {
            "seed": self.settings.seed,
            "train_loss": round(self.train_loss, 4),
            "loss_curve": [round(x, 4) for x in loss_curve(self.losses)],
            "train_seconds": round(self.train_seconds, 1),
            "eval_seconds": round(self.eval_seconds, 1),
            "saved": None if self.saved is None else str(self.saved),
        }


def run_method(
    backend: ModuleType, base: Any, plan: Plan, cfg: DemoConfig, method: str, seed: int
) -> tuple[dict[str, Any], RunRecord]:
    """Tune, evaluate and save one method with one seed; return its score table and record."""
    settings = _settings(cfg, method, seed)
    spec = METHODS[method]
    t0 = time.perf_counter()
    model, losses = backend.tune(base, spec.make() if spec.make else None, plan.train, settings)
    t1 = time.perf_counter()
    correct, routing = backend.evaluate(model, base, plan.eval, cfg)
    t2 = time.perf_counter()
    table = score_table((e.task, e.template, c) for e, c in zip(plan.eval, correct, strict=True))
    saved = backend.save(model, cfg.out_dir / "adapters" / f"{method}-seed{seed}")
    percent = backend.trainable_percent(model)
    return table, RunRecord(settings, percent, losses, routing, t1 - t0, t2 - t1, saved)


def run(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo; return the aggregated results (also written under ``cfg.out_dir``).

    Seeds are the outer loop, so an interrupted run still has whole seeds in its table.
    """
    start = time.perf_counter()
    plan = validate(cfg)
    base = plan.backend.prepare(cfg)
    log(f"base model: {base.description}")
    kind = "held-out" if plan.held_out else "in-distribution (training rows)"
    log(f"data: {len(plan.train)} training examples, {len(plan.eval)} {kind} eval examples")
    outputs = Outputs(cfg, base.description)
    try:
        for seed in range(cfg.seeds):
            for method in cfg.methods:
                table, record = run_method(plan.backend, base, plan, cfg, method, seed)
                outputs.add(seed, method, table, record)
                log(
                    f"{METHODS[method].label:14s} seed {seed}: avg {100 * table['average']:.2f}% "
                    f"({record.trainable_percent:.3g}% trainable, loss {record.train_loss:.3f}, "
                    f"{record.train_seconds:.0f}s tuning, {record.eval_seconds:.0f}s eval)"
                )
    finally:
        if outputs.info:  # also after an interruption: plot whatever finished
            outputs.plot()
    agg = outputs.aggregated()
    log("\n" + format_table(agg, outputs.info))
    log(f"wrote results.md, results.json and plots to {cfg.out_dir} in {_elapsed(start)}")
    return agg


def short_site(path: str) -> str:
    """A panel title for a site path: ``decoder.block.2.layer.2.DenseReluDense.act`` ->
    ``decoder block 2 FFN``."""
    short = re.sub(r"\.layer\.\d+\.DenseReluDense\.act$", " FFN", path)
    return re.sub(r"\.block\.(\d+)\.layer\.(\d+)\.", r" block \1 layer \2 ", short).replace(
        ".block.", " block "
    )


def loss_curve(losses: Sequence[float], points: int = 10) -> list[float]:
    """Mean loss over ``points`` equal stretches of training (fewer for short runs)."""
    k = min(points, len(losses))
    if k == 0:
        return []
    bounds = [round(i * len(losses) / k) for i in range(k + 1)]
    return [statistics.fmean(losses[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


def _elapsed(start: float) -> str:
    seconds = time.perf_counter() - start
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
