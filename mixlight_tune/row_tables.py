"""Sources read by index, never whole: what a ``[[mixture]]`` draws its examples from.

A :class:`RowTable` knows how many rows it has and reads the rows it is asked for:

* :class:`JsonlTable`: a ``.jsonl`` file, indexed once by the byte offset of each non-blank
  line (one pass over its bytes, nothing parsed; 16 bytes kept a line: the offset and the
  line number); a row is parsed only when it is read.
* :class:`ArrowTable`: a ``datasets.Dataset`` (a ``save_to_disk`` folder, a repository-layout
  folder or a Hub dataset, :mod:`mixlight_tune.hf_datasets`), whose Arrow files are
  memory-mapped; rows are read in chunks of :data:`CHUNK`.

:class:`ExampleTable` turns rows into :class:`~mixlight_tune.schema.Example` as
:mod:`mixlight_tune.data_files` does, one example per row. P3's ``_score_eval`` layout
(several rows per example) is an evaluation layout, refused as a training source.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import p3
from .data_files import Located, Naming, json_line, row_to_example
from .schema import Example

CHUNK = 1024


class RowTable(Protocol):
    """Rows read by index: ``len`` and :meth:`read` (``(where, row)`` of each index)."""

    def __len__(self) -> int: ...

    def read(self, indices: Iterable[int]) -> Iterator[Located]: ...


class JsonlTable:
    """A ``.jsonl`` file read line by line at the byte offsets of its non-blank lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        offsets, numbers = array("q"), array("q")
        position = 0
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    offsets.append(position)
                    numbers.append(number)
                position += len(line)
        self._offsets = np.frombuffer(offsets, np.int64) if offsets else np.zeros(0, np.int64)
        self._numbers = np.frombuffer(numbers, np.int64) if numbers else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self._offsets)

    def read(self, indices: Iterable[int]) -> Iterator[Located]:
        with open(self.path, "rb") as f:
            for j in indices:
                where = f"{self.path}:{int(self._numbers[j])}"
                f.seek(int(self._offsets[j]))
                raw = f.readline()
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise ValueError(
                        f"{where}: not UTF-8 text (byte {err.start}); expected one JSON object "
                        "per line"
                    ) from None
                yield where, json_line(line, where)


class ArrowTable:
    """A ``datasets.Dataset``: memory-mapped Arrow, read a chunk of rows at a time."""

    def __init__(self, data: Any, label: str) -> None:
        self.data, self.label = data, label

    def __len__(self) -> int:
        return len(self.data)

    def read(self, indices: Iterable[int]) -> Iterator[Located]:
        todo = [int(j) for j in indices]
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            columns = self.data[chunk]  # {column: [value of each row]}
            for n, j in enumerate(chunk):
                yield f"{self.label} row {j + 1}", {k: v[n] for k, v in columns.items()}


class ExampleTable:
    """A source's examples by index: row ``j`` is example ``j``, named by ``naming``. Its
    first row is read at once, to refuse a wrong layout or format before any training."""

    def __init__(self, table: RowTable, naming: Naming) -> None:
        self.table, self.naming = table, naming
        first = next(table.read([0])) if len(table) else None
        layout = first is not None and isinstance(first[1], Mapping) and "idx" in first[1]
        if p3.is_score_eval(naming.subset) or layout:
            raise ValueError(
                f"{naming.source} is in P3's _score_eval layout (one row per answer choice), "
                "which scores an evaluation; train on the subset without _score_eval"
            )
        if first is not None:
            row_to_example(first[1], first[0], naming)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, j: int) -> Example:
        return next(self.examples([j]))

    def examples(self, indices: Iterable[int]) -> Iterator[Example]:
        """The examples at ``indices``, in that order (read only now)."""
        for where, row in self.table.read(indices):
            yield row_to_example(row, where, self.naming)
