"""What the experiment is: the paper's Table 1 protocol in miniature, backend-neutral.

1. **Base.** A tiny T5 v1.1 pre-trained on the miniature world's corpus (span corruption
   mixed with prefix LM, as the paper's LM-adapted backbones). It ships with the package
   (``mixlight_tune/miniature/base``); ``mixlight demo --build-base DIR`` regenerates it from
   its seed. Fact probes measure what it knows before any tuning.
2. **Tuning.** Full fine-tuning, (IA)³, LoRA, MoV-10 and MoLoRA-10 on the training mixture
   (``--mixture``; the default ``first`` is ten task families, five prompts each), each
   method at its learning rate picked on held-in data (``LEARNING_RATES``; the selection
   runs are in docs/demo/), the same data order per seed. PEFT methods get more steps than
   full FT, as in the paper.
3. **Scoring** by rank classification (median over templates per task, mean over tasks) on
   three tables, each beside its chance level and the untuned base:
   **A** held-in (fresh items, training prompts), **B** held-out prompts (new wording and
   label words; the headline), **C** held-out task families (the paper's setting), and
   **D**, **E**, ... the user's ``--eval-data`` prompt files when given.
4. **Claim check** on table B and on every ``--eval-data`` table (``claims.py``), and the
   **trainable share** at real T5 sizes (``shares.py``).

The framework does only the train and score steps (:mod:`mixlight_tune.steps`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

import mixlight as ml
from mixlight.presets import FAMILIES

from ._files import atomic_write
from .claims import check_claims, format_claims
from .data_files import load_examples
from .miniature.corpus import pretraining_corpus
from .miniature.probes import CHANCE as PROBE_CHANCE
from .miniature.suite import DEFAULT_MIXTURE, MIXTURES, TOKENIZER_MIXTURE, build_suite
from .output_dirs import OutputKind
from .report import aggregate_seeds, chance_table, format_table, score_table
from .schema import Example
from .shares import format_shares, real_size_shares
from .steps import BACKENDS, BackendSteps, DemoError, Runtime, TuneSettings, load_steps

__all__ = ["BACKENDS", "DemoConfig", "DemoError", "METHODS", "run", "select"]


@dataclass(frozen=True)
class Method:
    """A row of the tables: display label and adapter config factory (``None``: every base
    parameter trains)."""

    label: str
    make: Callable[[], ml.AdapterConfig] | None = None

    @property
    def full(self) -> bool:
        return self.make is None

    def adapter(self) -> ml.AdapterConfig | None:
        """A fresh adapter config (``None`` for full fine-tuning)."""
        return None if self.make is None else self.make()


METHODS: dict[str, Method] = {
    "full": Method("Full FT"),
    "ia3": Method("(IA)³", ml.IA3),
    "lora": Method("LoRA r=4", lambda: ml.LoRA(rank=4)),
    "mov": Method("MoV-10", lambda: ml.MoV(10)),
    "molora": Method("MoLoRA-10 r=4", lambda: ml.MoLoRA(10, rank=4)),
    "mov30": Method("MoV-30", lambda: ml.MoV(30)),
    "lora8": Method("LoRA r=8", lambda: ml.LoRA(rank=8)),
    "molora15": Method("MoLoRA-15 r=4", lambda: ml.MoLoRA(15, rank=4)),
}
DEFAULT_METHODS = ("full", "ia3", "lora", "mov", "molora")

# Constant learning rates, one per method, picked on held-in validation items at the full step
# budget (``mixlight demo --select``; the runs are in docs/demo/selection.md): Adafactor full FT
# {3e-3, 1e-2, 3e-2} -> 3e-2, every adapter method {1e-2, 3e-2, 1e-1} -> 3e-2. Never chosen on
# table B or C. With Adafactor's ``scale_parameter`` the lr is a step relative to each
# parameter's RMS (paper.md §4.2), so a thousand steps need far larger rates than the paper's
# 3e-4 over 500K steps. The AdamW rates are single pilot points, not a sweep. Methods without
# an entry use their sibling's rate.
LEARNING_RATES: dict[str, dict[str, float]] = {
    "adafactor": {"full": 3e-2, "ia3": 3e-2, "lora": 3e-2, "mov": 3e-2, "molora": 3e-2},
    "adamw": {"full": 1e-3, "ia3": 1e-2, "lora": 3e-3, "mov": 1e-2, "molora": 3e-3},
}
SIBLING = {"mov30": "mov", "lora8": "lora", "molora15": "molora"}
SELECTION_GRID: dict[str, tuple[float, ...]] = {
    "full": (3e-3, 1e-2, 3e-2),
    "peft": (1e-2, 3e-2, 1e-1),
}


@dataclass(frozen=True)
class BaseSpec:
    """The built-in tiny T5 v1.1 (gated-gelu) and its pre-training: span corruption mixed
    with a ``prefix_lm`` share of prefix-LM examples, on ``chunk_tokens``-long pieces of the
    miniature world's corpus."""

    d_model: int = 64
    d_kv: int = 16
    num_heads: int = 4
    d_ff: int = 128
    num_layers: int = 3
    vocab_size: int = 1024
    corpus_sentences: int = 30_000
    chunk_tokens: int = 48
    prefix_lm: float = 0.5
    pretrain_steps: int = 6000
    pretrain_batch_size: int = 32
    pretrain_lr: float = 1e-2
    seed: int = 0
    tokenizer_examples_per_task: int = 200


