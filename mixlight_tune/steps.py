"""The one interface between the experiment and a framework: five steps per backend.

``mixlight_tune.backends.<name>_steps`` modules implement :class:`BackendSteps` (a module
satisfies the protocol by defining these functions). The experiment imports one by name only
when a run starts, so nothing here imports torch or JAX.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import mixlight as ml

from .schema import Example

if TYPE_CHECKING:
    from .checkpoint import Resume
    from .experiment import DemoConfig

BACKENDS = ("torch", "jax")


class DemoError(ValueError):
    """Bad demo input or a failed run, reported with what to change."""


@dataclass(frozen=True)
class TuneSettings:
    """What ``tune`` needs besides the data: one method's optimisation recipe."""

    steps: int
    batch_size: int
    lr: float
    optimizer: str
    seed: int
    dropout: float
    max_input_tokens: int
    max_target_tokens: int
    progress: bool
    label: str
    resume: Resume | None = None  # save (and continue from) checkpoints in a run directory


Routing = dict[str, dict[str, list[float]]]
"""site path -> {task: mean routing probability per expert}."""


class Base(Protocol):
    """A backend's frozen starting point: its model (scored untuned as the base row), the
    checkpoint directory and a description for the report."""

    model: Any
    description: str
    path: Path


class BackendSteps(Protocol):
    """The train and score steps a backend provides (all of them pure of demo state)."""

    def prepare(self, cfg: DemoConfig) -> Base:
        """Load the base model at ``cfg``'s checkpoint (building the built-in one if asked)."""
        ...

    def tune(
        self,
        base: Any,
        adapter: ml.AdapterConfig | None,
        examples: Sequence[Example],
        settings: TuneSettings,
    ) -> tuple[Any, list[float]]:
        """A trained copy of the base (``adapter`` injected; ``None``: every weight trains)
        and the loss of every step, in the data order ``settings.seed`` fixes. Raises
        :class:`DemoError` as soon as a loss is not finite."""
        ...

    def evaluate(
        self, model: Any, base: Any, examples: Sequence[Example], cfg: DemoConfig
    ) -> tuple[list[bool], Routing]:
        """Rank classification of every example (each has ``choices``) and the routing."""
        ...

    def trainable_percent(self, model: Any) -> float:
        """% of the model's parameters that train."""
        ...

    def save(self, model: Any, directory: Path) -> Path | None:
        """Save the adapter (``None`` for full fine-tuning, which saves nothing)."""
        ...


def load_steps(name: str) -> BackendSteps:
    """The ``name`` backend's steps, turning a missing framework into a clear DemoError."""
    if name not in BACKENDS:
        raise DemoError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    module = f"mixlight_tune.backends.{name}_steps"
    try:
        return cast(BackendSteps, importlib.import_module(module))
    except ModuleNotFoundError as err:
        raise DemoError(
            f"the {name} backend needs {err.name!r}, which is not installed "
            f"(pip install 'mixlight[{name},t5]')"
        ) from None


def check_finite_loss(loss: float, step: int, settings: TuneSettings) -> None:
    """Stop a run whose loss is NaN or infinite: its weights are garbage from here on."""
    if not math.isfinite(loss):
        raise DemoError(
            f"{settings.label}: the loss became {loss} at step {step + 1} (lr {settings.lr:g}); "
            "the run is stopped and scores nothing. Lower --lr or check the data"
        )


@contextlib.contextmanager
def adapter_fits(adapter: ml.AdapterConfig) -> Iterator[None]:
    """Around ``ml.inject``: its ValueError (a site pattern that matches no module of this
    model, a size the adapter cannot take) becomes a DemoError that says to change the
    adapter."""
    try:
        yield
    except DemoError:
        raise
    except ValueError as err:
        raise DemoError(
            f"adapter {adapter.method} does not fit this model: {err}; change the adapter's "
            "targets (or sites) to fit the model"
        ) from None
