"""Prompted examples from rows: P3/promptsource-style records in local files.

A row holds ``inputs`` and ``targets`` (strings; P3's ``inputs_pretokenized`` /
``targets_pretokenized`` are used when present, since P3's ``inputs``/``targets`` hold token
ids), optionally ``answer_choices`` (a list of strings that contains ``targets``: the row is
then a rank-classification item), ``task`` (or ``dataset``) and ``template``. Rows in P3's
``_score_eval`` layout (``idx = [example, choice]``, ``is_correct``) are grouped back into one
example per ``idx[0]`` (:mod:`mixlight_tune.score_eval`).

Each row's task and template come, first to last: from the config (a source's ``task`` /
``template``), from the row's own columns, from the source's P3 subset name
(:func:`mixlight_tune.p3.split_name`; a JSONL file's stem, a folder's name, a Hub source's
``name``), else the task is that name and the template ``"default"``.

Two local sources are read here: a ``.jsonl`` file (one JSON object per line; blank lines are
skipped) and a folder written by Hugging Face ``datasets`` (:mod:`mixlight_tune.hf_datasets`).
Text fields are stripped of surrounding whitespace (P3 targets carry a leading space).
Anything malformed raises ``ValueError`` naming the file and the 1-based line (or row).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import p3
from .schema import Example

DEFAULT_TEMPLATE = "default"
# A row and where it is, for errors ("train.jsonl:3", "data/rte row 7").
Located = tuple[str, Any]


@dataclass(frozen=True)
class Naming:
    """How one source names its examples: ``subset`` is its P3 subset name (or file stem,
    folder name); ``task``/``template`` the config's overrides; ``source`` the label each
    example keeps (for per-source scores)."""

    subset: str
    task: str | None = None
    template: str | None = None
    source: str = ""

    def names(self, row: Mapping[str, Any], where: str) -> tuple[str, str]:
        """``(task, template)`` of ``row``: the config's, else the row's columns, else the
        subset name's, else the subset name and ``"default"``."""
        task, template = p3.split_name(self.subset)
        task = self.task or _name(row, ("task", "dataset"), task, where)
        template = self.template or _name(row, ("template",), template or DEFAULT_TEMPLATE, where)
        return task, template


def text(row: Mapping[str, Any], key: str, where: str) -> str:
    """``row[key]`` (or its P3 ``_pretokenized`` twin) as stripped text."""
    value = row.get(f"{key}_pretokenized", row.get(key))
    if value is None:
        raise ValueError(f"{where}: missing field '{key}'")
    if not isinstance(value, str):
        raise ValueError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    return value.strip()


def _name(row: Mapping[str, Any], keys: tuple[str, ...], default: str, where: str) -> str:
    """The first of ``keys`` present in ``row`` as a non-empty string, else ``default``."""
    for key in keys:
        value = row.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: field '{key}' must be a non-empty string")
        return value.strip()
    return default


def _choices(row: Mapping[str, Any], where: str) -> tuple[str, ...] | None:
    value = row.get("answer_choices")
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
        raise ValueError(f"{where}: 'answer_choices' must be a non-empty list of strings")
    choices = tuple(c.strip() for c in value)
    if len(set(choices)) != len(choices):
        raise ValueError(f"{where}: 'answer_choices' has duplicates: {list(choices)}")
    return choices


def row_to_example(row: Any, where: str, naming: Naming) -> Example:
    """Validate one record and turn it into an ``Example``; ``where`` prefixes errors."""
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    inputs, targets = text(row, "inputs", where), text(row, "targets", where)
    task, template = naming.names(row, where)
    choices = _choices(row, where)
    if choices is None:
        return Example(task, template, inputs, targets, source=naming.source)
    if targets not in choices:
        raise ValueError(
            f"{where}: targets {targets!r} is not among answer_choices {list(choices)}"
        )
    answer = choices.index(targets)
    return Example(task, template, inputs, targets, choices, answer, source=naming.source)


def rows_to_examples(rows: Iterable[Located], naming: Naming) -> list[Example]:
    """Examples of located rows: P3's ``_score_eval`` layout (rows with ``idx``, or a subset
    named ``*_score_eval``) grouped per example, any other row one example."""
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        return []
    rows = _chain(first, rows)
    layout = isinstance(first[1], Mapping) and "idx" in first[1]
    if layout or p3.is_score_eval(naming.subset):
        from .score_eval import group

        return group(rows, naming)
    return [row_to_example(row, where, naming) for where, row in rows]


def _chain(first: Located, rest: Iterator[Located]) -> Iterator[Located]:
    yield first
    yield from rest


def _jsonl_rows(path: Path) -> Iterator[Located]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {err.start}); expected a .jsonl file with one JSON "
            "object per line"
        ) from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        yield where, json_line(line, where)


def json_line(line: str, where: str) -> Any:
    """One JSONL line's value; ``ValueError`` naming ``where`` when it is not JSON."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: bad JSON ({err.msg})") from None
    except RecursionError:
        raise ValueError(
            f"{where}: JSON nested too deeply to read; each line must be one flat object "
            "with string fields inputs and targets"
        ) from None


def load_examples(
    path: str | os.PathLike[str],
    split: str | None = None,
    naming: Naming | None = None,
    name: str | None = None,
) -> list[Example]:
    """Read prompted examples from a ``.jsonl`` file or a ``datasets`` folder.

    Without ``naming`` the source is named by the file's stem (or the folder's name): a P3
    subset name gives the task and template, any other name is the task (template
    ``"default"``). ``split`` selects a split of a saved ``DatasetDict``; ``name`` a
    configuration of a folder in a Hub repository's layout.
    """
    path = Path(path)
    if path.is_dir():
        from .hf_datasets import folder_rows

        rows = folder_rows(path, split, name, str(path))
        return rows_to_examples(rows, naming or Naming(name or path.name, source=str(path)))
    if not path.exists():
        raise FileNotFoundError(f"no data file or dataset directory at {path}")
    if path.suffix != ".jsonl":
        raise ValueError(f"{path}: expected a .jsonl file or a save_to_disk directory")
    return rows_to_examples(_jsonl_rows(path), naming or Naming(path.stem, source=str(path)))
