"""mixlight -> PEFT: a one-expert adapter as PEFT's files, refusing what PEFT would load with
other outputs or not at all."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mixlight._atomic_dir import as_directory, explain_os_error, locked_writer
from mixlight._peft.reading import PEFT_WEIGHTS_FILE, PREFIX, T5_FFN_ACT
from mixlight.adapter_file import PEFT_CONFIG_FILE, AdapterFileError, check_finite
from mixlight.config import AdapterConfig
from mixlight.experts import LowRank
from mixlight.site_spec import SiteSpec

# --- mixlight -> PEFT ----------------------------------------------------------------------

_ACTIVATION_NAMES = {"act", "act_fn", "activation", "activation_fn", "gelu", "relu", "silu"}
# PEFT's TaskType values: PeftConfig refuses any other task_type.
PEFT_TASK_TYPES = (
    "SEQ_CLS",
    "SEQ_2_SEQ_LM",
    "CAUSAL_LM",
    "TOKEN_CLS",
    "QUESTION_ANS",
    "FEATURE_EXTRACTION",
)


def peft_state(
    config: AdapterConfig,
    specs: Sequence[SiteSpec],
    arrays: Mapping[str, np.ndarray],
    *,
    base_model: str | None = None,
    task_type: str | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """PEFT's ``(adapter_config, tensors)`` for a one-expert adapter; what PEFT would not
    load with the same outputs is refused."""
    _check_exportable(config, specs, task_type)
    check_finite(
        arrays,
        "refusing to save the PEFT adapter",
        "the run diverged (lower the learning rate or check the data) and nothing was written",
    )
    common: dict[str, Any] = {
        "base_model_name_or_path": base_model,
        "revision": None,
        "task_type": task_type,
        "inference_mode": True,
        "modules_to_save": None,
        "fan_in_fan_out": False,
        "exclude_modules": None,
    }
    if specs[0].expert.kind == "vectors":
        tensors, targets, feedforward = _ia3_tensors(specs, arrays)
        fields: dict[str, Any] = dict(
            peft_type="IA3",
            target_modules=targets,
            feedforward_modules=feedforward,
            init_ia3_weights=True,
        )
        return dict(common, **fields), tensors
    tensors = _lora_tensors(specs, arrays)
    return dict(common, **_lora_fields(specs)), tensors


def _check_exportable(
    config: AdapterConfig, specs: Sequence[SiteSpec], task_type: str | None
) -> None:
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
    if task_type is not None and task_type not in PEFT_TASK_TYPES:
        raise ValueError(
            f"task_type={task_type!r} is not one of PEFT's task types, so PEFT would refuse "
            f"the directory; pass one of {', '.join(PEFT_TASK_TYPES)}, or None for a plain "
            "PeftModel"
        )


def _ia3_tensors(
    specs: Sequence[SiteSpec], arrays: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """PEFT (IA)³ tensors by key, the modules they adapt, and those among them whose input
    they scale (PEFT's feedforward modules)."""
    tensors: dict[str, np.ndarray] = {}
    owners: dict[str, str] = {}  # PEFT module -> the mixlight site exported to it
    feedforward = []
    for spec in specs:
        module, scales_input = _ia3_target(spec)
        if module in owners:
            raise AdapterFileError(
                f"sites {owners[module]} and {spec.path} both export to PEFT's (IA)³ vector of "
                f"{module} (each scales its input or its output); PEFT holds one vector per "
                "module and no single vector computes both: export an adapter with only one "
                "of these sites (retrain without the other)"
            )
        owners[module] = spec.path
        vector = np.asarray(arrays[spec.canonical_name("vectors")], np.float32)[0]
        tensors[f"{PREFIX}{module}.ia3_l"] = (
            vector[None, :] if scales_input else vector[:, None]
        ).copy()
        if scales_input:
            feedforward.append(module)
    return tensors, sorted(owners), sorted(feedforward)


def _ia3_target(spec: SiteSpec) -> tuple[str, bool]:
    """The module whose PEFT (IA)³ vector a vectors site becomes, and whether that vector
    scales the module's input (a ``tensor="input"`` site; T5's ``DenseReluDense.act`` output
    is ``wo``'s input)."""
    if spec.site.tensor == "input":
        return spec.path, True
    t5 = T5_FFN_ACT.fullmatch(spec.path)
    if t5 is not None:
        return f"{t5['ffn']}.wo", True
    _refuse_activation(spec)
    return spec.path, False


def _refuse_activation(spec: SiteSpec) -> None:
    if spec.path.rsplit(".", 1)[-1] in _ACTIVATION_NAMES:
        raise AdapterFileError(
            f"site {spec.path} adapts an activation's output; PEFT adapts layers with "
            "weights ((IA)³ scales a linear layer's output or a feedforward layer's input, "
            "LoRA adds to a linear layer), and mixlight maps an activation only for T5's "
            "DenseReluDense.act in (IA)³; target linear layers to export (the input of the "
            "layer the activation feeds is Site(<its path>, Vectors(), tensor='input'))"
        )


def _lora_tensors(
    specs: Sequence[SiteSpec], arrays: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for spec in specs:
        _refuse_activation(spec)
        a = np.asarray(arrays[spec.canonical_name("lora_A")], np.float32)[0]
        b = np.asarray(arrays[spec.canonical_name("lora_B")], np.float32)[0]
        tensors[f"{PREFIX}{spec.path}.lora_A.weight"] = a.T.copy()
        tensors[f"{PREFIX}{spec.path}.lora_B.weight"] = b.T.copy()
    return tensors


def _lora_fields(specs: Sequence[SiteSpec]) -> dict[str, Any]:
    """PEFT LoRA config fields: the most common rank and alpha, patterns for the others."""
    experts: dict[str, LowRank] = {spec.path: spec.expert for spec in specs}  # type: ignore[misc]
    ranks = {path: e.rank for path, e in experts.items()}
    alphas = {path: float(e.alpha) for path, e in experts.items()}
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    return dict(
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


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def write_peft(
    directory: str | os.PathLike[str],
    peft_config: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
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
