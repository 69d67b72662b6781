"""The public model functions; each dispatches to the backend that owns the model.

Every function takes ``backend=`` (a backend name); it must name the model's own framework
(see :func:`mixlight._backend_registry.backend_for_model` for the order of choices)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import attrs
import numpy as np

from mixlight._atomic_dir import as_directory
from mixlight._backend_contract import ParameterCount, RoutingStats
from mixlight._backend_registry import ENV_VAR, AnyModelBackend, backend_for_model, model_backend
from mixlight._base_identity import BaseIdentity
from mixlight._hub import resolve
from mixlight._model_card import facts_of
from mixlight._rollback import adapter_for_loading, adds_adapter
from mixlight.adapter_file import (
    check_fits,
    check_patterns,
    read_adapter,
    warn_other_base,
    write_adapter,
)
from mixlight.config import AdapterConfig
from mixlight.named_adapters import DEFAULT

Model = TypeVar("Model")  # the framework's model type (nn.Module, nnx.Module, ...)


def inject(
    model: Model,
    config: AdapterConfig,
    *,
    backend: str | None = None,
    seed: int | None = None,
    adapter_name: str = DEFAULT,
) -> Model:
    """Wrap the modules matched by ``config``'s sites in adapters, freeze everything else,
    and return the model (modified in place).

    Freezing is torch's (``requires_grad`` off). JAX has no such flag: in a Flax NNX model
    the base parameters stay ``nnx.Param``, and training the adapter alone means selecting
    it, ``nnx.Optimizer(model, tx, wrt=mixlight_jax.trainable(model))`` and
    ``nnx.DiffState(0, trainable(model))`` (see :func:`mixlight_jax.model.inject`).

    ``seed`` fixes the adapters' initial values (drawn with numpy from the canonical
    initialisers, so a seed gives the same adapter in every backend); None takes it from the
    framework's own RNG where it has one (``torch.manual_seed``), else 0.
    ``adapter_name`` names the adapter; on a model that already has adapters, a new name adds
    one beside them, inactive until :func:`set_adapter` (as PEFT's ``add_adapter``).
    """
    if not isinstance(config, AdapterConfig):
        raise TypeError(
            f"inject(model, config): config must be a mixlight.AdapterConfig (e.g. "
            f"mixlight.MoV()), got {type(config).__name__}"
        )
    chosen = backend_for_model(model, backend, config)
    return cast(Model, chosen.inject(model, config, seed, adapter_name))


def save_adapter(
    model: Any,
    directory: str | os.PathLike[str],
    *,
    backend: str | None = None,
    adapter_name: str | None = None,
) -> Path:
    """Write the model's adapter to ``directory`` (mixlight_adapter.safetensors +
    mixlight_config.json + a README.md model card) with one commit point: the directory holds
    the previous adapter or this one, never a mix (see :func:`mixlight.extend.write_adapter`).
    ``adapter_name`` picks one of the model's named adapters (default: the active one)."""
    as_directory(directory, "save_adapter")
    chosen = backend_for_model(model, backend)
    config, specs, arrays = chosen.adapter_state(model, adapter_name)
    card = facts_of(chosen, model)
    if adapter_name is not None and adapter_name != adapter_names(model, backend=backend)[0]:
        card = attrs.evolve(card, routing=None)  # the last pass ran another adapter
    base = _identity(chosen, model, adapter_name)
    return write_adapter(directory, config, specs, arrays, base=base, card=card)


def load_adapter(
    model: Model,
    directory: str | os.PathLike[str],
    *,
    backend: str | None = None,
    adapter_name: str | None = None,
) -> Model:
    """Load an adapter directory, or a Hugging Face Hub repo id (``"user/repo"``, when no such
    local path exists and huggingface_hub is installed), into ``model``.

    An un-injected model is injected from the file's config first (whatever backend wrote the
    file); an injected one must have the same config. Shapes are checked against the model.
    With ``adapter_name``, the file goes into the adapter of that name: a name the model
    does not have yet is added from the file's config (inactive unless it is the model's
    first adapter: switch with :func:`set_adapter`, as in PEFT).
    """
    chosen = backend_for_model(model, backend)
    adapter = read_adapter(resolve(directory, "load_adapter"))
    config = attrs.evolve(adapter.config, backend=None)
    if adds_adapter(chosen, model, adapter_name):
        check_patterns(config, str(directory))  # a file's patterns are data
        specs = chosen.plan(model, config)
    else:
        current, specs = chosen.adapter_specs(model, adapter_name)
        if attrs.evolve(current, backend=None) != config:
            raise ValueError(
                f"the model already carries a different adapter ({current.method}) than "
                f"{directory} ({config.method}): "
                f"{_differences(attrs.evolve(current, backend=None), config)}; "
                "load into a fresh model or remove the adapter first"
            )
    check_fits(adapter, specs, str(directory))  # before the model changes
    with adapter_for_loading(chosen, model, config, adapter_name):
        warn_other_base(adapter, _identity(chosen, model, adapter_name), str(directory))
        chosen.load_adapter_state(model, adapter.arrays, adapter_name)
    return model


def adapter_names(model: Any, *, backend: str | None = None) -> list[str]:
    """The model's adapter names, the active one first."""
    return backend_for_model(model, backend).adapter_names(model)


