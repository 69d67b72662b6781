"""Backend plugins: registry, discovery through entry points, and selection.

A backend ships a light :class:`BackendPlugin` under the ``mixlight.backends`` entry-point
group. The plugin names its framework module but does not import it; the heavy
:class:`Backend` is loaded only when asked for by name or when an array or model of that
framework shows up (the framework is then already in ``sys.modules``), as einops does.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from typing import Any, Protocol, runtime_checkable

import attrs
import numpy as np

from mixlight.primitives import NUMPY_PRIMITIVES, Primitives

ENTRY_POINT_GROUP = "mixlight.backends"
ENV_VAR = "MIXLIGHT_BACKEND"


@runtime_checkable
class Backend(Protocol):
    """What a backend provides. Model methods take the framework's module type."""

    name: str
    primitives: Primitives
    # Optional: ``array_types``, exact array types registered for fast lookup when loaded.

    def owns_array(self, x: Any) -> bool: ...

    def owns_model(self, model: Any) -> bool: ...

    def is_injected(self, model: Any) -> bool: ...

    def inject(
        self, model: Any, config: Any, seed: int | None = None, name: str = "default"
    ) -> Any:
        """Add adapter ``name``; the model's first adapter is the active one."""
        ...

    def plan(self, model: Any, config: Any) -> list[Any]:
        """The :class:`~mixlight.extend.SiteSpec` list ``inject(model, config)`` would give,
        with ``inject``'s errors, and the model unchanged (loads check a file against it
        before they touch the model)."""
        ...

    def adapter_names(self, model: Any) -> list[str]:
        """The model's adapter names, the active one first."""
        ...

    def set_adapter(self, model: Any, name: str) -> None: ...

    def delete_adapter(self, model: Any, name: str) -> None: ...

    def remove_adapters(self, model: Any) -> Any:
        """Put the original modules back and forget every adapter."""
        ...

    def adapter_specs(self, model: Any, name: str | None = None) -> Any:
        """``(AdapterConfig, [SiteSpec])`` of adapter ``name`` (default: the active one)."""
        ...

    def adapter_state(self, model: Any, name: str | None = None) -> Any:
        """``(AdapterConfig, [SiteSpec], {canonical name: np.ndarray})`` of adapter ``name``."""
        ...

    def load_adapter_state(
        self, model: Any, arrays: Mapping[str, np.ndarray], name: str | None = None
    ) -> None: ...

    def merge_and_unload(self, model: Any, routing: Any = None) -> Any:
        """Fold the active adapter into the base weights (see :mod:`mixlight.merging`)."""
        ...

    def mean_routing(self, model: Any, batches: Any) -> dict[str, np.ndarray]: ...

    def trainable_parameters(self, model: Any) -> Any: ...

    def aux_losses(self, model: Any) -> Any: ...

    def routing_stats(self, model: Any) -> Any: ...

    def disable_adapters(self, model: Any) -> contextlib.AbstractContextManager: ...


@attrs.frozen
class BackendPlugin:
    """Registry entry: cheap to import, names the framework and how to load the backend.

    Attributes:
      name: backend name used in configs, ``backend=`` and ``MIXLIGHT_BACKEND``.
      framework: top-level module of the framework (``"torch"``, ``"jax"``).
      extra: the pip extra that installs it (``"torch"`` for ``mixlight[torch]``).
      load: returns the :class:`Backend`; imports the framework.
    """

    name: str
    framework: str
    extra: str
    load: Callable[[], Backend]


class NumpyBackend:
    """The reference backend: numpy arrays only; it has no models."""

    name = "numpy"
    primitives = NUMPY_PRIMITIVES

    def owns_array(self, x: Any) -> bool:
        return isinstance(x, (np.ndarray, np.generic))

    def owns_model(self, model: Any) -> bool:
        return False

    def _no_models(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "the numpy backend evaluates the reference math on arrays and has no models; "
            "pass a torch nn.Module (mixlight[torch]) or a flax nnx.Module (mixlight[jax])"
        )

    is_injected = inject = adapter_specs = adapter_state = load_adapter_state = _no_models
    trainable_parameters = aux_losses = routing_stats = disable_adapters = _no_models
    adapter_names = set_adapter = delete_adapter = merge_and_unload = mean_routing = _no_models
    remove_adapters = plan = _no_models


_NUMPY = NumpyBackend()
_PLUGINS: dict[str, BackendPlugin] = {
    "numpy": BackendPlugin("numpy", "numpy", "", lambda: _NUMPY),
}
_LOADED: dict[str, Backend] = {"numpy": _NUMPY}
_BY_TYPE: dict[type, Primitives] = {np.ndarray: NUMPY_PRIMITIVES}
_DISCOVERED = False


def register_backend(plugin: BackendPlugin) -> None:
    """Register a backend by hand (entry points do this for installed packages)."""
    _PLUGINS[plugin.name] = plugin
    _LOADED.pop(plugin.name, None)
    _BY_TYPE.clear()


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _PLUGINS:
            continue
        try:
            plugin = ep.load()
        except Exception as err:  # a broken third-party plugin must not break mixlight
            warnings.warn(
                f"skipping mixlight backend entry point {ep.value!r}: {err}", stacklevel=3
            )
            continue
        if not isinstance(plugin, BackendPlugin):
            warnings.warn(
                f"skipping entry point {ep.name!r} = {ep.value!r} in group {ENTRY_POINT_GROUP!r}: "
                "it must name a mixlight.extend.BackendPlugin",
                stacklevel=3,
            )
            continue
        _PLUGINS[plugin.name] = plugin


