"""The training loop both backends share, framework-free: data order, micro-batches, the
learning-rate schedule, evaluation during training, checkpoints, logs and progress.

A backend supplies a :class:`Trainer` (one optimiser step over a global batch, its training
state as arrays and back); :func:`train` drives it. Step ``k`` takes batch ``k`` of
:func:`mixlight_tune.sampling.batches` (the global batch: ``batch_size`` rows, drawn from the
seed and ``k`` alone, so a resumed run continues the same order), splits it into
``grad_accum_steps`` equal micro-batches (:func:`micro_batches`) and hands the trainer the
number of target tokens of the whole global batch: every process normalises its summed token
losses by that count, so one process, N processes and N accumulation steps compute the same
mean loss and the same gradient (to float32 rounding).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .checkpoint import Checkpoint
from .sampling import batches
from .steps import DemoError, Pair, Parallel, TuneSettings

Check = Callable[[float, int, TuneSettings], None]


def lr_factor(step: int, steps: int, schedule: str, warmup: int) -> float:
    """The multiple of ``lr`` used by optimiser step ``step`` (0-based) of ``steps``.

    Warmup: ``(step + 1) / warmup`` for the first ``warmup`` steps (never 0, so no step is
    wasted). Then, with ``p = (step - warmup) / (steps - warmup)`` going from 0 towards 1:
    ``constant`` 1, ``linear`` ``1 - p``, ``cosine`` ``(1 + cos(pi p)) / 2``.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    p = (step - warmup) / max(1, steps - warmup)
    if schedule == "linear":
        return 1.0 - p
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown lr_schedule {schedule!r}")


def micro_batches(indices: Sequence[int], parts: int) -> list[list[int]]:
    """``indices`` cut into ``parts`` equal consecutive micro-batches."""
    if len(indices) % parts:
        raise DemoError(
            f"a batch of {len(indices)} rows cannot be split into {parts} equal micro-batches"
        )
    size = len(indices) // parts
    return [list(indices[i * size : (i + 1) * size]) for i in range(parts)]


def shard(indices: Sequence[int], rank: int, ways: int) -> list[int]:
    """Process ``rank``'s contiguous share of a micro-batch of ``ways`` equal shares."""
    size = len(indices) // ways
    return list(indices[rank * size : (rank + 1) * size])


def check_divisible(settings: TuneSettings, ways: int, what: str) -> None:
    """Refuse a global batch whose micro-batches do not split evenly ``ways`` ways."""
    micro = settings.batch_size // settings.grad_accum_steps
    if micro % ways:
        raise DemoError(
            f"batch_size {settings.batch_size} / grad_accum_steps {settings.grad_accum_steps} "
            f"= micro-batches of {micro} rows, which {what} ({ways}) does not divide; choose "
            f"a batch_size that is a multiple of {settings.grad_accum_steps * ways}"
        )


@dataclass
class Journal:
    """What a run records besides its losses, kept in its checkpoints: the evaluations made
    during training (``{"step", "average", ...}``), the best of them, and throughput."""

    evals: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    tokens: int = 0  # real (unpadded) input + target tokens of the timed steps
    seconds: float = 0.0  # their wall time (not timed: a process's first step, compiling ones)
    flops: float = 0.0  # their model FLOPs, counted with ``row_flops`` when it is given
    row_flops: Callable[[int, int], float] | None = field(default=None, repr=False)

    def state(self) -> dict[str, Any]:
        return {"evals": self.evals, "best": self.best}

    def restore(self, state: dict[str, Any]) -> None:
        self.evals = list(state.get("evals", []))
        self.best = state.get("best")

    @property
    def tokens_per_second(self) -> float | None:
        return round(self.tokens / self.seconds, 1) if self.seconds > 0 else None

    @property
    def flops_per_second(self) -> float | None:
        return self.flops / self.seconds if self.seconds > 0 and self.flops > 0 else None


class Trainer(Protocol):
    """A backend's model and optimiser, stepped by :func:`train`."""

    model: Any

    def step(self, step: int, micro: list[list[int]], lr: float, tokens: int) -> float:
        """One optimiser step over a global batch given as micro-batches of row indices,
        the rate ``lr``, and the global batch's target-token count; returns its mean loss
        (the same number on every process)."""
        ...

    def train_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(arrays, scalars)`` to checkpoint (collective in a parallel run: every process
        calls it, rank 0 writes)."""
        ...

    def restore(self, checkpoint: Checkpoint) -> None:
        """Put a checkpoint's weights and optimiser state back."""
        ...


def _bar(settings: TuneSettings, done: int, show: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=settings.steps,
        initial=done,
        desc=settings.label,
        disable=not (settings.progress and show),
    )


def train(
    trainer: Trainer,
    pairs: Sequence[Pair],
    settings: TuneSettings,
    parallel: Parallel,
    check: Check,
) -> list[float]:
    """Run ``settings.steps`` optimiser steps (continuing from the run directory's
    checkpoint when there is one); return the loss of every step. ``settings.journal``
    (a :class:`Journal`) receives the evaluations and throughput."""
    journal = settings.journal if settings.journal is not None else Journal()
    resume = settings.resume
    saved = None if resume is None else resume.load()
    done, losses = 0, []
    if saved is not None:
        trainer.restore(saved)
        done, losses = saved.step, list(saved.losses)
        journal.restore(saved.extra)
    order = batches(len(pairs), settings.batch_size, settings.steps, settings.seed)
    bar = _bar(settings, done, parallel.writer)
    try:
        for step, indices in enumerate(order):
            if step < done:
                continue
            lr = settings.lr * lr_factor(
                step, settings.steps, settings.lr_schedule, settings.warmup_steps
            )
            tokens = sum(len(pairs[i][1]) for i in indices)
            start = time.perf_counter()
            loss = trainer.step(step, micro_batches(indices, settings.grad_accum_steps), lr, tokens)
            losses.append(loss)
            check(loss, step, settings)
            seconds = time.perf_counter() - start
            seen = tokens + sum(len(pairs[i][0]) for i in indices)
            # the first step of a process warms up; a JAX step on a new batch shape compiles
            if step > done and not getattr(trainer, "compiled", False):
                journal.tokens += seen
                journal.seconds += seconds
                if journal.row_flops is not None:
                    journal.flops += sum(journal.row_flops(*map(len, pairs[i])) for i in indices)
            scalars = {"loss": loss, "lr": lr, "tokens_per_second": seen / max(seconds, 1e-9)}
            bar.update(1)
            if len(losses) % 10 == 0 or step + 1 == settings.steps:
                tail = losses[-10:]
                bar.set_postfix(
                    loss=f"{sum(tail) / len(tail):.3f}",
                    lr=f"{lr:.2g}",
                    tok_s=f"{scalars['tokens_per_second']:.0f}",
                )
            if settings.evaluator is not None and _eval_due(settings, step + 1):
                average = settings.evaluator(trainer.model, step + 1)
                journal.evals.append({"step": step + 1, "average": average})
                scalars["eval_average"] = average
            if settings.logger is not None and parallel.writer:
                settings.logger(step + 1, scalars)
            if resume is not None and resume.due(len(losses), settings.steps):
                arrays, values = trainer.train_state()
                if parallel.writer:
                    resume.save(len(losses), losses, arrays, values, extra=journal.state())
    finally:
        bar.close()
    return losses


def _eval_due(settings: TuneSettings, done: int) -> bool:
    return settings.eval_every > 0 and (done % settings.eval_every == 0 or done == settings.steps)
