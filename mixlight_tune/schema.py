"""Records of the demo suite: prompt templates, generated items, tasks and rendered examples."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One rendered prompt.

    ``inputs``/``targets`` are the text pair used for training. When ``choices`` is set the
    example is also a rank-classification item: ``targets == choices[answer]``. ``source``
    names the data source it was read from (per-source scores); it takes no part in
    equality.
    """

    task: str
    template: str
    inputs: str
    targets: str
    choices: tuple[str, ...] | None = None
    answer: int | None = None
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class Template:
    """A prompt template: ``text`` is a ``str.format`` string over an item's fields.

    ``choices``, when given, are the template's own answer words (a verbalizer): the item's
    ``answer`` is a label index into them, so templates of one task may phrase labels
    differently ("yes"/"no" in one, "true"/"false" in another).
    """

    name: str
    text: str
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Item:
    """A generated task instance before any template is applied.

    Exactly one way of naming the answer is used: a label index ``answer`` into the
    template's choices, an index into item-level ``choices`` (names, options), or a free
    ``target`` text for generation tasks.
    """

    fields: Mapping[str, str]
    answer: int | None = None
    choices: tuple[str, ...] | None = None
    target: str | None = None


@dataclass(frozen=True)
class Task:
    """A task: a family, several templates, and a generator of items from an ``rng``.

    ``templates`` are the prompts tuning sees (or, for a held-out task, the prompts it is
    scored with); ``new_templates`` are prompts of a training task that tuning never sees.
    """

    name: str
    family: str
    templates: tuple[Template, ...]
    generate: Callable[[random.Random], Item]
    held_out: bool = False
    new_templates: tuple[Template, ...] = ()

    def render(self, item: Item, template: Template) -> Example:
        """Apply ``template`` to ``item``, resolving the target and the answer choices."""
        inputs = template.text.format(**item.fields)
        choices = template.choices or item.choices
        if choices is None:
            if item.target is None:
                raise ValueError(f"task {self.name}: item has neither choices nor a target")
            return Example(self.name, template.name, inputs, item.target)
        if item.answer is None or not 0 <= item.answer < len(choices):
            raise ValueError(f"task {self.name}: answer {item.answer} outside {choices}")
        return Example(
            self.name, template.name, inputs, choices[item.answer], tuple(choices), item.answer
        )


def make_templates(
    *specs: str | tuple[str, tuple[str, ...]], prefix: str = "t"
) -> tuple[Template, ...]:
    """Build templates named ``<prefix>1``, ``<prefix>2``, ... from texts, or ``(text,
    choices)`` pairs for verbalizers."""
    templates = []
    for i, spec in enumerate(specs, start=1):
        text, choices = (spec, None) if isinstance(spec, str) else spec
        templates.append(Template(f"{prefix}{i}", text, choices))
    return tuple(templates)
