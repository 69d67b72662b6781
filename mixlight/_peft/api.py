"""PEFT interop for models: import a PEFT (IA)³ or LoRA adapter, optionally as every expert of
a mixture ("upcycling"), and export a one-expert adapter in PEFT's layout. Works in every
backend: the conversion is numpy (:mod:`mixlight._peft`), the model side goes through
the backend's adapter state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs

from mixlight._backend_registry import AnyModelBackend, backend_for_model
from mixlight._hub import resolve
from mixlight._peft.exporting import peft_state, write_peft
from mixlight._peft.importing import check_upcycle, fill_experts, one_expert_config
from mixlight._peft.reading import read_peft
from mixlight._rollback import adapter_for_loading
from mixlight.config import AdapterConfig


def load_peft_adapter(
    model: Any,
    source: str | os.PathLike[str],
    *,
    upcycle: AdapterConfig | None = None,
    seed: int | None = None,
    backend: str | None = None,
    adapter_name: str | None = None,
) -> Any:
    """Load a PEFT (IA)³ or LoRA adapter directory (or Hub repo id) into ``model``.

    Without ``upcycle`` the model gets the one-expert mixlight adapter that computes what the
    PEFT adapter computes (IA3 vectors / LoRA experts at exactly PEFT's modules; a
    feed-forward module's input scaling becomes a site that adapts that module's input,
    ``Site(path, Vectors(), tensor="input")``, except T5's ``wo``, whose input is the
    ``DenseReluDense.act`` site's output). With
    ``upcycle=ml.MoV(...)`` or ``ml.MoLoRA(...)``, the model is injected with that config
    (routers initialised as usual, from ``seed``) and every expert of each PEFT module's site
    starts from the PEFT values, so under soft merging (or renormalised top-k) the model
    computes the PEFT model's function at initialisation; sites PEFT did not adapt keep
    their identity initialisation. A model that already carries an adapter must carry this
    config. What PEFT computes but mixlight cannot, and a malformed directory, are refused
    before the model is touched, naming the file and the PEFT key or field; a load refused
    later (a weight whose shape does not fit the model) leaves the model as it was.
    ``adapter_name`` works as in :func:`mixlight.load_adapter`: a name the model does not
    have yet is added (inactive unless it is the first adapter). bf16, f16 and f64 weights
    are read as float32; weights holding NaN or inf are refused.
    """
    peft = read_peft(resolve(source, "load_peft_adapter"))
    if upcycle is not None:
        if not isinstance(upcycle, AdapterConfig):
            raise TypeError(
                "load_peft_adapter(upcycle=...) takes a mixlight.AdapterConfig such as "
                f"ml.MoV(10) or ml.MoLoRA(10, rank=...), got {type(upcycle).__name__}"
            )
        chosen = backend_for_model(model, backend, upcycle)
        config = _concrete(chosen, model, upcycle)
        check_upcycle(peft, config)
    else:
        config = one_expert_config(peft)
        chosen = backend_for_model(model, backend, config)
    with adapter_for_loading(chosen, model, config, adapter_name, seed):
        current, _ = chosen.adapter_specs(model, adapter_name)
        if attrs.evolve(current, backend=None) != attrs.evolve(config, backend=None):
            raise ValueError(
                f"the model already carries an adapter ({current.method}) other than the one "
                f"importing {source} needs ({config.method}); import into a fresh model, or "
                "pass upcycle= the config the model carries"
            )
        _, specs, arrays = chosen.adapter_state(model, adapter_name)
        chosen.load_adapter_state(model, fill_experts(peft, specs, arrays), adapter_name)
    return model


def _concrete(chosen: AnyModelBackend, model: Any, config: AdapterConfig) -> AdapterConfig:
    """``config`` with the sites it gets in ``model``: a preset's family defaults (made
    without ``targets=``) resolved by the backend from the model's type."""
    return chosen.resolve_config(model, config)


def save_peft_adapter(
    model: Any,
    directory: str | os.PathLike[str],
    *,
    task_type: str | None = None,
    backend: str | None = None,
    adapter_name: str | None = None,
) -> Path:
    """Write the model's one-expert adapter (IA3, LoRA, or MoV/MoLoRA with one expert) as a
    PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``) that
    ``peft.PeftModel.from_pretrained(base, directory)`` loads with the same outputs.
    ``task_type`` is PEFT's (e.g. ``"SEQ_2_SEQ_LM"``); None gives a plain ``PeftModel``.
    ``adapter_name`` picks one of the model's named adapters (default: the active one)."""
    from mixlight.api import _identity

    chosen = backend_for_model(model, backend)
    config, specs, arrays = chosen.adapter_state(model, adapter_name)
    base = _identity(chosen, model, adapter_name).name
    peft_config, tensors = peft_state(config, specs, arrays, base_model=base, task_type=task_type)
    return write_peft(directory, peft_config, tensors)