def installed_backends() -> dict[str, BackendPlugin]:
    """Registered backend plugins by name (their frameworks may still be missing)."""
    _discover()
    return dict(_PLUGINS)


def load_backend(name: str) -> Backend:
    """The backend called ``name``; errors name the installed ones or the extra to install."""
    _discover()
    if name in _LOADED:
        return _LOADED[name]
    plugin = _PLUGINS.get(name)
    if plugin is None:
        raise ValueError(
            f"unknown mixlight backend {name!r}; installed backends: {sorted(_PLUGINS)}"
        )
    try:
        importlib.import_module(plugin.framework)
    except ImportError:
        raise ImportError(
            f"the {name!r} backend needs {plugin.framework!r}, which is not installed: "
            f'pip install "mixlight[{plugin.extra}]"'
        ) from None
    backend = _LOADED[name] = plugin.load()
    for array_type in getattr(backend, "array_types", ()):
        _BY_TYPE[array_type] = backend.primitives
    return backend


def _candidates() -> Iterator[Backend]:
    """Loaded backends, then those whose framework is already imported."""
    _discover()
    yield from list(_LOADED.values())
    for name, plugin in list(_PLUGINS.items()):
        if name not in _LOADED and plugin.framework in sys.modules:
            yield load_backend(name)


def primitives_for(x: Any) -> Primitives:
    """The primitive table for ``x``'s array type.

    After the first lookup of a type this is one dict lookup, which ``torch.compile`` and
    ``jax.jit`` trace through (the first lookup may import and discover backends).
    """
    cached = _BY_TYPE.get(type(x))
    if cached is not None:
        return cached
    for backend in _candidates():
        if backend.owns_array(x):
            _BY_TYPE[type(x)] = backend.primitives
            return backend.primitives
    raise TypeError(
        f"no mixlight backend handles arrays of type {type(x).__module__}.{type(x).__name__}; "
        f"installed backends: {sorted(installed_backends())}"
    )


def backend_for_model(model: Any, backend: str | None = None, config: Any = None) -> Backend:
    """Select the backend that runs ``model``.

    An explicit choice (the ``backend`` argument, else ``config.backend``) must own the
    model: a model object belongs to one framework, and naming another is an error that says
    how to run the experiment there. Without one, the model's type decides;
    ``$MIXLIGHT_BACKEND`` is only a default for the cases the type cannot decide (several
    backends own the model), never an error on a model it cannot handle.
    """
    explicit = backend or getattr(config, "backend", None) or None
    if explicit is not None:
        chosen = load_backend(explicit)
        if not chosen.owns_model(model):
            raise TypeError(
                _foreign_model_message(model, explicit, "argument" if backend else "config.backend")
            )
        return chosen
    owners = [candidate for candidate in _candidates() if candidate.owns_model(model)]
    if len(owners) > 1:
        default = os.environ.get(ENV_VAR)
        for owner in owners:
            if owner.name == default:
                return owner
    if owners:
        return owners[0]
    raise TypeError(
        f"no mixlight backend handles models of type {_type_name(model)}; expected a torch "
        f'nn.Module (pip install "mixlight[torch]") or a flax nnx.Module '
        f'(pip install "mixlight[jax]")'
    )


def _type_name(model: Any) -> str:
    return f"{type(model).__module__}.{type(model).__name__}"


_T5_LOADERS = {
    "torch": "transformers.T5ForConditionalGeneration.from_pretrained(checkpoint)",
    "jax": "mixlight_jax.t5.from_pretrained(checkpoint)",
}
"""How each shipped backend loads a T5 checkpoint, for the foreign-model error's advice."""


def _foreign_model_message(model: Any, name: str, chosen_by: str) -> str:
    """Why backend ``name`` cannot run ``model``, and how to run the experiment in ``name``."""
    owner = next((c.name for c in _candidates() if c.owns_model(model)), None)
    belongs = f"it is a {owner} model" if owner else "no installed backend owns it"
    loader = f" (a T5: {_T5_LOADERS[name]})" if name in _T5_LOADERS else ""
    return (
        f"backend {name!r} (chosen by {chosen_by}) cannot handle a {_type_name(model)}: "
        f"a model object belongs to one framework and {belongs}. Drop that choice to pick "
        f"the backend by the model's type; to run the same experiment in {name}, load the "
        f"model in {name}{loader} or "
        f'run `mixlight tune CONFIG` with backend = "{name}" in the config'
    )


@contextlib.contextmanager
def _isolated_registry() -> Iterator[None]:
    """Testing aid: restore the registry after registering throwaway backends."""
    global _DISCOVERED
    plugins, loaded, discovered = dict(_PLUGINS), dict(_LOADED), _DISCOVERED
    try:
        yield
    finally:
        _DISCOVERED = discovered
        _PLUGINS.clear()
        _PLUGINS.update(plugins)
        _LOADED.clear()
        _LOADED.update(loaded)
        _BY_TYPE.clear()
        _BY_TYPE[np.ndarray] = NUMPY_PRIMITIVES
