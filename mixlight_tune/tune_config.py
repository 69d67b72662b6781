"""The schema of ``mixlight tune CONFIG`` (TOML or JSON) and its validation.

:func:`read_config` turns a file into a :class:`TuneConfig` or raises :class:`TuneConfigError`
naming the key, what it holds and what it should hold. Relative paths are taken from the
config file's folder and held absolute, so :meth:`TuneConfig.resolved` (the ``config.json`` a
run saves) reads back to the same files from any folder. Nothing here names a framework:
``backend`` is one key like the others, so the same file with only ``backend`` changed
describes the same experiment (same data, data order, initial adapter and settings) in the
other framework. ``docs/tune.md`` documents the keys.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mixlight as ml

from . import hub, mixture, sources
from .mixture import MixtureEntry
from .sources import DataSource, SourceError
from .steps import BACKENDS, DemoError
from .suites import SuiteRef, parse_suite

PRESETS: dict[str, Callable[..., ml.AdapterConfig]] = {
    "mov": ml.MoV,
    "molora": ml.MoLoRA,
    "ia3": ml.IA3,
    "lora": ml.LoRA,
}
OPTIMIZERS = ("adafactor", "adamw", "sgd")
PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("constant", "linear", "cosine")
LAYOUTS = ("ddp", "fsdp")
LOGGERS = ("tensorboard", "wandb")
KEEP_BEST = ("eval_average",)
MESH_AXES = ("data", "model")
# The paper's fine-tuning dropout (paper.md §4.2: T5X's finetune gin sets DROPOUT_RATE 0.1 on
# the residual, attention and FFN-intermediate dropouts); the demo keeps its own 0.
DEFAULT_DROPOUT = 0.1
DEFAULT_ADAPTER: dict[str, Any] = {"preset": "mov", "num_experts": 10}
FULL = "full"  # adapter = "full": every weight of the model trains
MAX_SEED = 2**32 - 1  # every RNG the backends seed (numpy's, torch's, JAX's) takes these


class TuneConfigError(DemoError):
    """A config file that cannot run, with the key at fault and the fix."""


@dataclass(frozen=True)
class TuneConfig:
    """One tuning experiment; every field has the key of the same name in the file.

    ``model``/``data``/``eval_data`` ``None`` mean the demo's shipped base model and built-in
    instruction mixture (``builtin_per_task`` examples of each training task, generated
    from ``data_seed``); ``adapter`` is the validated config (a preset is expanded).
    ``model`` is a local folder (a ``Path``) or a Hub model id (a ``str``, at ``revision``;
    :mod:`mixlight_tune.hub`); ``data``/``eval_data`` are data sources
    (:mod:`mixlight_tune.sources`); ``eval_suite`` a named evaluation suite
    (:mod:`mixlight_tune.suites`), scored before ``eval_data``. ``mixture`` (instead of
    ``data``) is a weighted mixture of sources (:mod:`mixlight_tune.mixture`), capped by
    ``mixture_cap``.
    """

    backend: str = "torch"
    model: Path | str | None = None
    revision: str | None = None
    data: tuple[DataSource, ...] | None = None
    eval_data: tuple[DataSource, ...] | None = None
    eval_suite: SuiteRef | None = None
    mixture: tuple[MixtureEntry, ...] | None = None
    mixture_cap: int | None = None
    adapter: ml.AdapterConfig | None = field(default_factory=lambda: ml.MoV(10))
    optimizer: str = "adafactor"
    lr: float = 3e-2
    steps: int = 100
    batch_size: int = 8
    seed: int = 0
    output_dir: Path = Path("runs/tune")
    data_seed: int = 0
    builtin_per_task: int = 20
    max_input_tokens: int = 256
    max_target_tokens: int = 64
    eval_batch_size: int = 64
    progress: bool = True
    checkpoint_every: int = 50
    # the model and where it runs
    dropout: float = DEFAULT_DROPOUT
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    packing: bool = False
    device: str = "auto"
    threads: int | None = None
    distributed: str = "ddp"
    mesh: dict[str, int] | None = None
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    # the training loop
    grad_accum_steps: int = 1
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    max_grad_norm: float | None = None
    eval_every: int = 0
    keep_best: str | None = None
    log: tuple[str, ...] = ()

    def resolved(self) -> dict[str, Any]:
        """The config as JSON-ready data, every default filled in (``--dry-run`` prints it
        and ``metrics.json`` records it). ``adapter`` is ``{"config": <full AdapterConfig>}``
        and paths are absolute, so the result reads back as a config file from anywhere."""
        out = asdict(self)
        out["adapter"] = FULL if self.adapter is None else {"config": self.adapter.to_dict()}
        for key in ("model", "output_dir"):
            out[key] = None if out[key] is None else str(out[key])
        out["data"] = sources.resolved(self.data)
        out["eval_data"] = sources.resolved(self.eval_data)
        out["eval_suite"] = None if self.eval_suite is None else self.eval_suite.resolved()
        out["mixture"] = mixture.resolved(self.mixture)
        out["log"] = list(self.log)
        out["mesh"] = None if self.mesh is None else dict(self.mesh)
        return out


_KEYS = set(TuneConfig.__dataclass_fields__)


def load_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a ``.toml`` or ``.json`` config file."""
    path = Path(path)
    if not path.is_file():
        raise TuneConfigError(f"config {path}: no such file (pass a .toml or .json file)")
    if path.suffix not in (".toml", ".json"):
        raise TuneConfigError(f"config {path}: expected a .toml or .json file")
    text = path.read_bytes()
    kind = path.suffix[1:].upper()
    try:
        if path.suffix == ".json":
            raw = json.loads(text)
        else:
            raw = _toml_module().loads(text.decode("utf-8"))
    except ValueError as err:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError
        raise TuneConfigError(
            f"config {path} is not valid {kind}: {err}; fix the file (UTF-8 {kind} with the "
            "keys in docs/tune.md)"
        ) from None
    except RecursionError:
        raise TuneConfigError(
            f"config {path}: its {kind} is nested too deeply to read; a config is one table of "
            "the keys in docs/tune.md, with [adapter] the only table inside it"
        ) from None
    if not isinstance(raw, dict):
        raise TuneConfigError(f"config {path}: the top level must be a table/object")
    return raw


