"""Read a PEFT adapter directory into plain numpy data (:class:`PeftAdapter`), checking
every config field and weight the way PEFT reads them; see :mod:`mixlight._peft` for the
correspondence."""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from mixlight._atomic_dir import as_directory, read_once
from mixlight._pattern_bounds import check_bounded
from mixlight._safetensors_floats import read_float32, short_repr
from mixlight.adapter_file import PEFT_CONFIG_FILE, WEIGHTS_FILE, AdapterFileError, check_finite

PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
T5_FFN_INPUT = re.compile(r"(?P<ffn>(?:.*\.)?DenseReluDense)\.wo")
T5_FFN_ACT = re.compile(r"(?P<ffn>(?:.*\.)?DenseReluDense)\.act")
# LoRA config fields that change the forward in ways a LoRA expert does not compute.
_LORA_UNSUPPORTED = (
    "use_dora",
    "lora_bias",
    "alora_invocation_tokens",
    "layer_replication",
    "target_parameters",
    "modules_to_save",
    "trainable_token_indices",
    "use_qalora",
    "velora_config",
    "monteclora_config",
    "arrow_config",
    "use_bdlora",
    "megatron_config",
)


@attrs.frozen
class PeftModule:
    """One adapted module of a PEFT adapter, in mixlight's terms.

    Attributes:
      path: the mixlight site path (for a T5 FFN input scaling, ``...DenseReluDense.act``).
      key: the PEFT key prefix it came from (``base_model.model.<module path>``), for errors.
      kind: ``"vectors"`` or ``"low_rank"``.
      tensor: which tensor of ``path`` the site adapts: ``"output"``, or ``"input"`` for a
        PEFT feed-forward module other than T5's ``wo``.
      arrays: one expert's parameters by short name, mixlight layout without the expert
        axis: ``vectors [d]``; ``lora_A [d_in, r]``, ``lora_B [d_out, r]`` transposed to
        ``[r, d_out]``.
      scale: the LoRA scaling PEFT applies (1.0 for vectors).
    """

    path: str
    key: str
    kind: str
    arrays: dict[str, np.ndarray]
    scale: float = 1.0
    tensor: str = "output"

    @property
    def rank(self) -> int:
        return int(self.arrays["lora_A"].shape[1]) if self.kind == "low_rank" else 0


@attrs.frozen
class PeftAdapter:
    """A PEFT adapter directory read into numpy."""

    peft_type: str
    config: dict[str, Any]
    modules: dict[str, PeftModule]  # by mixlight path

    @property
    def base_model(self) -> str | None:
        name = self.config.get("base_model_name_or_path")
        return str(name) if name else None


_RECOPY = "copy the adapter directory again (the files PeftModel.save_pretrained writes)"
_RESAVE = "re-save it with PeftModel.save_pretrained (or restore the original file)"
_IMPORTED_TYPES = ("IA3", "LORA")


def read_peft(directory: str | os.PathLike[str]) -> PeftAdapter:
    """Read a PEFT (IA)³ or LoRA adapter directory; refuse, naming the file and the key or
    field, what mixlight cannot represent and what is not a well-formed PEFT adapter."""
    root = as_directory(directory, "load_peft_adapter")
    _check_directory(root)
    config_path, weights_path = root / PEFT_CONFIG_FILE, root / PEFT_WEIGHTS_FILE
    config = _read_config(config_path)
    peft_type = _peft_type(config, config_path)
    _module_names(config, "target_modules", config_path)
    tensors = _read_weights(weights_path)
    read_modules = _ia3_modules if peft_type == "IA3" else _lora_modules
    modules = read_modules(config, tensors, config_path, weights_path)
    if not modules:
        raise AdapterFileError(f"{weights_path} holds no adapter weights; {_RECOPY}")
    return PeftAdapter(peft_type, config, modules)


def _check_directory(root: Path) -> None:
    if not root.exists():
        raise AdapterFileError(
            f"PEFT adapter directory {root} does not exist; pass the directory "
            "PeftModel.save_pretrained wrote (or a Hub repo id)"
        )
    if not root.is_dir():
        hint = (
            f"pass its directory {root.parent}"
            if root.name in (PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE)
            else f"pass the directory that holds {PEFT_CONFIG_FILE} and {PEFT_WEIGHTS_FILE}"
        )
        raise AdapterFileError(f"{root} is a file, not a PEFT adapter directory; {hint}")


def _read_bytes(path: Path) -> bytes:
    try:
        return read_once(path)
    except OSError as err:
        raise AdapterFileError(
            f"cannot read {path} ({err.strerror or err}); make it a readable regular file"
        ) from None


