"""P3's ``_score_eval`` layout grouped back into examples.

T0's rank-classification subsets (``*_score_eval``, built by t5's ``rank_classification``
preprocessor) hold one row per (example, answer choice): ``idx = [example, choice]``, the
example's prompt in ``inputs``, the choice in ``targets`` and ``is_correct``. Taken row by row
each would be an example of its own (a two-choice set scores exactly 50%, trained or not);
here the rows of one ``idx[0]`` become one :class:`~mixlight_tune.schema.Example` whose
choices are the rows' targets in ``idx[1]`` order and whose answer is the correct one.

A set that cannot be scored is refused, naming the source row: a row without ``is_correct``
or ``idx``, an example with no correct choice or several, a missing choice, rows of one
example with different prompts, a repeated ``idx``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .data_files import Located, Naming, text
from .schema import Example

FIX = "each example needs one row per choice, idx = [example, choice], exactly one is_correct"


@dataclass
class _Group:
    """The rows of one example so far: ``{choice: (target, is_correct)}``."""

    where: str
    row: Mapping[str, Any]
    inputs: str
    choices: dict[int, tuple[str, bool]] = field(default_factory=dict)


def group(rows: Iterable[Located], naming: Naming) -> list[Example]:
    """One example per ``idx[0]``, in ``idx[0]`` order."""
    groups: dict[int, _Group] = {}
    for where, row in rows:
        if not isinstance(row, Mapping):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        example, choice = _idx(row, where)
        correct = row.get("is_correct")
        if correct is None:
            raise ValueError(
                f"{where}: a _score_eval row without 'is_correct' (P3's rank-classification "
                f"layout marks the right choice of each example); {FIX}, or give the "
                "answer_choices layout instead"
            )
        if not isinstance(correct, bool):
            raise ValueError(f"{where}: 'is_correct' must be true or false, got {correct!r}")
        inputs = text(row, "inputs", where)
        found = groups.setdefault(example, _Group(where, row, inputs))
        if found.inputs != inputs:
            raise ValueError(
                f"{where}: example {example}'s rows have different inputs (the first is at "
                f"{found.where}); rows with the same idx[0] share one prompt"
            )
        if choice in found.choices:
            raise ValueError(f"{where}: idx [{example}, {choice}] is repeated; {FIX}")
        found.choices[choice] = (text(row, "targets", where), correct)
    return [_example(number, g, naming) for number, g in sorted(groups.items())]


def _idx(row: Mapping[str, Any], where: str) -> tuple[int, int]:
    idx = row.get("idx")
    pair = list(idx) if isinstance(idx, (list, tuple)) else []
    if len(pair) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in pair):
        pair = [-1]
    if min(pair) < 0:
        raise ValueError(
            f"{where}: a _score_eval row needs idx = [example, choice] (two integers >= 0), "
            f"got {idx!r}; {FIX}"
        )
    return pair[0], pair[1]


def _example(number: int, g: _Group, naming: Naming) -> Example:
    order = sorted(g.choices)
    missing = sorted(set(range(order[-1] + 1)) - set(order))
    if missing:
        raise ValueError(
            f"{g.where}: example {number} lacks choice(s) {missing} (it has {order}); the set "
            f"is incomplete: {FIX}"
        )
    choices = tuple(g.choices[c][0] for c in order)
    right = [c for c in order if g.choices[c][1]]
    if len(right) != 1:
        what = "no correct choice" if not right else f"{len(right)} correct choices"
        raise ValueError(
            f"{g.where}: example {number} has {what} among {list(choices)}; {FIX} = true"
        )
    if len(set(choices)) != len(choices):
        raise ValueError(f"{g.where}: example {number}'s choices have duplicates: {list(choices)}")
    task, template = naming.names(g.row, g.where)
    answer = right[0]
    return Example(task, template, g.inputs, choices[answer], choices, answer, naming.source)