def _toml_module() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli

        return tomli
    except ImportError:
        raise TuneConfigError(
            "reading TOML needs Python >= 3.11 or the tomli package; pip install tomli, "
            "or write the config as JSON (same keys)"
        ) from None


def read_config(path: str | Path, settings: Sequence[str] = (), **overrides: Any) -> TuneConfig:
    """Validate the file at ``path`` into a TuneConfig: ``settings`` (``--set KEY=VALUE``,
    :func:`with_settings`) and then ``overrides`` replace its keys."""
    path = Path(path)
    raw = with_settings(load_file(path), settings) | overrides
    return parse(raw, base_dir=path.absolute().parent, where=str(path))


PATH_KEYS = ("model", "data", "eval_data", "output_dir")
NAMED_BY = {"adapter": "preset"}  # the key a table's one-word form names (else "name")


def with_settings(raw: dict[str, Any], settings: Sequence[str]) -> dict[str, Any]:
    """``raw`` with each ``KEY=VALUE`` applied: VALUE read as a TOML value (``3``, ``1e-3``,
    ``true``, ``"text"``, ``[1, 2]``), else taken as text; a dotted KEY sets a key of a
    table (``adapter.num_experts=2``); ``KEY=`` with nothing after ``=`` removes the key
    (its default: ``model=`` is the shipped base, ``eval_suite=`` no suite). A relative
    path in ``model``/``data``/``eval_data`` that exists here, and any ``output_dir``, is
    taken from the current folder, as a command line's paths are."""
    out = dict(raw)
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or not key.strip():
            raise TuneConfigError(f"--set {setting!r}: expected KEY=VALUE, e.g. --set steps=3")
        value = None if not text.strip() else _setting_value(text.strip())
        *tables, last = key.strip().split(".")
        target = out
        for name in tables:
            inner = target.get(name, DEFAULT_ADAPTER if name == "adapter" else {})
            if isinstance(inner, str):  # adapter = "mov", eval_suite = "t0_held_out"
                inner = {NAMED_BY.get(name, "name"): inner}
            inner = dict(inner)
            target[name] = inner
            target = inner
        if value is None:
            target.pop(last, None)
            continue
        if not tables and last in PATH_KEYS and isinstance(value, str):
            here = Path(value).expanduser()
            if last == "output_dir" or (not here.is_absolute() and here.exists()):
                value = str(here.resolve())
        target[last] = value
    return out


