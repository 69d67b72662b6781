"""The built-in instruction suite: training mixture and held-out evaluation, from a seed.

Pure Python. The same seed gives identical data on every run and machine: each task draws
from its own ``random.Random`` seeded with a string (hashed with SHA-512 by ``random``),
so adding a task never changes another task's data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .corpus import pretraining_corpus
from ..corruption import span_corruption
from .held_out_tasks import HELD_OUT_TASKS
from ..schema import Example, Task, Template
from .train_tasks import TRAIN_TASKS

__all__ = [
    "ALL_TASKS",
    "Example",
    "Suite",
    "Task",
    "Template",
    "build_suite",
    "pretraining_corpus",
    "span_corruption",
]

ALL_TASKS: tuple[Task, ...] = TRAIN_TASKS + HELD_OUT_TASKS


@dataclass(frozen=True)
class Suite:
    """Training examples (all training tasks and templates, shuffled) and held-out examples."""

    train: list[Example]
    eval: list[Example]
    train_tasks: tuple[str, ...]
    held_out_tasks: tuple[str, ...]
    families: dict[str, str]


def _rng(seed: int, *parts: str) -> random.Random:
    return random.Random(":".join(["mixlight-demo", str(seed), *parts]))


def _train_examples(task: Task, seed: int, n: int) -> list[Example]:
    """``n`` examples of ``task``, cycling through its templates."""
    rng = _rng(seed, "train", task.name)
    templates = task.templates
    return [task.render(task.generate(rng), templates[i % len(templates)]) for i in range(n)]


def _eval_examples(task: Task, seed: int, n: int) -> list[Example]:
    """``n`` items of ``task``, each rendered with every template (like a P3 dataset)."""
    rng = _rng(seed, "eval", task.name)
    items = [task.generate(rng) for _ in range(n)]
    return [task.render(item, t) for t in task.templates for item in items]


def build_suite(seed: int = 0, train_per_task: int = 200, eval_per_template: int = 50) -> Suite:
    """Generate the suite: ``train_per_task`` examples per training task (templates mixed)
    and ``eval_per_template`` examples for every template of every held-out task."""
    if train_per_task < 0 or eval_per_template < 0:
        raise ValueError("train_per_task and eval_per_template must be non-negative")
    train = [ex for t in TRAIN_TASKS for ex in _train_examples(t, seed, train_per_task)]
    _rng(seed, "shuffle").shuffle(train)
    held_out = [ex for t in HELD_OUT_TASKS for ex in _eval_examples(t, seed, eval_per_template)]
    return Suite(
        train=train,
        eval=held_out,
        train_tasks=tuple(t.name for t in TRAIN_TASKS),
        held_out_tasks=tuple(t.name for t in HELD_OUT_TASKS),
        families={t.name: t.family for t in ALL_TASKS},
    )
