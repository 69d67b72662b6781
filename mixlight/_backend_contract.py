"""The backend contract: two abstract classes, one per job, as einops' ``AbstractBackend``.

* :class:`ArrayBackend`: the array primitives the core math needs for one array type (the
  numpy reference backend is only this).
* :class:`ModelBackend`: a framework's model lifecycle: inject, plan, named adapters, state
  in and out, merging, statistics. Every hook is declared here. The ones a backend must have
  are abstract (a backend missing one cannot be instantiated); a capability a backend may
  lack has a default that raises :class:`NotSupported`, naming the backend and the
  capability, or says plainly what the default means (:meth:`ModelBackend.base_identity`
  knows nothing, :meth:`ModelBackend.resolve_config` takes the T5 layout).

A framework's backend is a :class:`Backend`: both. The registry (:mod:`mixlight._backend_registry`)
checks that what a plugin loads is one, and the core calls only what is declared here.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import attrs
import numpy as np

from mixlight._base_identity import BaseIdentity
from mixlight.named_adapters import DEFAULT
from mixlight.primitives import Primitives

if TYPE_CHECKING:  # annotations only: the math imports the registry, which imports this
    from mixlight.config import AdapterConfig
    from mixlight.site_spec import SiteSpec

ModelT = TypeVar("ModelT")
ScalarT = TypeVar("ScalarT")
RoutingStats = dict[str, dict[str, Any]]
"""Per-site routing statistics: ``{site path: mixlight.extend.routing_summary(probs)}``."""


class NotSupported(TypeError):
    """A backend lacks a capability (a :class:`ModelBackend` method it does not override)."""


@attrs.frozen
class ParameterCount:
    """Counts returned by :func:`mixlight.trainable_parameters`."""

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


class ArrayBackend(abc.ABC):
    """The array primitives for one framework's array types.

    Attributes:
      name: the backend's name (``backend=``, ``config.backend``, ``$MIXLIGHT_BACKEND``).
      primitives: the table the core math calls (softmax, top-k, ... over the last axis).
      array_types: exact array types, registered for a one-lookup
        :func:`mixlight.extend.primitives_for` once the backend is loaded.
    """

    name: ClassVar[str]
    primitives: ClassVar[Primitives]
    array_types: ClassVar[tuple[type, ...]] = ()

    @abc.abstractmethod
    def owns_array(self, x: object) -> bool:
        """Whether ``x`` is an array of this backend's framework (subclasses included)."""