def _setting_value(text: str) -> Any:
    try:
        return _toml_module().loads(f"value = {text}")["value"]
    except ValueError:  # TOMLDecodeError: a bare word or path
        return text


def parse(raw: dict[str, Any], base_dir: Path = Path("."), where: str = "config") -> TuneConfig:
    """Validate a raw mapping; relative paths are taken from ``base_dir`` (made absolute)."""
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise TuneConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(_KEYS))}"
        )
    default = TuneConfig()
    values: dict[str, Any] = {}
    for key in ("steps", "batch_size", "data_seed", "builtin_per_task", "checkpoint_every"):
        values[key] = _int(raw, key, getattr(default, key), minimum=0 if key != "batch_size" else 1)
    values["seed"] = _int(raw, "seed", default.seed, minimum=0, maximum=MAX_SEED)
    for key in ("max_input_tokens", "max_target_tokens", "eval_batch_size"):
        values[key] = _int(raw, key, getattr(default, key), minimum=2)
    values["backend"] = _choice(raw, "backend", default.backend, BACKENDS)
    values["optimizer"] = _choice(raw, "optimizer", default.optimizer, OPTIMIZERS)
    values["lr"] = _lr(raw.get("lr", default.lr))
    values["progress"] = _bool(raw, "progress", default.progress)
    values["model"] = _existing_path(raw, "model", base_dir)
    values["revision"] = _revision(raw.get("revision"), values["model"])
    try:
        values["data"] = sources.parse_sources(raw.get("data"), "data", base_dir)
        values["eval_data"] = sources.parse_sources(raw.get("eval_data"), "eval_data", base_dir)
        values["eval_suite"] = parse_suite(raw.get("eval_suite"), base_dir)
        values["mixture"], values["mixture_cap"] = mixture.parse_mixture(
            raw.get("mixture"), raw.get("mixture_cap"), base_dir
        )
    except SourceError as err:
        raise TuneConfigError(str(err)) from None
    if values["mixture"] is not None and values["data"] is not None:
        raise TuneConfigError(
            "mixture and data are both set: data is read whole, mixture draws from weighted "
            "sources; keep one (on the command line --set data= or --set mixture= removes one)"
        )
    out = raw.get("output_dir", str(default.output_dir))
    if not isinstance(out, str) or not out:
        raise TuneConfigError(f"output_dir must be a folder path (a string), got {out!r}")
    values["output_dir"] = _absolute(base_dir, out)
    values["adapter"] = make_adapter(raw.get("adapter", DEFAULT_ADAPTER))
    values |= _scale_keys(raw, default)
    values |= _loop_keys(raw, default, values)
    if values["adapter"] is None and values["distributed"] == "fsdp":
        raise TuneConfigError(
            'adapter = "full" with distributed = "fsdp": FSDP2 here shards the frozen base of '
            'an adapter run; full fine-tuning runs with distributed = "ddp" (or in JAX)'
        )
    return TuneConfig(**values)


