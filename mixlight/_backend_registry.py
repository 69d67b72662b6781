"""Backend plugins: registry, discovery through entry points, and selection.

A backend ships a light :class:`BackendPlugin` under the ``mixlight.backends`` entry-point
group. The plugin names its framework module but does not import it; the heavy backend (a
:class:`~mixlight._backend_contract.Backend`, or for arrays alone an
:class:`~mixlight._backend_contract.ArrayBackend`) is loaded only when asked for by name or
when an array or model of that framework shows up (the framework is then already in
``sys.modules``), as einops does. What a plugin loads is checked against the contract.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from mixlight._backend_contract import ArrayBackend, ModelBackend
from mixlight.primitives import NUMPY_PRIMITIVES, Primitives

if TYPE_CHECKING:  # annotations only: mixlight.fast_ops imports this module
    from mixlight.fast_ops import SiteRunner

AnyModelBackend = ModelBackend[Any, Any]

ENTRY_POINT_GROUP = "mixlight.backends"
ENV_VAR = "MIXLIGHT_BACKEND"


@attrs.frozen
class BackendPlugin:
    """Registry entry: cheap to import, names the framework and how to load the backend.

    Attributes:
      name: backend name used in configs, ``backend=`` and ``MIXLIGHT_BACKEND``.
      framework: top-level module of the framework (``"torch"``, ``"jax"``).
      extra: the pip extra that installs it (``"torch"`` for ``mixlight[torch]``).
      load: returns the backend (a :class:`~mixlight._backend_contract.Backend` for a
        framework with models); imports the framework.
      fast_ops: returns the backend's own fast-op implementations by the op names
        :func:`mixlight.extend.fast_op` assigns to sites (:mod:`mixlight.fast_ops`); imports
        the framework. None (the default): it has none, its sites run the core math.
    """

    name: str
    framework: str
    extra: str
    load: Callable[[], ArrayBackend]
    fast_ops: Callable[[], Mapping[str, SiteRunner]] | None = None


class NumpyBackend(ArrayBackend):
    """The reference backend: numpy arrays only. It has no models: it is an
    :class:`ArrayBackend` and no :class:`ModelBackend`."""

    name = "numpy"
    primitives = NUMPY_PRIMITIVES
    array_types = (np.ndarray,)

    def owns_array(self, x: object) -> bool:
        return isinstance(x, (np.ndarray, np.generic))


_NUMPY = NumpyBackend()
_PLUGINS: dict[str, BackendPlugin] = {
    "numpy": BackendPlugin("numpy", "numpy", "", lambda: _NUMPY),
}
_LOADED: dict[str, ArrayBackend] = {"numpy": _NUMPY}
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


def load_backend(name: str) -> ArrayBackend:
    """The backend called ``name`` (a framework's is a
    :class:`~mixlight._backend_contract.Backend`); errors name the installed ones or the extra
    to install."""
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
    backend = plugin.load()
    if not isinstance(backend, ArrayBackend):
        raise TypeError(
            f"the {name!r} backend plugin loaded a {_type_name(backend)}, which is not a "
            "mixlight.extend.ArrayBackend; a framework's backend subclasses "
            "mixlight.extend.Backend (array primitives and model lifecycle)"
        )
    _LOADED[name] = backend
    for array_type in backend.array_types:
        _BY_TYPE[array_type] = backend.primitives
    return backend


def model_backend(name: str) -> AnyModelBackend:
    """The backend called ``name``, which must handle models (numpy's does not)."""
    backend = load_backend(name)
    if not isinstance(backend, ModelBackend):
        raise TypeError(
            f"the {name} backend evaluates the reference math on arrays and has no models; "
            "pass a torch nn.Module (mixlight[torch]) or a flax nnx.Module (mixlight[jax])"
        )
    return backend


def _candidates() -> Iterator[ArrayBackend]:
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


def _model_candidates() -> Iterator[AnyModelBackend]:
    return (b for b in _candidates() if isinstance(b, ModelBackend))


def backend_for_model(
    model: object, backend: str | None = None, config: Any = None
) -> AnyModelBackend:
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
        if not isinstance(chosen, ModelBackend) or not chosen.owns_model(model):
            raise TypeError(
                _foreign_model_message(model, explicit, "argument" if backend else "config.backend")
            )
        return chosen
    owners = [candidate for candidate in _model_candidates() if candidate.owns_model(model)]
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


def _type_name(model: object) -> str:
    return f"{type(model).__module__}.{type(model).__name__}"


_T5_LOADERS = {
    "torch": "transformers.T5ForConditionalGeneration.from_pretrained(checkpoint)",
    "jax": "mixlight_jax.t5.from_pretrained(checkpoint)",
}
"""How each shipped backend loads a T5 checkpoint, for the foreign-model error's advice."""


def _foreign_model_message(model: object, name: str, chosen_by: str) -> str:
    """Why backend ``name`` cannot run ``model``, and how to run the experiment in ``name``."""
    owner = next((c.name for c in _model_candidates() if c.owns_model(model)), None)
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