def _read_config(path: Path) -> dict[str, Any]:
    """``adapter_config.json`` as a JSON object that has a ``peft_type``."""
    if not path.is_file() and (path.parent / WEIGHTS_FILE).is_file():
        raise AdapterFileError(
            f"{path.parent} is a mixlight adapter directory (it holds {WEIGHTS_FILE}), not a "
            "PEFT one; load it with mixlight.load_adapter"
        )
    if not path.is_file():
        raise AdapterFileError(
            f"{path} is missing; a PEFT adapter directory holds {PEFT_CONFIG_FILE} and "
            f"{PEFT_WEIGHTS_FILE} (what PeftModel.save_pretrained writes)"
        )
    data = _read_bytes(path)
    try:
        config = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise AdapterFileError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); {_RESAVE}"
        ) from None
    except json.JSONDecodeError as err:
        raise AdapterFileError(f"{path} is not valid JSON ({err}); {_RESAVE}") from None
    except RecursionError:
        raise AdapterFileError(
            f"{path} nests JSON arrays or objects too deeply to read (no PEFT config does); "
            + _RESAVE
        ) from None
    if not isinstance(config, dict):
        raise AdapterFileError(
            f"{path} holds a JSON {type(config).__name__}, not an object: not a PEFT adapter "
            f"config; {_RESAVE}"
        )
    if "peft_type" not in config:
        raise AdapterFileError(
            f'{path} has no peft_type: not a PEFT adapter config (PEFT writes e.g. "peft_type": '
            '"LORA"); point at the directory PeftModel.save_pretrained wrote'
        )
    return config


def _peft_type(config: Mapping[str, Any], path: Path) -> str:
    """The config's ``peft_type``, upper-cased, if mixlight imports it."""
    value = config["peft_type"]
    if not isinstance(value, str):
        raise AdapterFileError(
            f'{path}: peft_type {short_repr(value)} is not a string (PEFT writes e.g. "IA3" or '
            f'"LORA"); {_RESAVE}'
        )
    if value.upper() not in _IMPORTED_TYPES:
        raise AdapterFileError(
            f"{path}: peft_type {value!r} has no mixlight counterpart; mixlight imports IA3 and "
            "LORA adapters"
        )
    return value.upper()


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    """``adapter_model.safetensors`` as float32 arrays (bf16, f16 and f64 upcast), all
    finite."""
    if not path.is_file():
        pickled = (path.parent / "adapter_model.bin").is_file()
        raise AdapterFileError(
            f"{path} is missing"
            + (
                " (the directory holds adapter_model.bin, a pickle, which mixlight never reads): "
                "re-save it with PeftModel.save_pretrained(dir, safe_serialization=True)"
                if pickled
                else "; copy the whole directory PeftModel.save_pretrained wrote"
            )
        )
    tensors = read_float32(_read_bytes(path), path, _RECOPY)
    check_finite(
        tensors,
        str(path),
        "the adapter was saved from a diverged run: use an earlier checkpoint, or retrain it",
    )
    return tensors


# --- config fields: checked as PEFT reads them ----------------------------------------------


def _module_names(config: Mapping[str, Any], field: str, where: Path) -> str | list[str] | None:
    """A module-selecting field (``target_modules``, ``feedforward_modules``): None, a
    regex fullmatched against module paths, or a list of module names matched by suffix."""
    value = config.get(field)
    if value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    if isinstance(value, str):
        _check_regex(field, value, where)
        return value
    raise AdapterFileError(
        f"{where}: {field}={short_repr(value)} is neither a regular expression nor a list of "
        f'module names; write it as PEFT does (e.g. ["q", "v"]), or {_RESAVE}'
    )


def _patterns(config: Mapping[str, Any], field: str, where: Path) -> dict[str, Any]:
    """``rank_pattern`` / ``alpha_pattern``: ``{module regex: value}``, each key a regex."""
    value = config.get(field) or {}
    if not isinstance(value, dict):
        raise AdapterFileError(
            f"{where}: {field} is a {type(value).__name__} ({short_repr(value)}), not a JSON "
            f'object {{module regex: value}}; write it as PEFT does (e.g. {{"q": 16}}), or '
            "remove it"
        )
    for key in value:
        _check_regex(field, key, where, compiled_as=_suffix_regex(key))
    return value


def _suffix_regex(key: str) -> str:
    """PEFT's pattern-key match: the key's regex at the end of the module path."""
    return rf"(.*\.)?({key})$"