def _scale_keys(raw: dict[str, Any], default: TuneConfig) -> dict[str, Any]:
    """The model's settings and where the run executes (docs/tune.md, "Devices, processes,
    memory")."""
    values: dict[str, Any] = {
        "dropout": _fraction(raw, "dropout", default.dropout),
        "precision": _choice(raw, "precision", default.precision, PRECISIONS),
        "gradient_checkpointing": _bool(
            raw, "gradient_checkpointing", default.gradient_checkpointing
        ),
        "packing": _bool(raw, "packing", default.packing),
        "device": _device(raw.get("device", default.device)),
        "distributed": _choice(raw, "distributed", default.distributed, LAYOUTS),
        "mesh": _mesh(raw.get("mesh")),
    }
    for key, minimum in (("threads", 1), ("num_processes", 1), ("process_id", 0)):
        values[key] = None if raw.get(key) is None else _int(raw, key, 0, minimum=minimum)
    address = raw.get("coordinator_address")
    if address is not None and (not isinstance(address, str) or ":" not in address):
        raise TuneConfigError(
            f'coordinator_address must be "host:port" (process 0\'s address), got {address!r}'
        )
    values["coordinator_address"] = address
    n, pid = values["num_processes"], values["process_id"]
    if n is not None and pid is not None and pid >= n:
        raise TuneConfigError(f"process_id must be below num_processes ({n}), got {pid}")
    return values


def _loop_keys(raw: dict[str, Any], default: TuneConfig, values: dict[str, Any]) -> dict[str, Any]:
    """The training loop's keys, checked against each other and the rest of the config."""
    out: dict[str, Any] = {
        "grad_accum_steps": _int(raw, "grad_accum_steps", default.grad_accum_steps, minimum=1),
        "lr_schedule": _choice(raw, "lr_schedule", default.lr_schedule, SCHEDULES),
        "warmup_steps": _int(raw, "warmup_steps", default.warmup_steps, minimum=0),
        "eval_every": _int(raw, "eval_every", default.eval_every, minimum=0),
    }
    norm = raw.get("max_grad_norm")
    out["max_grad_norm"] = None if norm is None else _positive(norm, "max_grad_norm")
    keep = raw.get("keep_best")
    if keep is not None and keep not in KEEP_BEST:
        raise TuneConfigError(f'keep_best must be "eval_average" or omitted, got {keep!r}')
    out["keep_best"] = keep
    out["log"] = _log(raw.get("log", []))
    if values["batch_size"] % out["grad_accum_steps"]:
        raise TuneConfigError(
            f"batch_size ({values['batch_size']}) must be a multiple of grad_accum_steps "
            f"({out['grad_accum_steps']}): each step splits the batch into that many equal "
            "micro-batches"
        )
    if out["warmup_steps"] > values["steps"]:
        raise TuneConfigError(
            f"warmup_steps ({out['warmup_steps']}) must not exceed steps ({values['steps']})"
        )
    if values["eval_data"] is None and values["eval_suite"] is None:
        if out["eval_every"] or keep is not None:
            what = "eval_every" if out["eval_every"] else "keep_best"
            raise TuneConfigError(
                f"{what} needs eval_data or eval_suite (rows with answer_choices to score)"
            )
    if keep is not None and not out["eval_every"]:
        raise TuneConfigError(
            "keep_best needs eval_every > 0: the best adapter is chosen among the evaluations "
            "made during training"
        )
    return out


def make_adapter(source: Any) -> ml.AdapterConfig | None:
    """``adapter``: a preset name (``"mov"``), a table ``{preset = "mov", num_experts = 4}``
    (the preset's keyword arguments), ``{config = {...}}`` holding a full ``AdapterConfig``
    as ``AdapterConfig.to_dict()`` / a ``mixlight_config.json`` writes it, or ``"full"``
    (``None``: every weight trains, the paper's full fine-tuning baseline)."""
    if source == FULL or source == {"preset": FULL}:
        return None
    if isinstance(source, str):
        source = {"preset": source}
    if not isinstance(source, dict):
        raise TuneConfigError(
            f"adapter must be a preset name or a table, got {source!r}; e.g. "
            'adapter = "mov" or [adapter] preset = "molora", num_experts = 10, rank = 4'
        )
    if "config" in source:
        if len(source) > 1 or not isinstance(source["config"], dict):
            raise TuneConfigError(
                "adapter.config must be a table (a full AdapterConfig) and the only key of "
                f"[adapter]; got keys {sorted(source)}"
            )
        try:
            return ml.AdapterConfig.from_dict(source["config"])
        except (TypeError, ValueError) as err:
            raise TuneConfigError(f"adapter.config: {err}") from None
    args = dict(source)
    preset = args.pop("preset", None)
    if not isinstance(preset, str) or preset not in PRESETS:
        raise TuneConfigError(
            f"adapter.preset is {preset!r}; valid: {', '.join(PRESETS)}, or {FULL!r} (full "
            "fine-tuning), or give adapter.config, a full AdapterConfig"
        )
    try:
        return PRESETS[preset](**args)
    except (TypeError, ValueError) as err:
        raise TuneConfigError(
            f"adapter (preset {preset!r}) with {args}: {err}; the keys besides preset are "
            f"mixlight.{PRESETS[preset].__name__}'s keyword arguments"
        ) from None


