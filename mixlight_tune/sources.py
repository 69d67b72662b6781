"""``data`` and ``eval_data`` of a ``mixlight tune`` config: one source or a list of them.

A source is a string (a ``.jsonl`` file, a ``datasets`` folder or a Hub dataset id) or a
table ``{path = ..., split = ..., name = ..., revision = ..., task = ..., template = ...}``:

* ``path``: a local path (relative: from the config file's folder) or, when nothing is
  there and it reads as one, a Hub dataset id (:mod:`mixlight_tune.hub`);
* ``split``: the split of a ``DatasetDict`` folder or a Hub dataset;
* ``name``: the configuration of a Hub dataset (P3's subset, e.g.
  ``super_glue_rte_GPT_3_style_score_eval``) or of a folder in a Hub repository's layout;
* ``revision``: a Hub dataset's branch, tag or commit;
* ``task``, ``template``: the names every example of the source takes (else: the rows'
  columns, else the P3 subset name's, :mod:`mixlight_tune.data_files`).

A :class:`DataSource` is a local path when ``path`` is a :class:`~pathlib.Path` and a Hub id
when it is a ``str``. :meth:`DataSource.resolved` writes it back as a config reads it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from . import hub
from ._files import sha256_of
from .data_files import Naming, load_examples, rows_to_examples
from .row_tables import ArrowTable, ExampleTable, JsonlTable
from .schema import Example


class SourceError(ValueError):
    """A ``data``/``eval_data`` value that is not a source (the config's key and the fix)."""


@dataclass(frozen=True)
class DataSource:
    """One data source (see the module's docstring)."""

    path: Path | str
    split: str | None = None
    name: str | None = None
    revision: str | None = None
    task: str | None = None
    template: str | None = None

    @property
    def hub_id(self) -> str | None:
        """The Hub dataset id, or ``None`` for a local file or folder."""
        return self.path if isinstance(self.path, str) else None

    def __str__(self) -> str:
        extras = [x for x in (self.name, self.split) if x]
        return str(self.path) + (f" ({', '.join(extras)})" if extras else "")

    def resolved(self) -> str | dict[str, str]:
        """The config value: the path alone, or a table of the keys that are set."""
        keys = {f.name: getattr(self, f.name) for f in fields(self)[1:]}
        keys = {k: v for k, v in keys.items() if v is not None}
        return {"path": str(self.path), **keys} if keys else str(self.path)

    def subset(self) -> str:
        """The name the P3 naming rule reads: ``name``, else the file's stem or the folder's
        (or repository's) name."""
        if self.name:
            return self.name
        if isinstance(self.path, Path):
            return self.path.stem if self.path.is_file() else self.path.name
        return self.path.rsplit("/", 1)[-1]

    def read(self) -> list[Example]:
        """The source's examples (``ValueError``/``OSError``/``ImportError`` naming it)."""
        naming = Naming(self.subset(), self.task, self.template, str(self))
        if self.hub_id is None:
            return load_examples(self.path, self.split, naming, self.name)
        from .hf_datasets import hub_rows

        rows = hub_rows(self.hub_id, self.name, self.split, self.revision, str(self))
        return rows_to_examples(rows, naming)

    def indexed(self) -> ExampleTable:
        """The source's examples read by index, none of them read yet (a mixture's:
        :mod:`mixlight_tune.row_tables`)."""
        naming = Naming(self.subset(), self.task, self.template, str(self))
        path = self.path
        if isinstance(path, str):  # a Hub id
            from .hf_datasets import hub_table

            data = hub_table(path, self.name, self.split, self.revision, str(self))
            return ExampleTable(ArrowTable(data, str(self)), naming)
        if path.is_dir():
            from .hf_datasets import folder_table

            data = folder_table(path, self.split, self.name, str(self))
            return ExampleTable(ArrowTable(data, str(self)), naming)
        if path.suffix != ".jsonl":
            raise ValueError(f"{path}: expected a .jsonl file or a save_to_disk directory")
        return ExampleTable(JsonlTable(path), naming)

    def digest(self) -> str:
        """What identifies the source's bytes: a local file's or folder's sha256; a Hub
        dataset's cached commit (``hub:<commit>``), else its revision as given."""
        if self.hub_id is None:
            return sha256_of(self.path)
        folder = hub.cached_dataset(self.hub_id, self.revision)
        return f"hub:{folder.name if folder is not None else self.revision or 'main'}"


def parse_sources(value: Any, key: str, base_dir: Path) -> tuple[DataSource, ...] | None:
    """``data``/``eval_data``: a source or a non-empty list of sources (``None``: absent)."""
    if value is None:
        return None
    if isinstance(value, list):
        if not value:
            raise SourceError(f"{key} is an empty list; give at least one source or omit {key}")
        return tuple(parse_source(v, f"{key}[{i}]", base_dir) for i, v in enumerate(value))
    return (parse_source(value, key, base_dir),)


def resolved(sources: Sequence[DataSource] | None) -> Any:
    """The config value of ``sources``: one source as itself, several as a list."""
    if sources is None:
        return None
    values = [s.resolved() for s in sources]
    return values[0] if len(values) == 1 else values


def read_all(sources: Sequence[DataSource], key: str) -> list[Example]:
    """Every source's examples, in order; errors are prefixed with ``key``."""
    examples: list[Example] = []
    for source in sources:
        try:
            examples += source.read()
        except (ValueError, OSError, ImportError) as err:
            raise SourceError(f"{key}: {err}") from None
    return examples


def local_paths(sources: Sequence[DataSource] | None) -> list[Path]:
    """The local files and folders among ``sources``."""
    return [s.path for s in sources or () if isinstance(s.path, Path)]


def parse_source(value: Any, key: str, base_dir: Path) -> DataSource:
    """One source: a path or Hub id (a string), or a table of :class:`DataSource`'s keys."""
    if isinstance(value, str):
        return DataSource(_path(value, key, base_dir))
    if not isinstance(value, dict):
        raise SourceError(
            f"{key} must be a path or Hub id (a string), a table {{path = ..., split = ...}} or "
            f"a list of them, got {value!r}"
        )
    known = [f.name for f in fields(DataSource)]
    unknown = sorted(set(value) - set(known))
    if unknown or "path" not in value:
        raise SourceError(
            f"{key}: {'unknown key(s) ' + ', '.join(unknown) if unknown else 'no path'}; a "
            f"source table has path (required) and {', '.join(known[1:])}"
        )
    for k, v in value.items():
        if not isinstance(v, str) or not v.strip():
            raise SourceError(f"{key}.{k} must be a non-empty string, got {v!r}")
    source = DataSource(_path(value["path"], f"{key}.path", base_dir), *_rest(value, known))
    _check_keys(source, key)
    return source


def _rest(value: dict[str, str], known: list[str]) -> list[str | None]:
    return [value.get(k) for k in known[1:]]


def _path(value: str, key: str, base_dir: Path) -> Path | str:
    if not value:
        raise SourceError(f"{key} must be a path (a string), got {value!r}")
    path = Path(os.path.abspath(base_dir / value))
    if path.exists():
        return path
    if hub.is_hub_id(value):
        return value
    raise SourceError(
        f"{key} = {value!r}: nothing at {path} (expected a .jsonl file or save_to_disk folder, "
        "or a Hub dataset id; relative paths are taken from the config file's folder)"
    )


def _check_keys(source: DataSource, key: str) -> None:
    if source.revision is not None and source.hub_id is None:
        raise SourceError(
            f"{key}.revision applies to a Hub dataset id; {source.path} is a local path"
        )
    if isinstance(source.path, Path) and source.path.is_file():
        extra = [k for k in ("split", "name") if getattr(source, k) is not None]
        if extra:
            raise SourceError(
                f"{key}.{extra[0]} applies to a datasets folder or a Hub dataset; "
                f"{source.path} is a file"
            )