def _check_regex(field: str, pattern: str, where: Path, compiled_as: str | None = None) -> None:
    """``pattern`` (as PEFT compiles it: ``compiled_as``) must be a valid regex."""
    try:
        re.compile(pattern if compiled_as is None else compiled_as)
    except re.error as err:
        raise AdapterFileError(
            f"{where}: {field} entry {pattern!r} is not a valid regular expression ({err}); "
            "correct or remove it"
        ) from None
    try:  # a file's pattern is data: matched only when its matching time is bounded
        check_bounded(pattern if compiled_as is None else compiled_as, str(where), field)
    except ValueError as err:
        raise AdapterFileError(str(err)) from None


def _pattern_key(patterns: Mapping[str, Any], module: str) -> str | None:
    """The first ``rank_pattern`` / ``alpha_pattern`` key matching ``module``, as PEFT picks."""
    return next((key for key in patterns if re.match(_suffix_regex(key), module)), None)


def _as_real(value: Any) -> float | None:
    """``value`` as a finite float; None for anything else (null, true, strings, inf, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# --- (IA)³ ----------------------------------------------------------------------------------


def _ia3_modules(
    config: Mapping[str, Any], tensors: Mapping[str, np.ndarray], config_path: Path, where: Path
) -> dict[str, PeftModule]:
    if config.get("modules_to_save"):
        raise AdapterFileError(
            f"{config_path}: modules_to_save={config['modules_to_save']!r} "
            "trains whole modules, which a mixlight adapter cannot hold; retrain without it"
        )
    feedforward = _module_names(config, "feedforward_modules", config_path)
    modules: dict[str, PeftModule] = {}
    for name in sorted(tensors):
        module = _ia3_module(name, tensors[name], feedforward, where)
        if module.path in modules:
            raise AdapterFileError(
                f"{where}: {modules[module.path].key}.ia3_l and {module.key}.ia3_l both scale "
                f"{module.path}'s output (T5's DenseReluDense.wo input is DenseReluDense.act's "
                "output), and one mixlight site holds one vector; PEFT never writes both, so "
                "remove the hand-added one"
            )
        modules[module.path] = module
    return modules


def _ia3_module(
    name: str, value: np.ndarray, feedforward: str | list[str] | None, where: Path
) -> PeftModule:
    if not name.endswith(".ia3_l"):
        raise _unknown(name, where, "(IA)³")
    module = _module_key(name, ".ia3_l", where)
    is_feedforward = _is_feedforward(feedforward, module)
    if value.ndim != 2 or value.shape[0 if is_feedforward else 1] != 1:
        raise AdapterFileError(
            f"{where}: {name} has shape {value.shape}; PEFT writes [d_out, 1] for a module "
            "it scales at the output and [1, d_in] for a feedforward module: check "
            f"feedforward_modules in {PEFT_CONFIG_FILE}, or {_RECOPY}"
        )
    path, tensor = module, "output"
    if is_feedforward:
        t5 = T5_FFN_INPUT.fullmatch(module)
        if t5 is None:
            tensor = "input"  # Site(module, Vectors(), tensor="input")
        else:
            path = f"{t5['ffn']}.act"
    vectors = {"vectors": value.reshape(-1)}
    return PeftModule(path, PREFIX + module, "vectors", vectors, tensor=tensor)


def _module_key(name: str, suffix: str, where: Path) -> str:
    """The module path in PEFT key ``base_model.model.<path><suffix>``."""
    module = name[len(PREFIX) : len(name) - len(suffix)]
    if not name.startswith(PREFIX) or not name.endswith(suffix) or "" in module.split("."):
        raise AdapterFileError(
            f"{where}: key {name!r} is not of the form '{PREFIX}<module path>{suffix}' "
            f"that PEFT writes; {_RESAVE}"
        )
    return module


def _unknown(name: str, where: Path, what: str) -> AdapterFileError:
    return AdapterFileError(
        f"{where}: key {name!r} is not part of a plain {what} adapter (modules_to_save, "
        f"trainable tokens, DoRA and other variants have no mixlight counterpart); retrain "
        "without them to import"
    )


def _is_feedforward(feedforward: str | list[str] | None, key: str) -> bool:
    """PEFT's rule: a string is a regex fullmatched against the module path, a list matches
    by suffix."""
    if not feedforward:
        return False
    if isinstance(feedforward, str):
        return re.fullmatch(feedforward, key) is not None
    return any(key == f or key.endswith(f".{f}") for f in feedforward)


# --- LoRA -----------------------------------------------------------------------------------


def _lora_modules(
    config: Mapping[str, Any], tensors: Mapping[str, np.ndarray], config_path: Path, where: Path
) -> dict[str, PeftModule]:
    _refuse_lora_variants(config, config_path)
    ranks, alphas = (_patterns(config, f, config_path) for f in ("rank_pattern", "alpha_pattern"))
    modules = {}
    for module, (a, b) in _lora_pairs(tensors, where).items():
        rank = _lora_rank(module, a, b, where)
        _check_configured_rank(config, ranks, module, rank, config_path)
        alpha = _lora_alpha(config, alphas, module, config_path)
        scale = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        arrays = {"lora_A": a.T.copy(), "lora_B": b.T.copy()}
        modules[module] = PeftModule(module, PREFIX + module, "low_rank", arrays, scale)
    return modules


def _refuse_lora_variants(config: Mapping[str, Any], where: Path) -> None:
    for field in _LORA_UNSUPPORTED:
        if config.get(field):
            raise AdapterFileError(
                f"{where}: {field}={config[field]!r} changes the forward in a way a mixlight "
                "LoRA expert does not compute; retrain without it"
            )
    if config.get("bias", "none") != "none":
        raise AdapterFileError(
            f"{where}: bias={config['bias']!r}; PEFT trains base-model biases unless "
            "bias='none', which a mixlight adapter cannot hold: retrain with bias='none'"
        )


def _lora_pairs(
    tensors: Mapping[str, np.ndarray], where: Path
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each module's ``(lora_A.weight, lora_B.weight)``; any other key is refused."""
    pairs: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for name in sorted(tensors):
        short = next((s for s in ("lora_A", "lora_B") if name.endswith(f".{s}.weight")), None)
        if short is None:
            raise _unknown(name, where, "LoRA")
        pairs[_module_key(name, f".{short}.weight", where)][short] = tensors[name]
    for module, pair in pairs.items():
        missing = sorted({"lora_A", "lora_B"} - set(pair))
        if missing:
            raise AdapterFileError(
                f"{where}: {PREFIX}{module}.{missing[0]}.weight is missing (a LoRA module "
                f"needs lora_A and lora_B); {_RECOPY}"
            )
    return {module: (pair["lora_A"], pair["lora_B"]) for module, pair in pairs.items()}