def _int(
    raw: dict[str, Any], key: str, default: int, minimum: int, maximum: int | None = None
) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TuneConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise TuneConfigError(f"{key} must be an integer from {minimum} to {maximum}, got {value}")
    return value


def _choice(raw: dict[str, Any], key: str, default: str, valid: tuple[str, ...]) -> str:
    value = raw.get(key, default)
    if value not in valid:
        choices = " or ".join(f'"{v}"' for v in valid)
        raise TuneConfigError(f"{key} must be {choices}, got {value!r}")
    return str(value)


def _bool(raw: dict[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise TuneConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _fraction(raw: dict[str, Any], key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise TuneConfigError(f"{key} must be a number from 0 (off) to below 1, got {value!r}")
    return float(value)


def _positive(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TuneConfigError(f"{key} must be a positive number or omitted, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise TuneConfigError(f"{key} must be a positive finite number, got {value!r}")
    return number


def _device(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise TuneConfigError(
            f'device must be "auto", "cpu", "cuda" or "cuda:N", got {value!r} ("auto": CUDA '
            "when present, else the CPU)"
        )
    return value


def _mesh(value: Any) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value or set(value) - set(MESH_AXES):
        raise TuneConfigError(
            f"mesh must be a table of device counts by axis, {{data = D, model = M}}, got "
            f"{value!r} (omit it to put every device on data)"
        )
    for axis, size in value.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise TuneConfigError(f"mesh.{axis} must be an integer >= 1, got {size!r}")
    return {axis: value[axis] for axis in MESH_AXES if axis in value}


def _log(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or any(v not in LOGGERS for v in value):
        raise TuneConfigError(f'log must be a list of "tensorboard" and/or "wandb", got {value!r}')
    return tuple(dict.fromkeys(value))


def _lr(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TuneConfigError(f"lr must be a positive number, got {value!r}")
    try:
        lr = float(value)
    except OverflowError:  # an integer beyond float's range
        lr = math.inf
    if not (math.isfinite(lr) and lr > 0):
        raise TuneConfigError(f"lr must be a positive finite number, got {value!r:.40}")
    return lr


def _existing_path(raw: dict[str, Any], key: str, base_dir: Path) -> Path | str | None:
    """A local path that exists, else a Hub id (a ``str``, resolved when the run starts)."""
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TuneConfigError(
            f"{key} must be a path (a string), got {value!r}; omit it for the default"
        )
    path = _absolute(base_dir, value)
    if not path.exists():
        if hub.is_hub_id(value):
            return value
        raise TuneConfigError(
            f"{key} = {value!r}: nothing at {path} (expected a checkpoint directory or a Hub "
            "model id; relative paths are taken from the config file's folder)"
        )
    return path


def _revision(value: Any, model: Path | str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TuneConfigError(f"revision must be a branch, tag or commit (a string), got {value!r}")
    if not isinstance(model, str):
        raise TuneConfigError(
            f"revision applies to a Hub model id; model is {model or 'the shipped base'} (a "
            "local folder): omit revision"
        )
    return value


def _absolute(base_dir: Path, value: str) -> Path:
    """``value`` taken from ``base_dir``, absolute and without ``..`` steps."""
    return Path(os.path.abspath(base_dir / value))
