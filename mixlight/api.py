"""The public model functions; each dispatches to the backend that owns the model.

Every function takes ``backend=`` (a backend name); it must name the model's own framework
(see :func:`mixlight._backends.backend_for_model` for the order of choices)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import attrs

from mixlight._atomic_dir import as_directory
from mixlight._backends import ENV_VAR, Backend, backend_for_model, load_backend
from mixlight._base_identity import BaseIdentity
from mixlight._hub import resolve
from mixlight._model_card import facts_of
from mixlight.adapter_file import check_fits, read_adapter, write_adapter
from mixlight.config import AdapterConfig


def inject(
    model: Any, config: AdapterConfig, *, backend: str | None = None, seed: int | None = None
) -> Any:
    """Wrap the modules matched by ``config``'s sites in adapters, freeze everything else,
    and return the model (modified in place).

    ``seed`` fixes the adapters' initial values (drawn with numpy from the canonical
    initialisers, so a seed gives the same adapter in every backend); None takes it from the
    framework's own RNG where it has one (``torch.manual_seed``), else 0.
    """
    if not isinstance(config, AdapterConfig):
        raise TypeError(
            f"inject(model, config): config must be a mixlight.AdapterConfig (e.g. "
            f"mixlight.MoV()), got {type(config).__name__}"
        )
    return backend_for_model(model, backend, config).inject(model, config, seed)


def save_adapter(model: Any, directory: str | os.PathLike, *, backend: str | None = None) -> Path:
    """Write the model's adapter to ``directory`` (mixlight_adapter.safetensors +
    mixlight_config.json + a README.md model card) with one commit point: the directory holds
    the previous adapter or this one, never a mix (see :func:`mixlight.write_adapter`)."""
    as_directory(directory, "save_adapter")
    chosen = backend_for_model(model, backend)
    config, specs, arrays = chosen.adapter_state(model)
    card = facts_of(chosen, model)
    return write_adapter(directory, config, specs, arrays, base=_identity(chosen, model), card=card)


def load_adapter(model: Any, directory: str | os.PathLike, *, backend: str | None = None) -> Any:
    """Load an adapter directory, or a Hugging Face Hub repo id (``"user/repo"``, when no such
    local path exists and huggingface_hub is installed), into ``model``.

    An un-injected model is injected from the file's config first (whatever backend wrote the
    file); an injected one must have the same config. Shapes are checked against the model.
    """
    chosen = backend_for_model(model, backend)
    adapter = read_adapter(resolve(directory, "load_adapter"))
    config = attrs.evolve(adapter.config, backend=None)
    if not chosen.is_injected(model):
        chosen.inject(model, config)
    current, specs = chosen.adapter_specs(model)
    if attrs.evolve(current, backend=None) != config:
        raise ValueError(
            f"the model already carries a different adapter ({current.method}) than {directory} "
            f"({config.method}): {_differences(attrs.evolve(current, backend=None), config)}; "
            "load into a fresh model or remove the adapter first"
        )
    check_fits(adapter, specs, str(directory), _identity(chosen, model))
    chosen.load_adapter_state(model, adapter.arrays)
    return model


def load_model(path: str | os.PathLike, *, backend: str | None = None) -> Any:
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
    loader = getattr(load_backend(name), "load_model", None)
    if loader is None:
        raise TypeError(
            f"backend {name!r} has no model loader; load the model with its framework's own "
            "tools and pass it to ml.inject"
        )
    return loader(str(as_directory(path, "load_model")))


def _identity(chosen: Backend, model: Any) -> BaseIdentity:
    """What the backend can tell of the base model's identity (nothing when it has no hook)."""
    hook = getattr(chosen, "base_identity", None)
    return hook(model) if hook is not None else BaseIdentity()


def _differences(model_config: AdapterConfig, file_config: AdapterConfig) -> str:
    """Which config fields differ, e.g. ``routing: model 'sequence', file 'token'``."""
    ours, theirs = model_config.to_dict(), file_config.to_dict()
    return "; ".join(
        f"{key}: model {ours.get(key)!r}, file {theirs.get(key)!r}"
        for key in sorted(set(ours) | set(theirs))
        if ours.get(key) != theirs.get(key)
    )


def trainable_parameters(model: Any, *, backend: str | None = None) -> Any:
    """Trainable and total parameter counts (and percent) of an injected model."""
    return backend_for_model(model, backend).trainable_parameters(model)


def aux_losses(model: Any, *, backend: str | None = None) -> Any:
    """Weighted router auxiliary losses from the model's last forward pass, summed (a scalar
    of the model's framework; 0 when no site has a non-zero loss weight)."""
    return backend_for_model(model, backend).aux_losses(model)


def routing_stats(model: Any, *, backend: str | None = None) -> dict[str, dict[str, Any]]:
    """Per-site routing statistics (numpy) from the model's last forward pass."""
    return backend_for_model(model, backend).routing_stats(model)


def disable_adapters(
    model: Any, *, backend: str | None = None
) -> contextlib.AbstractContextManager:
    """Context manager that runs the frozen base model."""
    return backend_for_model(model, backend).disable_adapters(model)


@attrs.frozen
class ParameterCount:
    """Counts returned by :func:`trainable_parameters`."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return (
            f"trainable params: {self.trainable:,} || all params: {self.total:,} || "
            f"trainable%: {self.percent:.4f}"
        )