def _lora_rank(module: str, a: np.ndarray, b: np.ndarray, where: Path) -> int:
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise AdapterFileError(
            f"{where}: {PREFIX}{module}.lora_A.weight {a.shape} and lora_B.weight {b.shape} "
            "are not a linear layer's [r, d_in] and [d_out, r]; mixlight imports LoRA of "
            "linear layers only (convolution and embedding LoRA have no mixlight counterpart)"
        )
    if a.shape[0] == 0:
        raise AdapterFileError(
            f"{where}: {PREFIX}{module}.lora_A.weight {a.shape} has rank 0 (PEFT ranks are at "
            f"least 1); {_RECOPY}"
        )
    return int(a.shape[0])


def _check_configured_rank(
    config: Mapping[str, Any], patterns: Mapping[str, Any], module: str, rank: int, where: Path
) -> None:
    """The rank PEFT would build for ``module`` (``rank_pattern``, else ``r``) must be the
    weights' rank; a config without ``r`` leaves it to the weights."""
    key = _pattern_key(patterns, module)
    if key is not None:
        field, value = f"rank_pattern[{key!r}]", patterns[key]
    elif config.get("r") is not None:
        field, value = "r", config["r"]
    else:
        return
    if not _is_positive_int(value):
        raise AdapterFileError(
            f"{where}: {field}={short_repr(value)} is not a positive integer; set it to the LoRA "
            f"rank the adapter was trained with ({rank} for {module})"
        )
    if value != rank:
        raise AdapterFileError(
            f"{where}: {field}={value} for {module}, but its lora_A.weight has rank {rank}; "
            "PEFT cannot load this directory and the LoRA scale alpha/r is ambiguous: set "
            f"{field} to {rank} if the weights are right"
        )


def _lora_alpha(
    config: Mapping[str, Any], patterns: Mapping[str, Any], module: str, where: Path
) -> float:
    """``module``'s LoRA alpha: its ``alpha_pattern`` entry, else ``lora_alpha`` (PEFT's
    default 8); a finite number (its sign and zero are exact: see :func:`_expert_scale`)."""
    key = _pattern_key(patterns, module)
    field = "lora_alpha" if key is None else f"alpha_pattern[{key!r}]"
    value = config.get("lora_alpha", 8) if key is None else patterns[key]
    alpha = _as_real(value)
    if alpha is None:
        raise AdapterFileError(
            f"{where}: {field}={short_repr(value)} is not a finite number; set it to the LoRA "
            "alpha the adapter was trained with (PEFT's default is 8)"
        )
    return alpha