# The miniature's base sizes (``mixlight demo --base-size``): the same world, tokenizer and
# pre-training recipe, wider models. The paper's figure is a trend over 770M -> 3B -> 11B;
# these span 0.33M -> 0.72M -> 1.26M, as far as a 2-core CPU runs three seeds of every method.
BASE_SIZES: dict[str, BaseSpec] = {
    "small": BaseSpec(),
    "medium": BaseSpec(d_model=96, d_kv=24, d_ff=192),
    "large": BaseSpec(d_model=128, d_kv=32, d_ff=256),
}


@dataclass(frozen=True)
class DemoConfig:
    """Everything one ``mixlight demo`` run depends on."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    seeds: int = 1
    steps: int = 1000
    full_steps: int = 500
    batch_size: int = 32
    optimizer: str = "adafactor"
    lr: float | None = None
    # No dropout: at this size and budget every method underfits with it (a torch (IA)³ run
    # with dropout 0.1 ended at loss 1.48 and held-in 50%; the same run without, in JAX, at
    # 0.84 and 71%). Both backends apply the rate given (``mixlight tune`` defaults to 0.1).
    dropout: float = 0.0
    out_dir: Path = Path("runs/demo")
    cache_dir: Path = Path("runs/cache")
    model_path: Path | None = None
    data_path: Path | None = None
    eval_data_paths: tuple[Path, ...] = ()
    backend: str = "torch"
    base: BaseSpec = field(default_factory=BaseSpec)
    data_seed: int = 0
    mixture: str = DEFAULT_MIXTURE
    train_per_task: int = 200
    eval_per_template: int = 100
    max_input_tokens: int = 256
    max_target_tokens: int = 64
    eval_batch_size: int = 64
    threads: int = 2
    progress: bool = True
    shares: bool = True

    def lr_for(self, method: str) -> float:
        """``--lr`` when given, else the method's selected rate."""
        if self.lr is not None:
            return self.lr
        rates = LEARNING_RATES[self.optimizer]
        return rates[method] if method in rates else rates[SIBLING[method]]

    def steps_for(self, method: str) -> int:
        """Full fine-tuning gets ``full_steps``, every adapter method ``steps``."""
        return self.full_steps if METHODS[method].full else self.steps


QUICK = DemoConfig(
    steps=30,
    full_steps=30,
    batch_size=16,
    train_per_task=20,
    eval_per_template=4,
    # One thread: at this size a second brings nothing, and on a busy 2-core machine OpenMP
    # barriers made full-parameter steps ~20x slower.
    threads=1,
    shares=False,
)