def set_adapter(model: Any, adapter_name: str, *, backend: str | None = None) -> None:
    """Make ``adapter_name`` the adapter that runs and trains; the others stay, frozen.
    (JAX: no variable changes; train each adapter with its own ``nnx.Optimizer(model, tx,
    wrt=mixlight_jax.trainable(model, name))``, which stays valid across switches.)"""
    backend_for_model(model, backend).set_adapter(model, adapter_name)


def delete_adapter(model: Any, adapter_name: str, *, backend: str | None = None) -> None:
    """Remove one named adapter (the last one: the model is un-injected)."""
    backend_for_model(model, backend).delete_adapter(model, adapter_name)


def adapter_per_example(
    model: Model, adapter_names: Sequence[str], *, backend: str | None = None
) -> contextlib.AbstractContextManager[Model]:
    """Context manager in which example ``i`` of each batch runs adapter
    ``adapter_names[i]`` (``"__base__"``: the base model), as PEFT's mixed-batch inference;
    works under HF ``generate`` (beams repeat their example's adapter). Torch only (other
    backends raise ``NotSupported``, a ``TypeError``)."""
    chosen = backend_for_model(model, backend)
    return cast(
        contextlib.AbstractContextManager[Model], chosen.adapter_per_example(model, adapter_names)
    )


def remove_adapters(model: Model, *, backend: str | None = None) -> Model:
    """Put the original modules back and forget every adapter; returns the model (whose
    base parameters stay frozen, as they were)."""
    return cast(Model, backend_for_model(model, backend).remove_adapters(model))


def merge_and_unload(
    model: Any, *, routing: Mapping[str, np.ndarray] | None = None, backend: str | None = None
) -> Any:
    """Fold the active adapter into the base weights, remove every adapter and return the
    plain model, for deployment without mixlight (as PEFT's ``merge_and_unload``).

    Exact for one-expert adapters ((IA)³, LoRA, MoV/MoLoRA with one expert). A routed
    adapter mixes its experts per token; it merges only at a fixed ``routing`` (``{site path:
    [E] or [H, E]}``, e.g. ``mean_routing(model, batches)`` over one task's data), which
    approximates it: ``docs/huggingface.md`` measures the cost. Nothing changes when a site
    cannot be merged (the error names it)."""
    return backend_for_model(model, backend).merge_and_unload(model, routing)


def mean_routing(
    model: Any, batches: Iterable[Mapping[str, Any]], *, backend: str | None = None
) -> dict[str, np.ndarray]:
    """Each routed site's mean routing probability (numpy ``[E]``, ``[H, E]`` per head) over
    the real tokens of ``batches``: dicts of keyword arguments for ``model(**batch)``, whose
    ``attention_mask`` / ``decoder_attention_mask`` (torch also ``labels != -100``) mark the
    tokens. The routing at which :func:`merge_and_unload` folds a routed adapter."""
    return backend_for_model(model, backend).mean_routing(model, batches)


def load_model(path: str | os.PathLike[str], *, backend: str | None = None) -> Any:
    """The base model of a Hugging Face T5 checkpoint directory in ``backend``'s framework
    (torch: transformers' T5; jax: ``mixlight_jax.t5``), so swapping frameworks in a script
    is one argument. ``backend=None`` takes ``$MIXLIGHT_BACKEND`` (there is no model yet
    whose type could decide)."""
    name = backend or os.environ.get(ENV_VAR)
    if not name:
        raise ValueError(
            f'load_model({str(path)!r}) needs a backend: pass backend="torch" or "jax" '
            f"(or set ${ENV_VAR})"
        )
    directory = str(as_directory(path, "load_model"))
    return model_backend(name).load_model(directory)


def _identity(chosen: AnyModelBackend, model: Any, adapter_name: str | None = None) -> BaseIdentity:
    """What the backend can tell of the base model's identity, sampled at the modules that
    adapter ``adapter_name`` adapts."""
    return chosen.base_identity(model, adapter_name)


def _differences(model_config: AdapterConfig, file_config: AdapterConfig) -> str:
    """Which config fields differ, e.g. ``routing: model 'sequence', file 'token'``."""
    ours, theirs = model_config.to_dict(), file_config.to_dict()
    return "; ".join(
        f"{key}: model {ours.get(key)!r}, file {theirs.get(key)!r}"
        for key in sorted(set(ours) | set(theirs))
        if ours.get(key) != theirs.get(key)
    )


def trainable_parameters(model: Any, *, backend: str | None = None) -> ParameterCount:
    """Trainable and total parameter counts (and percent) of an injected model."""
    return backend_for_model(model, backend).trainable_parameters(model)


def aux_losses(model: Any, *, backend: str | None = None) -> Any:
    """Weighted router auxiliary losses from the model's last forward pass, summed (a scalar
    of the model's framework; 0 when no site has a non-zero loss weight)."""
    return backend_for_model(model, backend).aux_losses(model)


def routing_stats(model: Any, *, backend: str | None = None) -> RoutingStats:
    """Per-site routing statistics (numpy) from the model's last forward pass."""
    return backend_for_model(model, backend).routing_stats(model)


def disable_adapters(
    model: Model, *, backend: str | None = None
) -> contextlib.AbstractContextManager[Model]:
    """Context manager that runs the frozen base model."""
    manager = backend_for_model(model, backend).disable_adapters(model)
    return cast(contextlib.AbstractContextManager[Model], manager)
