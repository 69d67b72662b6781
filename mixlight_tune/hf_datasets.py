"""Rows read with Hugging Face ``datasets`` (an optional dependency, imported when needed).

Three kinds of source: a folder written by ``save_to_disk`` (a ``Dataset`` or a
``DatasetDict``, whose ``split`` is chosen), a folder in a Hub repository's layout (data files,
or a ``README.md`` naming configurations; ``name`` picks one, as does a sub-folder of that
name) and a Hub dataset id. A Hub id is read from the Hub cache when offline
(``HF_HUB_OFFLINE=1``: the snapshot ``datasets`` or ``hf download`` left there, else
``datasets``' own cache), else through ``datasets.load_dataset`` (which downloads into the Hub
cache). Errors are one line naming the source: a missing split lists the splits there are.

:func:`folder_table` and :func:`hub_table` give the ``datasets.Dataset`` itself: Arrow files
memory-mapped from disk (``load_dataset`` converts a repository's parquet or JSONL into the
datasets cache once), so a mixture reads rows by index (:mod:`mixlight_tune.row_tables`)
and never holds a source in memory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from . import hub
from .data_files import Located

DATASETS_HINT = "pip install datasets (it comes with pip install 'mixlight[sft]')"
SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".arrow")
# The columns an example is made of; P3's token-id ``inputs``/``targets`` are dropped when
# their ``_pretokenized`` text is there (never converted to Python lists).
COLUMNS = ("answer_choices", "task", "dataset", "template", "idx", "is_correct")
_UNKNOWN_SPLIT = re.compile(r'Unknown split "(.*)"\. Should be one of (\[.*\])')
_UNKNOWN_CONFIG = re.compile(r"BuilderConfig '(.*)' not found\. Available: (\[.*\])")


def require(what: str) -> Any:
    """The ``datasets`` module, or ImportError naming ``what`` needed it and the install."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"{what}; reading it needs the 'datasets' package: {DATASETS_HINT}"
        ) from err
    return datasets


def folder_rows(path: Path, split: str | None, name: str | None, label: str) -> Iterator[Located]:
    """The rows of a local folder: ``save_to_disk`` output, or a repository's layout."""
    return _located(folder_table(path, split, name, label), label)


def hub_rows(
    repo_id: str, name: str | None, split: str | None, revision: str | None, label: str
) -> Iterator[Located]:
    """The rows of Hub dataset ``repo_id`` (configuration ``name``, ``split``)."""
    return _located(hub_table(repo_id, name, split, revision, label), label)


def folder_table(path: Path, split: str | None, name: str | None, label: str) -> Any:
    """The ``datasets.Dataset`` of a local folder (memory-mapped Arrow: rows are read when
    indexed, never all at once), its columns those an example uses."""
    if any((path / m).is_file() for m in SAVED_MARKERS):
        datasets = require(f"{path} looks like a saved Hugging Face dataset")
        return example_columns(pick_split(datasets.load_from_disk(str(path)), split, label))
    if (path / "README.md").is_file() or any(
        p.suffix in DATA_SUFFIXES for p in path.rglob("*") if p.is_file()
    ):
        return example_columns(_load_folder(path, split, name, label))
    raise ValueError(
        f"{path} is a folder but not a saved Hugging Face dataset (none of "
        f"{', '.join(SAVED_MARKERS)}) nor data files; pass a .jsonl file or a save_to_disk "
        "directory"
    )


def hub_table(
    repo_id: str, name: str | None, split: str | None, revision: str | None, label: str
) -> Any:
    """The ``datasets.Dataset`` of Hub dataset ``repo_id`` (configuration ``name``,
    ``split``): Arrow files in the datasets cache, memory-mapped like a folder's."""
    datasets = require(f"{label} is a Hub dataset")
    if hub.offline():
        folder = hub.cached_dataset(repo_id, revision)
        if folder is not None:
            return example_columns(_load_folder(folder, split, name, label))
    try:
        data = datasets.load_dataset(
            repo_id, name, split=split, revision=revision, cache_dir=_datasets_cache()
        )
    except ConnectionError:
        place = hub.cache_dir() or "the default Hugging Face cache"
        raise ValueError(
            f"{label}: not in the Hub cache ({place}) nor the datasets cache, and "
            f"HF_HUB_OFFLINE is set: download it where there is network (hf download "
            f"{repo_id} --repo-type dataset, or load it once with datasets), or pass a local "
            "folder"
        ) from None
    except (ValueError, RuntimeError, OSError) as err:
        raise ValueError(_reason(err, label, split, name)) from None
    return example_columns(pick_split(data, split, label))


def pick_split(data: Any, split: str | None, label: str) -> Any:
    """``data`` itself, or the split ``split`` of a ``DatasetDict`` (its only one by default)."""
    if not isinstance(data, Mapping):  # a Dataset
        return data
    splits = sorted(data)
    if split is None:
        if len(splits) != 1:
            raise ValueError(
                f'{label} has splits {splits}; choose one: split = "..." in the source\'s table'
            )
        split = splits[0]
    if split not in data:
        raise ValueError(f"{label} has no split {split!r}; it has {splits}")
    return data[split]


def _load_folder(path: Path, split: str | None, name: str | None, label: str) -> Any:
    """``load_dataset`` of a repository-layout folder; ``name`` is a configuration or a
    sub-folder (the Hub's parquet export keeps one folder per configuration)."""
    datasets = require(f"{label} is a dataset folder")
    target, config = (path / name, None) if name and (path / name).is_dir() else (path, name)
    if any((target / m).is_file() for m in SAVED_MARKERS):
        return pick_split(datasets.load_from_disk(str(target)), split, label)
    try:
        data = datasets.load_dataset(str(target), config, split=split, cache_dir=_datasets_cache())
    except (ValueError, RuntimeError, OSError) as err:
        raise ValueError(_reason(err, label, split, name)) from None
    return pick_split(data, split, label)


def _reason(err: Exception, label: str, split: str | None, name: str | None) -> str:
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if found := _UNKNOWN_SPLIT.search(message):
        return f"{label} has no split {split!r}; it has {found[2]}"
    if found := _UNKNOWN_CONFIG.search(message):
        return f"{label} has no configuration {name!r}; it has {found[2]}"
    if isinstance(err, FileNotFoundError):
        return f"{label}: its files are not all there ({message}); download it whole"
    if "scripts are no longer supported" in message:
        return (
            f"{label}: the repository is read by a loading script, which datasets >= 4 no "
            'longer runs; use its parquet export (revision = "refs/convert/parquet") or a '
            "local copy"
        )
    return f"{label}: could not be read ({type(err).__name__}: {message})"


def _datasets_cache() -> str | None:
    return os.environ.get("HF_DATASETS_CACHE") or None


def example_columns(data: Any) -> Any:
    """Of a ``datasets`` table, only the columns an example uses."""
    names = getattr(data, "column_names", None)
    if names is None:
        return data
    texts = [c for c in ("inputs", "targets") if f"{c}_pretokenized" not in names]
    keep = [c for c in names if c in COLUMNS or c.endswith("_pretokenized") or c in texts]
    return data.select_columns(keep)


def _located(data: Any, label: str) -> Iterator[Located]:
    """``(where, row)`` pairs of a table."""
    return ((f"{label} row {n}", row) for n, row in enumerate(data, start=1))