# --- the base model -----------------------------------------------------------------------

SHIPPED_BASE = Path(__file__).parent / "miniature" / "base"
# Every shipped base, the default's first: ``base`` is the small one, ``base-<size>`` the others.
SHIPPED_BASES = (SHIPPED_BASE, *(SHIPPED_BASE.with_name(f"base-{s}") for s in ("medium", "large")))
BUILT_BASE = OutputKind("mixlight demo --build-base")
DEMO_OUTPUT = OutputKind("mixlight demo")
# What a --model checkpoint that cannot load raises: transformers, safetensors, sentencepiece
# and the JAX T5 loader each have their own.
LOAD_ERRORS = (ValueError, OSError, RuntimeError, KeyError, SafetensorError)


def pretraining_data(cfg: DemoConfig) -> tuple[list[str], list[str]]:
    """``(corpus sentences, tokenizer training texts)`` for the built-in base model: the
    tokenizer also saw the first mixture's prompts (never the tuning run's own mixture, so a
    new prompt changes tuning, not the base)."""
    corpus = pretraining_corpus(cfg.base.seed, cfg.base.corpus_sentences)
    suite = build_suite(cfg.base.seed, cfg.base.tokenizer_examples_per_task, 0, TOKENIZER_MIXTURE)
    return corpus, corpus + [t for e in suite.train for t in (e.inputs, e.targets)]


def base_key(cfg: DemoConfig) -> str:
    """``base-<hash>``: changes whenever the spec the built-in base is built from changes
    (the base depends on nothing else: not on the tuning data's size or seed)."""
    key = {"format": 2, "base": dataclasses.asdict(cfg.base)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return f"base-{digest[:12]}"


def base_checkpoint(cfg: DemoConfig) -> Path:
    """Where the run's base lives: ``--model``, else the shipped base that ``cfg.base`` built,
    else ``cache_dir/base-<hash>`` (built on first use)."""
    if cfg.model_path is not None:
        return cfg.model_path
    return shipped_base(cfg) or cfg.cache_dir / base_key(cfg)


def shipped_base(cfg: DemoConfig) -> Path | None:
    """The shipped base built from ``cfg.base``, if one is."""
    for folder in SHIPPED_BASES:
        info = folder / "pretraining.json"
        if info.is_file() and json.loads(info.read_text())["key"] == base_key(cfg):
            return folder
    return None


# --- validation and data ----------------------------------------------------------------


@dataclass
class Plan:
    """A validated run: the backend's steps and the data, ready before training starts."""

    steps: BackendSteps
    train: list[Example]
    tables: dict[str, list[Example]]
    probes: list[Example]


TABLE_TITLES = {
    "A": "A. Held-in: fresh items of the training tasks, training prompts",
    "B": "B. Held-out prompts (headline): new wording and label words for the training tasks",
    "C": "C. Held-out tasks: task families never trained on (the paper's setting)",
}
# The tables of ``--eval-data`` files, one letter per file in the order given.
EVAL_DATA_TABLES = "DEFGHIJKLMNOPQRSTUVWXYZ"


def table_title(name: str, cfg: DemoConfig) -> str:
    """A table's heading; an ``--eval-data`` table names its file."""
    if name in TABLE_TITLES:
        return TABLE_TITLES[name]
    return f"{name}. Your prompts (--eval-data {cfg.eval_data_paths[EVAL_DATA_TABLES.index(name)]})"


CAUSAL_ARCHITECTURES = ("ForCausalLM", "LMHeadModel")
CAUSAL_MODEL_TYPES = tuple(
    t for f in FAMILIES if f.name not in ("t5", "bert") for t in f.model_types
)


def check_model_dir(path: Path, *, causal_ok: bool = False) -> None:
    """``path`` is a directory holding a model ``config.json`` and a tokenizer, else
    DemoError: a T5, or with ``causal_ok`` a decoder-only causal LM (torch tunes those)."""
    config = path / "config.json"
    if not path.is_dir():
        raise DemoError(f"--model {path}: no such directory")
    if not config.is_file():
        raise DemoError(f"--model {path}: no config.json (expected a Hugging Face checkpoint)")
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
        model_type, architectures = raw.get("model_type"), raw.get("architectures") or []
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError, RecursionError) as err:
        raise DemoError(f"--model {path}: config.json is not a JSON object ({err})") from None
    if architectures:
        decoder_only = any(str(a).endswith(CAUSAL_ARCHITECTURES) for a in architectures)
    else:  # a config without architectures: the families mixlight has causal presets for
        decoder_only = model_type in CAUSAL_MODEL_TYPES
    if model_type != "t5" and (raw.get("is_encoder_decoder") or not decoder_only):
        kinds = f" ({', '.join(map(str, architectures))})" if architectures else ""
        raise DemoError(
            f"--model {path}: model_type is {model_type!r}{kinds}, neither a T5 nor a "
            "decoder-only causal LM (...ForCausalLM); pass one of those"
        )
    if model_type != "t5" and not causal_ok:
        raise DemoError(
            f"--model {path}: a decoder-only {model_type!r} tunes with the torch backend "
            '(mixlight tune with backend = "torch"); this run takes T5 checkpoints'
        )
    names = ("spiece.model", "tokenizer.json", "tokenizer_config.json")
    if not any((path / n).is_file() for n in names):
        raise DemoError(f"--model {path}: no tokenizer ({', '.join(names)}) there")


