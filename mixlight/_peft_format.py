"""PEFT's adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``) in numpy:
read PEFT (IA)³ and LoRA adapters as mixlight experts, and write one-expert mixlight adapters
in PEFT's layout. Backend-neutral (safetensors.numpy); the model-facing functions are in
:mod:`mixlight._peft_api`.

The correspondence (PEFT 0.21 keys, ``P`` a module path; mixlight arrays from
:mod:`mixlight.experts`):

* (IA)³, ``base_model.model.P.ia3_l`` ``[d_out, 1]`` scales P's output:
  ``P.vectors[e] = ia3_l[:, 0]``.
* (IA)³ on a PEFT *feed-forward* module, ``ia3_l`` ``[1, d_in]`` scales P's input. mixlight
  scales outputs, so this maps only where the input is an activation's output: T5's
  ``X.DenseReluDense.wo`` input is ``X.DenseReluDense.act``'s output (times ``wi_1``'s in
  gated T5, and elementwise scaling commutes with that product), the mixlight T5 presets' FFN
  site. Other feed-forward modules are refused, naming the key.
* LoRA, ``P.lora_A.weight`` ``[r, d_in]`` and ``P.lora_B.weight`` ``[d_out, r]``, scaling
  ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``; ``rank_pattern`` / ``alpha_pattern``
  per module): ``P.lora_A[e] = A.T``, ``P.lora_B[e] = B.T``; a one-expert import sets
  ``LowRank(r, alpha)`` with ``alpha / r`` equal to PEFT's scaling, an upcycled expert of
  another scale gets PEFT's scaling folded into ``lora_B``.

Anything that changes the forward beyond these (DoRA, biases, modules_to_save, trainable
tokens, aLoRA, other variants) is refused, naming the PEFT key or config field.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from mixlight._atomic_dir import as_directory, explain_os_error, locked_writer, read_once
from mixlight.adapter_file import AdapterFileError
from mixlight.config import AdapterConfig, Site, SoftMerge
from mixlight.experts import LowRank, Vectors
from mixlight.site_spec import SiteSpec

PEFT_CONFIG_FILE = "adapter_config.json"
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


def read_peft(directory: str | os.PathLike) -> PeftAdapter:
    """Read a PEFT (IA)³ or LoRA adapter directory; refuse what mixlight cannot represent."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    root = as_directory(directory, "load_peft_adapter")
    config_path, weights_path = root / PEFT_CONFIG_FILE, root / PEFT_WEIGHTS_FILE
    if not config_path.is_file():
        raise AdapterFileError(
            f"{config_path} is missing; a PEFT adapter directory holds {PEFT_CONFIG_FILE} and "
            f"{PEFT_WEIGHTS_FILE} (what PeftModel.save_pretrained writes)"
        )
    try:
        config = json.loads(read_once(config_path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterFileError(f"{config_path} is not valid JSON ({err}); save it again") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        fmt = config.get("format") if isinstance(config, dict) else None
        hint = (
            "it is a mixlight 1.x adapter: load it with mixlight.load_adapter"
            if fmt == "mixlight.adapter"
            else "not a PEFT adapter config"
        )
        raise AdapterFileError(f"{config_path} has no peft_type: {hint}")
    if not weights_path.is_file():
        pickled = (root / "adapter_model.bin").is_file()
        raise AdapterFileError(
            f"{weights_path} is missing"
            + (
                " (the directory holds adapter_model.bin, a pickle, which mixlight never reads): "
                "re-save it with PeftModel.save_pretrained(dir, safe_serialization=True)"
                if pickled
                else "; copy the whole directory PeftModel.save_pretrained wrote"
            )
        )
    try:
        tensors = load(read_once(weights_path))
    except SafetensorError as err:
        raise AdapterFileError(
            f"{weights_path} is not a readable safetensors file ({err})"
        ) from None
    peft_type = str(config["peft_type"]).upper()
    if peft_type == "IA3":
        modules = _ia3_modules(config, tensors, weights_path)
    elif peft_type == "LORA":
        modules = _lora_modules(config, tensors, weights_path)
    else:
        raise AdapterFileError(
            f"{config_path}: peft_type {config['peft_type']!r} has no mixlight counterpart; "
            "mixlight imports IA3 and LORA adapters"
        )
    if not modules:
        raise AdapterFileError(f"{weights_path} holds no adapter weights")
    return PeftAdapter(peft_type, config, modules)


def _module_key(name: str, suffix: str, where: Path) -> str:
    """The module path in PEFT key ``base_model.model.<path><suffix>``."""
    if not name.startswith(PREFIX) or not name.endswith(suffix):
        raise AdapterFileError(
            f"{where}: key {name!r} is not of the form '{PREFIX}<module path>{suffix}'"
        )
    return name[len(PREFIX) : -len(suffix)]


def _unknown(name: str, where: Path, what: str) -> AdapterFileError:
    return AdapterFileError(
        f"{where}: key {name!r} is not part of a plain {what} adapter (modules_to_save, "
        f"trainable tokens, DoRA and other variants have no mixlight counterpart); retrain "
        "without them to import"
    )


def _ia3_modules(
    config: Mapping[str, Any], tensors: Mapping[str, np.ndarray], where: Path
) -> dict[str, PeftModule]:
    if config.get("modules_to_save"):
        raise AdapterFileError(
            f"{where.parent / PEFT_CONFIG_FILE}: modules_to_save={config['modules_to_save']!r} "
            "trains whole modules, which a mixlight adapter cannot hold; retrain without it"
        )
    modules: dict[str, PeftModule] = {}
    for name in sorted(tensors):
        if not name.endswith(".ia3_l"):
            raise _unknown(name, where, "(IA)³")
        module = _module_key(name, ".ia3_l", where)
        value = np.asarray(tensors[name], np.float32)
        feedforward = _is_feedforward(config.get("feedforward_modules"), module)
        if value.ndim != 2 or value.shape[1 if not feedforward else 0] != 1:
            raise AdapterFileError(
                f"{where}: {name} has shape {value.shape}; PEFT writes [d_out, 1] for a module "
                "it scales at the output and [1, d_in] for a feedforward module"
            )
        path = module
        if feedforward:
            t5 = T5_FFN_INPUT.fullmatch(module)
            if t5 is None:
                raise AdapterFileError(
                    f"{where}: {name} scales the input of feedforward module {module}; mixlight "
                    "scales module outputs and represents input scaling only for T5's "
                    "DenseReluDense.wo (as the output of DenseReluDense.act). Retrain with "
                    f"{module!r} out of feedforward_modules, or target the layer that feeds it"
                )
            path = f"{t5['ffn']}.act"
        modules[path] = PeftModule(path, PREFIX + module, "vectors", {"vectors": value.reshape(-1)})
    return modules


def _is_feedforward(feedforward: Any, key: str) -> bool:
    """PEFT's rule: a string is a regex fullmatched against the module path, a list matches
    by suffix."""
    if not feedforward:
        return False
    if isinstance(feedforward, str):
        return re.fullmatch(feedforward, key) is not None
    return any(key == f or key.endswith(f".{f}") for f in feedforward)


def _lora_modules(
    config: Mapping[str, Any], tensors: Mapping[str, np.ndarray], where: Path
) -> dict[str, PeftModule]:
    for field in _LORA_UNSUPPORTED:
        if config.get(field):
            raise AdapterFileError(
                f"{where.parent / PEFT_CONFIG_FILE}: {field}={config[field]!r} changes the "
                "forward in a way a mixlight LoRA expert does not compute; retrain without it"
            )
    if config.get("bias", "none") != "none":
        raise AdapterFileError(
            f"{where.parent / PEFT_CONFIG_FILE}: bias={config['bias']!r} trains base-model biases, "
            "which a mixlight adapter cannot hold; retrain with bias='none'"
        )
    pairs: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for name in sorted(tensors):
        short = next((s for s in ("lora_A", "lora_B") if name.endswith(f".{s}.weight")), None)
        if short is None:
            raise _unknown(name, where, "LoRA")
        pairs[_module_key(name, f".{short}.weight", where)][short] = np.asarray(
            tensors[name], np.float32
        )
    modules = {}
    for module, pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"}:
            missing = ({"lora_A", "lora_B"} - set(pair)).pop()
            raise AdapterFileError(f"{where}: {PREFIX}{module}.{missing}.weight is missing")
        a, b = pair["lora_A"], pair["lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise AdapterFileError(
                f"{where}: {PREFIX}{module}.lora_A.weight {a.shape} and lora_B.weight {b.shape} "
                "are not a linear layer's [r, d_in] and [d_out, r] (convolution and embedding "
                "LoRA have no mixlight counterpart)"
            )
        rank = a.shape[0]
        alpha = float(
            _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", 8))
        )
        scale = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        modules[module] = PeftModule(
            module, PREFIX + module, "low_rank", {"lora_A": a.T.copy(), "lora_B": b.T.copy()}, scale
        )
    return modules


def _pattern_value(patterns: Any, module: str, default: Any) -> Any:
    """PEFT's ``rank_pattern`` / ``alpha_pattern`` lookup: the first key that matches the end
    of the module path as a regex."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


# --- PEFT -> mixlight ----------------------------------------------------------------------


def one_expert_config(peft: PeftAdapter) -> AdapterConfig:
    """The one-expert mixlight config of exactly the PEFT adapter's modules: one site per
    expert kind (and LoRA rank and scale), its pattern matching exactly those paths."""
    groups: dict[tuple[str, int, float], list[str]] = defaultdict(list)
    for module in peft.modules.values():
        groups[(module.kind, module.rank, module.scale)].append(module.path)
    sites = []
    for (kind, rank, scale), paths in sorted(groups.items()):
        expert = Vectors() if kind == "vectors" else LowRank(rank, scale * rank)
        sites.append(Site(exact_pattern(paths), expert))
    ranks = sorted({r for kind, r, _ in groups if kind == "low_rank"})
    method = "IA3" if peft.peft_type == "IA3" else "LoRA-r" + "/".join(map(str, ranks))
    return AdapterConfig(sites, 1, SoftMerge(), method=f"{method} (from PEFT)")


def check_upcycle(peft: PeftAdapter, config: AdapterConfig) -> None:
    """Refuse an upcycling config that does not hold every PEFT module with its kind (and
    LoRA rank), before anything is injected."""
    compiled = [(site, re.compile(site.pattern)) for site in config.sites]
    for module in peft.modules.values():
        site = next((s for s, regex in compiled if regex.fullmatch(module.path)), None)
        if site is None:
            raise AdapterFileError(
                f"PEFT module {module.key} (mixlight site {module.path}) matches no site of the "
                f"upcycling config {config.method} (patterns "
                f"{[s.pattern for s in config.sites]}); its trained values would be lost: add a "
                "site for it, or import without upcycle="
            )
        if site.expert.kind != module.kind:
            raise AdapterFileError(
                f"PEFT module {module.key} is {_kind_text(module.kind)} but upcycling site "
                f"{site.pattern!r} holds {site.expert.kind!r} experts; upcycle (IA)³ into "
                "ml.MoV and LoRA into ml.MoLoRA"
            )
        expert_rank = getattr(site.expert, "rank", None)
        if module.kind == "low_rank" and expert_rank != module.rank:
            raise AdapterFileError(
                f"PEFT module {module.key} has rank {module.rank} but upcycling site "
                f"{site.pattern!r} has rank {expert_rank}; use ml.MoLoRA(..., rank={module.rank})"
            )


def _kind_text(kind: str) -> str:
    return "(IA)³ vectors" if kind == "vectors" else "LoRA"


def fill_experts(
    peft: PeftAdapter, specs: Sequence[SiteSpec], arrays: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``arrays`` (a model's adapter state) with every expert of each PEFT module's site set
    to the PEFT values; routers and sites PEFT did not adapt keep their values."""
    out = {name: np.array(value, np.float32) for name, value in arrays.items()}
    by_path = {spec.path: spec for spec in specs}
    for module in peft.modules.values():
        spec = by_path.get(module.path)
        if spec is None:
            raise AdapterFileError(
                f"PEFT module {module.key} maps to {module.path}, which the model has no site "
                "for; load the PEFT adapter into the base model it was trained on"
            )
        values = dict(module.arrays)
        expert_scale = getattr(spec.expert, "scale", None)
        if module.kind == "low_rank" and expert_scale is not None:
            ratio = module.scale / float(expert_scale)  # PEFT's scale folded into lora_B
            values["lora_B"] = (values["lora_B"] * ratio).astype(np.float32)
        for short, value in values.items():
            name = spec.canonical_name(short)
            target = out[name]
            if target.shape[1:] != value.shape:
                raise AdapterFileError(
                    f"PEFT module {module.key}: its {short} has shape {value.shape}, the model's "
                    f"{module.path} needs {target.shape[1:]}; the PEFT adapter was trained on "
                    "another base model"
                )
            target[...] = value[None]
    return out


def exact_pattern(paths: Sequence[str]) -> str:
    """A regex that fullmatches exactly ``paths``: paths that differ only in numeric parts
    are merged (``encoder\\.block\\.(?:0|1)\\.layer...``) where that adds no other path."""
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for path in paths:
        groups[tuple("#" if p.isdigit() else p for p in path.split("."))].append(path)
    alternatives = []
    for template, members in groups.items():
        numbers = [tuple(p for p in m.split(".") if p.isdigit()) for m in members]
        columns = [sorted(set(col), key=int) for col in zip(*numbers, strict=True)]
        if math.prod(len(c) for c in columns) == len(set(numbers)):
            values = iter(columns)
            alternatives.append(
                r"\.".join(_choice(next(values)) if p == "#" else re.escape(p) for p in template)
            )
        else:
            alternatives += [re.escape(m) for m in sorted(set(members))]
    pattern = alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"
    assert all(re.fullmatch(pattern, p) for p in paths)
    return pattern


def _choice(values: list[str]) -> str:
    return values[0] if len(values) == 1 else "(?:" + "|".join(values) + ")"


# --- mixlight -> PEFT ----------------------------------------------------------------------

_ACTIVATION_NAMES = {"act", "act_fn", "activation", "activation_fn", "gelu", "relu", "silu"}


def peft_state(
    config: AdapterConfig,
    specs: Sequence[SiteSpec],
    arrays: Mapping[str, np.ndarray],
    *,
    base_model: str | None = None,
    task_type: str | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """PEFT's ``(adapter_config, tensors)`` for a one-expert adapter."""
    if config.num_experts != 1:
        raise AdapterFileError(
            f"{config.method} routes between {config.num_experts} experts, which PEFT cannot "
            "represent; export a one-expert adapter (IA3, LoRA, or MoV/MoLoRA with "
            "num_experts=1), or merge the mixture at a routing distribution first"
        )
    kinds = {spec.expert.kind for spec in specs}
    if len(kinds) != 1 or not kinds <= {"vectors", "low_rank"}:
        raise AdapterFileError(
            f"{config.method} has expert kinds {sorted(kinds)}; a PEFT adapter holds one "
            "type: export an adapter of only vectors (PEFT IA3) or only low_rank (PEFT LoRA)"
        )
    tensors: dict[str, np.ndarray] = {}
    common: dict[str, Any] = {
        "base_model_name_or_path": base_model,
        "revision": None,
        "task_type": task_type,
        "inference_mode": True,
        "modules_to_save": None,
        "fan_in_fan_out": False,
        "exclude_modules": None,
    }
    if kinds == {"vectors"}:
        targets, feedforward = [], []
        for spec in specs:
            vector = np.asarray(arrays[spec.canonical_name("vectors")], np.float32)[0]
            t5 = T5_FFN_ACT.fullmatch(spec.path)
            if t5 is not None:
                module = f"{t5['ffn']}.wo"
                feedforward.append(module)
                tensors[f"{PREFIX}{module}.ia3_l"] = vector[None, :].copy()
            elif spec.path.rsplit(".", 1)[-1] in _ACTIVATION_NAMES:
                raise AdapterFileError(
                    f"site {spec.path} scales an activation's output; PEFT (IA)³ scales linear "
                    "layers (outputs, or inputs of feedforward modules), and mixlight maps an "
                    "activation only for T5's DenseReluDense.act; target linear layers to export"
                )
            else:
                module = spec.path
                tensors[f"{PREFIX}{module}.ia3_l"] = vector[:, None].copy()
            targets.append(module)
        peft_config = dict(
            common,
            peft_type="IA3",
            target_modules=sorted(targets),
            feedforward_modules=sorted(feedforward),
            init_ia3_weights=True,
        )
        return peft_config, tensors
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for spec in specs:
        expert: LowRank = spec.expert  # type: ignore[assignment]
        a = np.asarray(arrays[spec.canonical_name("lora_A")], np.float32)[0]
        b = np.asarray(arrays[spec.canonical_name("lora_B")], np.float32)[0]
        tensors[f"{PREFIX}{spec.path}.lora_A.weight"] = a.T.copy()
        tensors[f"{PREFIX}{spec.path}.lora_B.weight"] = b.T.copy()
        ranks[spec.path], alphas[spec.path] = expert.rank, float(expert.alpha)
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    peft_config = dict(
        common,
        peft_type="LORA",
        target_modules=sorted(ranks),
        r=r,
        lora_alpha=_number(alpha),
        rank_pattern={re.escape(p): v for p, v in ranks.items() if v != r},
        alpha_pattern={re.escape(p): _number(v) for p, v in alphas.items() if v != alpha},
        lora_dropout=0.0,
        bias="none",
        use_rslora=False,
        use_dora=False,
        init_lora_weights=True,
    )
    return peft_config, tensors


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def write_peft(
    directory: str | os.PathLike, peft_config: Mapping[str, Any], tensors: Mapping[str, np.ndarray]
) -> Path:
    """Write PEFT's two files into ``directory``, each replaced atomically under mixlight's
    writer lock (weights first; PEFT has no single commit point of its own)."""
    from safetensors.numpy import save

    out = as_directory(directory, "save_peft_adapter")
    weights = save(dict(tensors), metadata={"format": "pt"})
    text = json.dumps(dict(peft_config), indent=2, sort_keys=True) + "\n"
    committed: list[str] = []
    try:
        with locked_writer(out) as writer:
            committed = writer.committed
            writer.stage(PEFT_WEIGHTS_FILE, weights)
            writer.stage(PEFT_CONFIG_FILE, text.encode())
            writer.commit(PEFT_WEIGHTS_FILE)
            writer.commit(PEFT_CONFIG_FILE)
    except OSError as err:
        raise explain_os_error(err, out, bool(committed)) from err
    return out


__all__ = [
    "PeftAdapter",
    "PeftModule",
    "check_upcycle",
    "exact_pattern",
    "fill_experts",
    "one_expert_config",
    "peft_state",
    "read_peft",
    "write_peft",
]
