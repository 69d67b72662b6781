"""The one interface between the experiment and a framework: five steps per backend.

``mixlight_tune.frameworks.<name>_steps`` modules implement :class:`BackendSteps` (a module
satisfies the protocol by defining these functions). The experiment imports one by name only
when a run starts, so nothing here imports torch or JAX.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import mixlight as ml

from .schema import Example
from .text_codec import Pair, TextCodec

if TYPE_CHECKING:
    from .checkpoint import Resume
    from .experiment import DemoConfig

BACKENDS = ("torch", "jax")


class DemoError(ValueError):
    """Bad demo input or a failed run, reported with what to change."""


@dataclass(frozen=True)
class TuneSettings:
    """What ``tune`` needs besides the data: one method's optimisation recipe.

    The fields after ``resume`` default to the demo's behaviour (one micro-batch a step, a
    constant rate, no clipping, a copy of the base, no evaluation during training).
    ``batch_size`` is the global batch: split over ``grad_accum_steps`` micro-batches and
    each of those over the data-parallel ways, the loss normalised by the global number of
    target tokens (:mod:`mixlight_tune.loop`).
    """

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
    grad_accum_steps: int = 1
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    max_grad_norm: float | None = None
    in_place: bool = False  # tune the base model itself (``mixlight tune``: no second copy)
    packing: bool = False  # a causal LM's micro-batch packed into few rows (torch_rows.pack)
    bucket: int = 0  # JAX padding: 0 = the data's longest rows, else a multiple of ``bucket``
    eval_every: int = 0
    evaluator: Callable[[Any, int], float] | None = field(default=None, compare=False)
    logger: Callable[[int, dict[str, float]], None] | None = field(default=None, compare=False)
    pairs: Sequence[Pair] | None = field(default=None, compare=False, repr=False)
    journal: Any = field(default=None, compare=False, repr=False)  # a loop.Journal to fill


@dataclass(frozen=True)
class Runtime:
    """Where and how a backend runs the model (``mixlight tune``'s device keys; the demo
    passes none: the CPU, float32, its own thread count). See docs/tune.md."""

    device: str = "auto"
    threads: int | None = None
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    distributed: str = "ddp"
    mesh: dict[str, int] | None = None
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


@dataclass(frozen=True)
class Parallel:
    """How a run is spread: ``processes`` (this one is ``rank``), ``devices`` in all,
    ``data`` ways of data parallelism, ``model`` ways of model (expert/kernel) sharding, and
    the ``layout`` ("single", "ddp", "fsdp" or "mesh"). Rank 0 alone writes files."""

    processes: int = 1
    rank: int = 0
    devices: int = 1
    data: int = 1
    model: int = 1
    layout: str = "single"
    device: str = "cpu"
    notes: tuple[str, ...] = ()

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def record(self) -> dict[str, Any]:
        """``metrics.json``'s ``parallel`` entry."""
        out: dict[str, Any] = {
            "processes": self.processes,
            "devices": self.devices,
            "data": self.data,
            "model": self.model,
            "layout": self.layout,
            "device": self.device,
        }
        if self.notes:
            out["notes"] = list(self.notes)
        return out


Routing = dict[str, dict[str, list[float]]]
"""site path -> {task: mean routing probability per expert}."""


class Base(Protocol):
    """A backend's frozen starting point: its model (scored untuned as the base row), the
    checkpoint directory and a description for the report."""

    model: Any
    description: str
    path: Path
    codec: TextCodec
    parallel: Parallel


class BackendSteps(Protocol):
    """The train and score steps a backend provides (all of them pure of demo state)."""

    def prepare(self, cfg: DemoConfig, runtime: Runtime | None = None) -> Base:
        """Load the base model at ``cfg``'s checkpoint (building the built-in one if asked),
        on ``runtime``'s devices and processes (joining the process group first)."""
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
        """Save the adapter (``None`` for full fine-tuning, which saves nothing). Called on
        every process of a parallel run (gathering shards is collective); rank 0 writes."""
        ...

    def device_name(self, base: Any) -> str | None:
        """The accelerator's name (``flops.PEAK_TFLOPS`` keys it), ``None`` on a CPU."""
        ...

    def memory_inputs(self, model: Any) -> dict[str, Any]:
        """What :func:`mixlight_tune.memory.estimate` needs of an injected model: base
        parameter count and bytes, trainable parameter shapes."""
        ...


def load_steps(name: str) -> BackendSteps:
    """The ``name`` backend's steps, turning a missing framework into a clear DemoError."""
    if name not in BACKENDS:
        raise DemoError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    module = f"mixlight_tune.frameworks.{name}_steps"
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
