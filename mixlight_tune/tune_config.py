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
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mixlight as ml

from .steps import BACKENDS, DemoError

PRESETS: dict[str, Callable[..., ml.AdapterConfig]] = {
    "mov": ml.MoV,
    "molora": ml.MoLoRA,
    "ia3": ml.IA3,
    "lora": ml.LoRA,
}
OPTIMIZERS = ("adafactor", "adamw", "sgd")
DEFAULT_ADAPTER: dict[str, Any] = {"preset": "mov", "num_experts": 10}
MAX_SEED = 2**32 - 1  # every RNG the backends seed (numpy's, torch's, JAX's) takes these


class TuneConfigError(DemoError):
    """A config file that cannot run, with the key at fault and the fix."""


@dataclass(frozen=True)
class TuneConfig:
    """One tuning experiment; every field has the key of the same name in the file.

    ``model``/``data``/``eval_data`` ``None`` mean the demo's shipped base model and built-in
    instruction mixture (``builtin_per_task`` examples of each training task, generated
    from ``data_seed``); ``adapter`` is the validated config (a preset is expanded).
    """

    backend: str = "torch"
    model: Path | None = None
    data: Path | None = None
    eval_data: Path | None = None
    adapter: ml.AdapterConfig = field(default_factory=lambda: ml.MoV(10))
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

    def resolved(self) -> dict[str, Any]:
        """The config as JSON-ready data, every default filled in (``--dry-run`` prints it
        and ``metrics.json`` records it). ``adapter`` is ``{"config": <full AdapterConfig>}``
        and paths are absolute, so the result reads back as a config file from anywhere."""
        out = asdict(self)
        out["adapter"] = {"config": self.adapter.to_dict()}
        for key in ("model", "data", "eval_data", "output_dir"):
            out[key] = None if out[key] is None else str(out[key])
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


def read_config(path: str | Path, **overrides: Any) -> TuneConfig:
    """Validate the file at ``path`` (``overrides`` replace its keys) into a TuneConfig."""
    path = Path(path)
    return parse(load_file(path) | overrides, base_dir=path.absolute().parent, where=str(path))


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
    for key in ("model", "data", "eval_data"):
        values[key] = _existing_path(raw, key, base_dir)
    out = raw.get("output_dir", str(default.output_dir))
    if not isinstance(out, str) or not out:
        raise TuneConfigError(f"output_dir must be a folder path (a string), got {out!r}")
    values["output_dir"] = _absolute(base_dir, out)
    values["adapter"] = make_adapter(raw.get("adapter", DEFAULT_ADAPTER))
    return TuneConfig(**values)


def make_adapter(source: Any) -> ml.AdapterConfig:
    """``adapter``: a preset name (``"mov"``), a table ``{preset = "mov", num_experts = 4}``
    (the preset's keyword arguments), or ``{config = {...}}`` holding a full
    ``AdapterConfig`` as ``AdapterConfig.to_dict()`` / a ``mixlight_config.json`` writes it."""
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
            f"adapter.preset is {preset!r}; valid: {', '.join(PRESETS)} "
            "(or give adapter.config, a full AdapterConfig)"
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


def _existing_path(raw: dict[str, Any], key: str, base_dir: Path) -> Path | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TuneConfigError(
            f"{key} must be a path (a string), got {value!r}; omit it for the default"
        )
    path = _absolute(base_dir, value)
    if not path.exists():
        what = "checkpoint directory" if key == "model" else ".jsonl file or save_to_disk folder"
        raise TuneConfigError(
            f"{key} = {value!r}: nothing at {path} (expected a {what}; relative paths are "
            "taken from the config file's folder)"
        )
    return path


def _absolute(base_dir: Path, value: str) -> Path:
    """``value`` taken from ``base_dir``, absolute and without ``..`` steps."""
    return Path(os.path.abspath(base_dir / value))