class ModelBackend(abc.ABC, Generic[ModelT, ScalarT]):
    """A framework's model lifecycle. ``ModelT`` is its model type (``nn.Module``,
    ``nnx.Module``), ``ScalarT`` its scalar array type (the auxiliary loss). ``name``
    (absent: the adapter ``name`` a call gives) is one of the model's named adapters, the
    active one when None."""

    name: ClassVar[str]

    @abc.abstractmethod
    def owns_model(self, model: object) -> bool:
        """Whether ``model`` is a model of this backend's framework."""

    @abc.abstractmethod
    def is_injected(self, model: ModelT) -> bool:
        """Whether ``model`` carries at least one mixlight adapter."""

    @abc.abstractmethod
    def inject(
        self, model: ModelT, config: AdapterConfig, seed: int | None = None, name: str = DEFAULT
    ) -> ModelT:
        """Add adapter ``name`` (in place; the model is returned); the model's first adapter is
        the active one. ``seed`` None: the framework's RNG where it has one, else 0."""

    @abc.abstractmethod
    def plan(self, model: ModelT, config: AdapterConfig) -> list[SiteSpec]:
        """The sites ``inject(model, config)`` would give, with ``inject``'s errors, the model
        unchanged (loads check a file against it before they touch the model)."""

    @abc.abstractmethod
    def adapter_names(self, model: ModelT) -> list[str]:
        """The model's adapter names, the active one first."""

    @abc.abstractmethod
    def set_adapter(self, model: ModelT, name: str) -> None:
        """Make adapter ``name`` the one that runs and trains."""

    @abc.abstractmethod
    def delete_adapter(self, model: ModelT, name: str) -> None:
        """Remove adapter ``name`` (the last one: the model is un-injected)."""

    @abc.abstractmethod
    def remove_adapters(self, model: ModelT) -> ModelT:
        """Put the original modules back and forget every adapter."""

    @abc.abstractmethod
    def adapter_specs(
        self, model: ModelT, name: str | None = None
    ) -> tuple[AdapterConfig, list[SiteSpec]]:
        """The config and sites of adapter ``name``."""

    @abc.abstractmethod
    def adapter_state(
        self, model: ModelT, name: str | None = None
    ) -> tuple[AdapterConfig, list[SiteSpec], dict[str, np.ndarray]]:
        """Adapter ``name``'s config, sites and float32 arrays by canonical name."""

    @abc.abstractmethod
    def load_adapter_state(
        self, model: ModelT, arrays: Mapping[str, np.ndarray], name: str | None = None
    ) -> None:
        """Write ``arrays`` (by canonical name, checked before any is written) into adapter
        ``name``."""

    @abc.abstractmethod
    def trainable_parameters(self, model: ModelT) -> ParameterCount:
        """Trainable and total parameter counts."""

    @abc.abstractmethod
    def aux_losses(self, model: ModelT) -> ScalarT:
        """The weighted router losses of the last forward pass, summed (0 when none)."""

    @abc.abstractmethod
    def routing_stats(self, model: ModelT) -> RoutingStats:
        """Per-site routing statistics (numpy) of the last forward pass."""

    @abc.abstractmethod
    def disable_adapters(self, model: ModelT) -> contextlib.AbstractContextManager[ModelT]:
        """A context in which the model runs as its frozen base."""

    # --- capabilities a backend may lack ---------------------------------------------------

    def merge_and_unload(
        self, model: ModelT, routing: Mapping[str, np.ndarray] | None = None
    ) -> ModelT:
        """Fold the active adapter into the base weights (at ``routing`` for a routed one, see
        :mod:`mixlight.merging`) and return the plain model."""
        raise self._unsupported(
            "merge an adapter into the base weights", "keep the adapter unmerged"
        )

    def mean_routing(
        self, model: ModelT, batches: Iterable[Mapping[str, Any]]
    ) -> dict[str, np.ndarray]:
        """Each routed site's mean routing probability (``[E]``, ``[H, E]``) over ``batches``."""
        raise self._unsupported(
            "measure mean routing", "merge a one-expert adapter, which needs no routing"
        )

    def adapter_per_example(
        self, model: ModelT, names: Sequence[str]
    ) -> contextlib.AbstractContextManager[ModelT]:
        """A context in which example ``i`` of each batch runs adapter ``names[i]``."""
        raise self._unsupported(
            "run one adapter per example (it runs one adapter per batch)",
            "switch between batches with mixlight.set_adapter(model, name)",
        )

    def load_model(self, path: str) -> ModelT:
        """The base model of a Hugging Face T5 checkpoint directory."""
        raise self._unsupported(
            "load checkpoints (it has no model loader)",
            "load the model with its framework's own tools and pass it to mixlight.inject",
        )

    def base_identity(self, model: ModelT, name: str | None = None) -> BaseIdentity:
        """What is known of the base model's identity (name, revision, sampled weights at the
        modules adapter ``name`` adapts). Default: nothing, so no load warns of another base."""
        return BaseIdentity()

    def snapshot_trainable(self, model: ModelT) -> Callable[[], None]:
        """Record which of the model's parameters train; the function returned puts that back
        (a failed load undoes what its injection froze). Default: nothing to record, for a
        framework that selects trainable state by variable type (as NNX does)."""
        return lambda: None

    def resolve_config(self, model: ModelT, config: AdapterConfig) -> AdapterConfig:
        """``config`` with the sites it gets in ``model`` (a preset's family defaults made
        concrete from the model's type). Default: the T5 layout the presets carry."""
        from mixlight.presets import resolve_targets

        return resolve_targets(config, None)

    def _unsupported(self, capability: str, instead: str) -> NotSupported:
        return NotSupported(f"the {self.name!r} backend cannot {capability}; {instead}")


class Backend(ArrayBackend, ModelBackend[ModelT, ScalarT]):
    """A framework's backend: its array primitives and its model lifecycle, both checked."""
