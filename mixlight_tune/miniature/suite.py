"""The built-in suite: the training mixture and the four evaluation sets, from a seed.

Pure Python. The same seed gives identical data on every run and machine: each (split, task)
draws from its own ``random.Random`` seeded with a string (hashed with SHA-512 by ``random``),
so adding a task never changes another task's data.

A :class:`Mixture` names the training tasks and how many of each one's templates tuning
sees. The evaluation sets (docs/demo/README.md):
- A ``held_in``: fresh items of the mixture's tasks in their training templates;
- B ``new_prompts``: fresh items of the mixture's tasks in templates never trained on;
- C ``held_out``: task families never trained on;
- ``probes``: the base model's knowledge of the world's facts (sentinel infill).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from ..schema import Example, Task, Template
from .binary_tasks import BINARY_TASKS
from .held_out_tasks import HELD_OUT_TASKS
from .probes import fact_probes
from .train_tasks import TRAIN_TASKS

ALL_TASKS: tuple[Task, ...] = TRAIN_TASKS + BINARY_TASKS + HELD_OUT_TASKS


@dataclass(frozen=True)
class Mixture:
    """The training tasks and how many of each one's templates (its first ``templates``)
    tuning sees; the rest of a task's templates are not used."""

    families: tuple[Task, ...]
    templates: int

    @property
    def tasks(self) -> tuple[Task, ...]:
        """The tasks, each cut to the templates tuning sees."""
        return tuple(
            dataclasses.replace(t, templates=t.templates[: self.templates]) for t in self.families
        )


# ``first`` (the default) is ten pick-one families with five prompts each; the shipped
# bases' tokenizer was trained on its texts, so it stays reproducible. ``wide`` adds five
# prompts per family and the two-way families; ``prompts`` and ``formats`` add one of the
# two. None of the three transfers better to prompts written elsewhere
# (docs/demo/mixtures/ablation.md), so the default stays the first.
MIXTURES: dict[str, Mixture] = {
    "first": Mixture(TRAIN_TASKS, 5),
    "prompts": Mixture(TRAIN_TASKS, 10),
    "formats": Mixture(TRAIN_TASKS + BINARY_TASKS, 5),
    "wide": Mixture(TRAIN_TASKS + BINARY_TASKS, 10),
}
DEFAULT_MIXTURE = "first"
TOKENIZER_MIXTURE = "first"


@dataclass(frozen=True)
class Suite:
    """Training examples (every training task and template, shuffled) and evaluation sets."""

    train: list[Example]
    held_in: list[Example]
    new_prompts: list[Example]
    held_out: list[Example]
    probes: list[Example]
    families: dict[str, str]

    def eval_sets(self) -> dict[str, list[Example]]:
        """The scored sets by table name, in report order."""
        return {
            "A": self.held_in,
            "B": self.new_prompts,
            "C": self.held_out,
            "probes": self.probes,
        }


def _rng(seed: int, *parts: str) -> random.Random:
    return random.Random(":".join(["mixlight-demo", str(seed), *parts]))


def _train_examples(task: Task, seed: int, n: int) -> list[Example]:
    """``n`` examples of ``task``, cycling through its training templates."""
    rng = _rng(seed, "train", task.name)
    templates = task.templates
    return [task.render(task.generate(rng), templates[i % len(templates)]) for i in range(n)]


def _scored(task: Task, templates: tuple[Template, ...], rng: random.Random, n: int):
    """``n`` fresh items of ``task``, each rendered with every one of ``templates``."""
    items = [task.generate(rng) for _ in range(n)]
    return [task.render(item, t) for t in templates for item in items]


def build_suite(
    seed: int = 0,
    train_per_task: int = 200,
    eval_per_template: int = 100,
    mixture: str = DEFAULT_MIXTURE,
) -> Suite:
    """Generate the suite of ``MIXTURES[mixture]``: ``train_per_task`` training examples per
    task (templates mixed) and ``eval_per_template`` items per template of every evaluation
    set (for table A, ``eval_per_template`` items per task, spread over its training
    templates)."""
    if train_per_task < 0 or eval_per_template < 0:
        raise ValueError("train_per_task and eval_per_template must be non-negative")
    if mixture not in MIXTURES:
        raise ValueError(f"unknown mixture {mixture!r}; valid: {', '.join(MIXTURES)}")
    tasks = MIXTURES[mixture].tasks
    train = [ex for t in tasks for ex in _train_examples(t, seed, train_per_task)]
    _rng(seed, "shuffle").shuffle(train)
    held_in = []
    for t in tasks:
        rng = _rng(seed, "held_in", t.name)
        held_in += [
            t.render(t.generate(rng), t.templates[i % len(t.templates)])
            for i in range(eval_per_template)
        ]
    new = [
        ex
        for t in tasks
        for ex in _scored(t, t.new_templates, _rng(seed, "new_prompts", t.name), eval_per_template)
    ]
    held_out = [
        ex
        for t in HELD_OUT_TASKS
        for ex in _scored(t, t.templates, _rng(seed, "held_out", t.name), eval_per_template)
    ]
    return Suite(
        train=train,
        held_in=held_in,
        new_prompts=new,
        held_out=held_out,
        probes=fact_probes(seed, eval_per_template),
        families={t.name: t.family for t in ALL_TASKS},
    )