def check_t5_dir(path: Path) -> None:
    """:func:`check_model_dir` for a T5 (the demo's comparison runs on T5s)."""
    check_model_dir(path)


def prepare_base(
    steps: BackendSteps, cfg: DemoConfig, flag: str = "--model", runtime: Runtime | None = None
) -> Any:
    """``steps.prepare(cfg, runtime)``; a ``--model`` checkpoint that cannot load (weights
    missing, damaged or of other shapes than its config.json, a damaged tokenizer) is a
    DemoError naming ``flag`` and the folder."""
    try:
        return steps.prepare(cfg) if runtime is None else steps.prepare(cfg, runtime)
    except LOAD_ERRORS as err:
        if cfg.model_path is None or isinstance(err, DemoError):
            raise
        reason = (str(err).strip().splitlines() or [""])[0]
        raise DemoError(
            f"{flag} {cfg.model_path}: could not load the checkpoint ({type(err).__name__}: "
            f"{reason}); pass a complete Hugging Face model folder: config.json, the weights "
            "(model.safetensors or pytorch_model.bin) of that config's shapes, and its tokenizer"
        ) from None


def _check_writable(directory: Path, what: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise DemoError(f"{what} {directory} is not writable: {err.strerror or err}") from None


def _read(path: Path, flag: str) -> list[Example]:
    try:
        return load_examples(path)
    except (ValueError, OSError, ImportError) as err:
        raise DemoError(f"{flag}: {err}") from None


def _load_data(cfg: DemoConfig) -> tuple[list[Example], dict[str, list[Example]], list[Example]]:
    """``(train, {table: examples}, probes)`` from the suite or the user's files."""
    if cfg.data_path is None:
        suite = build_suite(cfg.data_seed, cfg.train_per_task, cfg.eval_per_template, cfg.mixture)
        train, tables, probes = suite.train, suite.eval_sets(), suite.probes
        del tables["probes"]
    else:
        train, probes = _read(cfg.data_path, "--data"), []
        if not train:
            raise DemoError(f"--data {cfg.data_path}: no rows to train on")
        tables = {"A": [e for e in train if e.choices]}
    if len(cfg.eval_data_paths) > len(EVAL_DATA_TABLES):
        raise DemoError(f"--eval-data: at most {len(EVAL_DATA_TABLES)} files")
    for name, path in zip(EVAL_DATA_TABLES, cfg.eval_data_paths, strict=False):
        tables[name] = [e for e in _read(path, "--eval-data") if e.choices]
        if not tables[name]:
            raise DemoError(f"--eval-data {path}: no rows with answer_choices")
    tables = {k: v for k, v in tables.items() if v}
    if not tables:
        raise DemoError("no rows with answer_choices to evaluate on (add --eval-data)")
    return train, tables, probes


def validate(cfg: DemoConfig) -> Plan:
    """Check every input that could fail later, before anything trains (and ``--output-dir`` before
    anything loads: a folder of other files is refused, not overwritten)."""
    DEMO_OUTPUT.check(cfg.out_dir, "--output-dir")
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown or not cfg.methods:
        raise DemoError(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; valid: {', '.join(METHODS)}"
        )
    for name, value in (
        ("--steps", cfg.steps),
        ("--full-steps", cfg.full_steps),
        ("--seeds", cfg.seeds),
        ("--batch-size", cfg.batch_size),
        ("--threads", cfg.threads),
    ):
        if value < 1:
            raise DemoError(f"{name} must be at least 1, got {value}")
    if cfg.lr is not None and not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise DemoError(f"--lr must be a positive finite number, got {cfg.lr}")
    if cfg.mixture not in MIXTURES:
        raise DemoError(f"unknown mixture {cfg.mixture!r}; valid: {', '.join(MIXTURES)}")
    if cfg.optimizer not in LEARNING_RATES:
        raise DemoError(f"unknown optimizer {cfg.optimizer!r}; valid: {', '.join(LEARNING_RATES)}")
    if cfg.model_path is not None:
        check_t5_dir(cfg.model_path)
    train, tables, probes = _load_data(cfg)
    DEMO_OUTPUT.claim(cfg.out_dir, "--output-dir")
    if cfg.model_path is None and shipped_base(cfg) is None:
        _check_writable(cfg.cache_dir, "cache directory")
    return Plan(load_steps(cfg.backend), train, tables, probes)


# --- one run ------------------------------------------------------------------------------


def settings_for(cfg: DemoConfig, method: str, seed: int) -> TuneSettings:
    """The optimisation recipe of ``method`` with ``seed``."""
    return TuneSettings(
        steps=cfg.steps_for(method),
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

    def summary(self) -> dict[str, Any]:
        """The JSON-ready per-run entry of ``results.json``'s ``methods_info``."""
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return {
            "seed": self.settings.seed,
            "lr": self.settings.lr,
            "train_loss": round(statistics.fmean(tail), 4) if tail else None,
            "loss_curve": [round(x, 4) for x in loss_curve(self.losses)],
            "train_seconds": round(self.train_seconds, 1),
            "eval_seconds": round(self.eval_seconds, 1),
            "saved": None if self.saved is None else str(self.saved),
        }


def score_sets(
    steps: BackendSteps, model: Any, base: Any, sets: dict[str, list[Example]], cfg: DemoConfig
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, list[float]]]]:
    """``({table: score_table}, routing)`` with every table scored in one evaluate call; each
    table's ``"hits"`` is its items' 0/1 correctness, in order (for the claim check)."""
    examples = [e for exs in sets.values() for e in exs]
    correct, routing = steps.evaluate(model, base, examples, cfg)
    scores, at = {}, 0
    for name, exs in sets.items():
        hits = correct[at : at + len(exs)]
        scores[name] = score_table((e.task, e.template, c) for e, c in zip(exs, hits, strict=True))
        scores[name]["hits"] = [int(c) for c in hits]
        at += len(exs)
    return scores, routing


