"""Load users' own P3/promptsource-style prompted data from local files.

Two sources are accepted:

* a ``.jsonl`` file, one JSON object per line with ``inputs`` and ``targets`` (strings),
  optionally ``answer_choices`` (list of strings, which must contain ``targets``), ``task``
  or ``dataset``, and ``template``;
* a directory written by Hugging Face ``datasets``' ``save_to_disk`` with the same columns.
  P3's own column names ``inputs_pretokenized``/``targets_pretokenized`` are used when
  present (P3's ``inputs``/``targets`` hold token ids there).

Text fields are stripped of surrounding whitespace (P3 targets carry a leading space).
Blank lines are skipped. Anything else malformed raises ``ValueError`` naming the file and
the 1-based line (or row) number.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .schema import Example

DEFAULT_TEMPLATE = "default"


def _text(row: Mapping[str, Any], key: str, where: str) -> str:
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


def row_to_example(row: Any, where: str, default_task: str) -> Example:
    """Validate one record and turn it into an ``Example``; ``where`` prefixes errors."""
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    inputs, targets = _text(row, "inputs", where), _text(row, "targets", where)
    task = _name(row, ("task", "dataset"), default_task, where)
    template = _name(row, ("template",), DEFAULT_TEMPLATE, where)
    choices = _choices(row, where)
    if choices is None:
        return Example(task, template, inputs, targets)
    if targets not in choices:
        raise ValueError(
            f"{where}: targets {targets!r} is not among answer_choices {list(choices)}"
        )
    return Example(task, template, inputs, targets, choices, choices.index(targets))


def _read_jsonl(path: Path) -> list[Example]:
    examples = []
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
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: bad JSON ({err.msg})") from None
        except RecursionError:
            raise ValueError(
                f"{where}: JSON nested too deeply to read; each line must be one flat object "
                "with string fields inputs and targets"
            ) from None
        examples.append(row_to_example(row, where, path.stem))
    return examples


def _read_saved_dataset(path: Path, split: str | None) -> list[Example]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"{path} looks like a saved Hugging Face dataset; reading it needs the "
            "'datasets' package: pip install datasets"
        ) from err
    data = datasets.load_from_disk(str(path))
    if isinstance(data, Mapping):  # a DatasetDict: pick one split
        if split is None:
            if len(data) != 1:
                raise ValueError(f"{path} has splits {sorted(data)}; pass split=")
            split = next(iter(data))
        if split not in data:
            raise ValueError(f"{path} has no split {split!r}; it has {sorted(data)}")
        data = data[split]
    rows: Iterable[Any] = data
    return [
        row_to_example(row, f"{path} row {number}", path.name)
        for number, row in enumerate(rows, start=1)
    ]


def load_examples(path: str | os.PathLike[str], split: str | None = None) -> list[Example]:
    """Read prompted examples from a ``.jsonl`` file or a ``save_to_disk`` directory.

    The task name defaults to the file's stem (or the directory's name) and the template
    name to ``"default"``. ``split`` selects a split of a saved ``DatasetDict``.
    """
    path = Path(path)
    if path.is_dir():
        markers = ("dataset_info.json", "state.json", "dataset_dict.json")
        if not any((path / m).is_file() for m in markers):
            raise ValueError(
                f"{path} is a folder but not a saved Hugging Face dataset (none of "
                f"{', '.join(markers)}); pass a .jsonl file or a save_to_disk directory"
            )
        return _read_saved_dataset(path, split)
    if not path.exists():
        raise FileNotFoundError(f"no data file or dataset directory at {path}")
    if path.suffix != ".jsonl":
        raise ValueError(f"{path}: expected a .jsonl file or a save_to_disk directory")
    return _read_jsonl(path)