def run_method(
    plan: Plan, base: Any, cfg: DemoConfig, method: str, seed: int, save: bool = True
) -> tuple[dict[str, dict[str, Any]], RunRecord]:
    """Tune, score every table and save one method with one seed."""
    settings = settings_for(cfg, method, seed)
    t0 = time.perf_counter()
    model, losses = plan.steps.tune(base, METHODS[method].adapter(), plan.train, settings)
    t1 = time.perf_counter()
    scores, routing = score_sets(plan.steps, model, base, plan.tables, cfg)
    t2 = time.perf_counter()
    saved = (
        plan.steps.save(model, cfg.out_dir / "adapters" / f"{method}-seed{seed}") if save else None
    )
    percent = plan.steps.trainable_percent(model)
    return scores, RunRecord(settings, percent, losses, routing, t1 - t0, t2 - t1, saved)


class Outputs:
    """Results collected so far and the files under ``out_dir``, rewritten after every run
    so an interrupted demo keeps everything it finished."""

    def __init__(self, cfg: DemoConfig, plan: Plan, base_description: str) -> None:
        self.cfg = cfg
        self.out = cfg.out_dir
        self.base_description = base_description
        self.chance = {name: chance_table(exs) for name, exs in plan.tables.items()}
        self.cells = {
            name: [(e.task, e.template) for e in exs] for name, exs in plan.tables.items()
        }
        self.hits: dict[str, dict[str, list[list[int]]]] = {}  # table -> method -> per seed
        self.base_scores: dict[str, dict[str, Any]] = {}
        self.probes: dict[str, Any] = {}
        self.per_seed: list[dict[str, dict[str, Any]]] = []
        self.info: dict[str, dict[str, Any]] = {}
        self.routing: dict[str, dict[str, dict[str, list[float]]]] = {}
        self.shares: dict[str, dict[str, float]] = {}
        self.timings: dict[str, float] = {}

    def add(self, seed: int, method: str, scores: dict[str, Any], run: RunRecord) -> None:
        """Record one (seed, method) run and rewrite every output file."""
        while len(self.per_seed) <= seed:
            self.per_seed.append({})
        for name, table in scores.items():
            self.hits.setdefault(name, {}).setdefault(method, []).append(table.pop("hits"))
        self.per_seed[seed][method] = scores
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

    def table(self, name: str) -> dict[str, Any]:
        """``aggregate_seeds`` of table ``name`` over the runs so far, in method order."""
        runs = [{m: s[name] for m, s in seed.items()} for seed in self.per_seed if seed]
        agg = aggregate_seeds(runs) if runs else {}
        return {m: agg[m] for m in self.cfg.methods if m in agg}

    def claims(self, table: str = "B") -> list[dict[str, Any]]:
        """The claim check on ``table`` (the headline's is B's), paired item by item and seed
        by seed."""
        if table not in self.chance:
            return []
        runs = self.hits.get(table, {})
        hits = {m: runs[m] for m in self.cfg.methods if m in runs}
        return check_claims(hits, self.cells[table])

    def eval_data_tables(self) -> list[str]:
        """The ``--eval-data`` tables of this run (D, E, ...)."""
        return [name for name in self.chance if name in EVAL_DATA_TABLES]

    def payload(self) -> dict[str, Any]:
        """Everything ``results.json`` holds."""
        return {
            "base": self.base_description,
            "probes": self.probes,
            "tables": {
                name: {
                    "title": table_title(name, self.cfg),
                    "chance": self.chance[name],
                    "base": self.base_scores.get(name),
                    "methods": self.table(name),
                }
                for name in self.chance
            },
            "claims": self.claims(),
            "eval_data_claims": {name: self.claims(name) for name in self.eval_data_tables()},
            "methods_info": self.info,
            "real_size_shares": self.shares,
            "timings_seconds": self.timings,
        }

    def markdown(self) -> str:
        """``results.md``: the tables, the claim check, the probes and the shares."""
        parts = [f"# mixlight demo results\n\nBase: {self.base_description}\n"]
        if self.probes:
            parts.append(
                "## Fact probes (the base, before tuning)\n\n" + format_probes(self.probes)
            )
        for name in self.chance:
            parts.append(
                f"## {table_title(name, self.cfg)}\n\n"
                + format_table(
                    self.table(name), self.info, self.chance[name], self.base_scores.get(name)
                )
            )
        if "B" in self.chance:
            parts.append("## Claim check (table B)\n\n" + format_claims(self.claims()))
        for name in self.eval_data_tables():  # the same claims on prompts written elsewhere
            parts.append(
                f"## Claim check on your prompts (table {name})\n\n"
                + format_claims(self.claims(name), rule="B" not in self.chance)
            )
        if self.shares:
            labels = {m: METHODS[m].label for m in self.shares[next(iter(self.shares))]}
            toy = {m: i["trainable_percent"] for m, i in self.info.items()}
            parts.append(
                "## Trainable share at real sizes\n\n" + format_shares(self.shares, labels, toy)
            )
        if self.timings:
            rows = "\n".join(f"| {k} | {v:.0f} s |" for k, v in self.timings.items())
            parts.append("## Time per stage\n\n| stage | time |\n|---|---|\n" + rows + "\n")
        return "\n".join(parts)

    def write(self) -> None:
        """results.json/results.md, routing.json and config.json (cheap: after every run)."""
        atomic_write(self.out / "results.json", json.dumps(self.payload(), indent=1) + "\n")
        atomic_write(self.out / "results.md", self.markdown())
        atomic_write(self.out / "routing.json", json.dumps(self.routing, indent=1) + "\n")
        cfg = json.loads(json.dumps(dataclasses.asdict(self.cfg), default=str))
        atomic_write(self.out / "config.json", json.dumps(cfg, indent=2) + "\n")

    def plot(self) -> None:
        """accuracy_vs_params.png (table B) and one routing_<method>.png per routed method."""
        from .plots import plot_accuracy_vs_params, plot_routing_heatmap

        headline = "B" if "B" in self.chance else next(iter(self.chance))
        agg = self.table(headline)
        if agg and any(i["trainable_percent"] > 0 for i in self.info.values()):
            references = {"chance": self.chance[headline]["average"]}
            if headline in self.base_scores:
                references["untuned base"] = self.base_scores[headline]["average"]
            plot_accuracy_vs_params(
                agg,
                self.out / "accuracy_vs_params.png",
                self.info,
                ylabel=f"table {headline}: average median accuracy (%)",
                references=references,
            )
        for method, routing in self.routing.items():
            title = f"{METHODS[method].label}: mean routing probability per task (seed 0)"
            panels = {short_site(site): by_task for site, by_task in routing.items()}
            plot_routing_heatmap(panels, self.out / f"routing_{method}.png", title)


def format_probes(probes: dict[str, Any]) -> str:
    """Markdown: each probe family's accuracy beside its chance level."""
    lines = ["| probe family | base accuracy | chance |", "|---|---|---|"]
    for family, acc in probes.items():
        lines.append(f"| {family} | {100 * acc:.1f} | {100 * PROBE_CHANCE.get(family, 0):.1f} |")
    return "\n".join(lines) + "\n"


def run(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo; return ``results.json``'s payload (also written under ``cfg.out_dir``).

    Seeds are the outer loop, so an interrupted run still has whole seeds in its tables.
    """
    start = time.perf_counter()
    plan = validate(cfg)
    base = prepare_base(plan.steps, cfg)
    log(f"base model: {base.description}")
    log(
        f"data: {len(plan.train)} training examples; scored: "
        + ", ".join(f"{name} {len(exs)}" for name, exs in plan.tables.items())
    )
    outputs = Outputs(cfg, plan, base.description)
    outputs.timings["prepare base"] = time.perf_counter() - start
    t = time.perf_counter()
    sets = {**plan.tables, "probes": plan.probes} if plan.probes else plan.tables
    scores, _ = score_sets(plan.steps, base.model, base, sets, cfg)
    if "probes" in scores:  # one template per family: its median is its accuracy
        outputs.probes = {f: s["median"] for f, s in scores.pop("probes")["tasks"].items()}
        log(
            "fact probes (base): "
            + ", ".join(f"{k} {100 * v:.0f}%" for k, v in outputs.probes.items())
        )
    for table in scores.values():
        table.pop("hits")
    outputs.base_scores = scores
    outputs.timings["score the untuned base"] = time.perf_counter() - t
    try:
        for seed in range(cfg.seeds):
            for method in cfg.methods:
                scores, record = run_method(plan, base, cfg, method, seed)
                outputs.add(seed, method, scores, record)
                for stage, seconds in (
                    ("tune", record.train_seconds),
                    ("score", record.eval_seconds),
                ):
                    key = f"{stage} {method} (mean per seed)"
                    outputs.timings[key] = outputs.timings.get(key, 0.0) + seconds / cfg.seeds
                log(
                    f"{METHODS[method].label:14s} seed {seed}: "
                    + ", ".join(f"{n} {100 * s['average']:.1f}%" for n, s in scores.items())
                    + f" ({record.trainable_percent:.3g}% trainable, loss "
                    f"{record.summary()['train_loss']}, {record.train_seconds:.0f}s tuning, "
                    f"{record.eval_seconds:.0f}s scoring)"
                )
        if cfg.shares:
            t = time.perf_counter()
            outputs.shares = real_size_shares({m: METHODS[m].adapter() for m in cfg.methods})
            outputs.timings["real-size shares"] = time.perf_counter() - t
    finally:
        outputs.timings["total"] = time.perf_counter() - start
        if outputs.info:  # also after an interruption: write and plot whatever finished
            outputs.write()
            outputs.plot()
    log("\n" + outputs.markdown())
    log(f"wrote results.md, results.json and plots to {cfg.out_dir} in {_elapsed(start)}")
    return outputs.payload()


# --- hyperparameter selection (held-in only) ----------------------------------------------


def select(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Pick each method's learning rate on held-in validation items at the full step budget.

    The validation items are fresh items of the training tasks in their training prompts,
    drawn with another data seed than table A's; tables B and C are never scored here.
    Writes ``selection.json`` and ``selection.md`` under ``cfg.out_dir``.
    """
    plan = validate(cfg)
    validation = build_suite(cfg.data_seed + 1000, 0, cfg.eval_per_template, cfg.mixture).held_in
    plan = dataclasses.replace(plan, tables={"validation": validation})
    base = prepare_base(plan.steps, cfg)
    runs: dict[str, dict[str, float]] = {}
    for method in cfg.methods:
        grid = SELECTION_GRID["full" if METHODS[method].full else "peft"]
        for lr in grid:
            scores, record = run_method(
                plan, base, dataclasses.replace(cfg, lr=lr), method, seed=0, save=False
            )
            acc = scores["validation"]["average"]
            runs.setdefault(method, {})[f"{lr:g}"] = acc
            log(
                f"select {method} lr {lr:g}: held-in validation {100 * acc:.1f}% "
                f"(loss {record.summary()['train_loss']}, {record.train_seconds:.0f}s)"
            )
    chosen = {m: float(max(r, key=lambda k: r[k])) for m, r in runs.items()}
    payload = {
        "optimizer": cfg.optimizer,
        "steps": {m: cfg.steps_for(m) for m in runs},
        "validation_items": len(validation),
        "accuracy": runs,
        "chosen": chosen,
    }
    lines = ["| method | " + " | ".join(f"lr {k}" for k in SELECTION_GRID["peft"]) + " | chosen |"]
    lines.append("|---" * (len(SELECTION_GRID["peft"]) + 2) + "|")
    for m, r in runs.items():
        cells = " | ".join(f"{k}: {100 * v:.1f}" for k, v in r.items())
        lines.append(f"| {METHODS[m].label} | {cells} | {chosen[m]:g} |")
    atomic_write(cfg.out_dir / "selection.json", json.dumps(payload, indent=1) + "\n")
    atomic_write(cfg.out_dir / "selection.md", "\n".join(lines) + "\n")
    log("\n".join(lines))
    return payload


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
