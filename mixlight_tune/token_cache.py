"""The training data tokenised once: ``output_dir/tokens.safetensors``.

A run tokenises its rows (truncated to ``max_input_tokens`` / ``max_target_tokens``, EOS
kept) and keeps the ids in one safetensors file: flat ``int32`` arrays of every row's input
and target ids with their offsets, and in the metadata the key they were made under (the
data's sha256 or the built-in mixture's settings, the tokenizer files' sha256, the two
limits). A resumed run, or any process of a parallel run, reads it instead of tokenising
again; a file of another key is ignored and rewritten.

A ``[[mixture]]`` run caches each source on its own, ``output_dir/tokens/<key>.safetensors``
(:func:`source_tokens`), its key made of that source's content digest, split and
configuration, the tokenizer and the limits (not the mixture's weights, steps or seeds): the
ids of the source's examples tokenised so far, by example index (``rows``). The file is
memory-mapped, never read whole; a run that needs examples it lacks tokenises those alone
and rewrites it with all of them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from ._files import atomic_write, sha256_of
from .steps import Pair

FILE = "tokens.safetensors"
SOURCES_DIR = "tokens"  # a mixture's caches, one file per source
CHUNK = 4096  # examples tokenised between two appends to the flat arrays
_DTYPES = {"I32": "<i4", "I64": "<i8"}
META_KEY = "mixlight_tune_tokens"
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json")


def cache_key(data: Mapping[str, Any], model_dir: Path, limits: tuple[int, int]) -> str:
    """The sha256 naming one tokenisation: of ``data`` (what identifies the rows), the
    tokenizer files in ``model_dir`` and the two truncation limits."""
    tokenizer = {
        name: sha256_of(model_dir / name)
        for name in TOKENIZER_FILES
        if (model_dir / name).is_file()
    }
    blob = json.dumps({"format": 1, "data": data, "tokenizer": tokenizer, "limits": limits})
    return hashlib.sha256(blob.encode()).hexdigest()


def _flat(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(rows) + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    ids = np.fromiter((i for r in rows for i in r), np.int32, count=int(offsets[-1]))
    return ids, offsets


def _rows(ids: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    return [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def read(path: Path, key: str) -> list[Pair] | None:
    """The pairs cached at ``path`` under ``key``; ``None`` when absent, damaged or of
    another key."""
    try:
        raw = path.read_bytes()
        size = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8 : 8 + size]).get("__metadata__", {})
        if json.loads(meta.get(META_KEY, "{}")).get("key") != key:
            return None
        arrays = load(raw)
    except (OSError, ValueError, SafetensorError):
        return None
    inputs = _rows(arrays["inputs"], arrays["input_offsets"])
    targets = _rows(arrays["targets"], arrays["target_offsets"])
    return list(zip(inputs, targets, strict=True))


def write(path: Path, key: str, pairs: Sequence[Pair]) -> None:
    inputs, input_offsets = _flat([p[0] for p in pairs])
    targets, target_offsets = _flat([p[1] for p in pairs])
    arrays = {
        "inputs": inputs,
        "input_offsets": input_offsets,
        "targets": targets,
        "target_offsets": target_offsets,
    }
    atomic_write(path, save(arrays, metadata={META_KEY: json.dumps({"key": key})}))


def cached_pairs(
    path: Path, key: str, tokenize: Callable[[], list[Pair]], writer: bool
) -> tuple[list[Pair], bool]:
    """``(pairs, read from the cache)``: the cached ones, else ``tokenize()`` (written to
    ``path`` by the ``writer`` process)."""
    found = read(path, key)
    if found is not None:
        return found, True
    pairs = tokenize()
    if writer:
        write(path, key, pairs)
    return pairs, False


@dataclass(frozen=True)
class SourceTokens:
    """The ids of some examples of one source: example ``rows[i]`` (``rows`` sorted) has
    input ids ``inputs[input_offsets[i]:input_offsets[i + 1]]``, likewise its targets."""

    rows: np.ndarray
    inputs: np.ndarray
    input_offsets: np.ndarray
    targets: np.ndarray
    target_offsets: np.ndarray

    @classmethod
    def empty(cls) -> SourceTokens:
        none, start = np.zeros(0, np.int32), np.zeros(1, np.int64)
        return cls(np.zeros(0, np.int64), none, start, none, start)

    def pair(self, slot: int) -> Pair:
        """The ids of the example at position ``slot`` (of ``rows``)."""
        a, b = self.input_offsets[slot : slot + 2]
        c, d = self.target_offsets[slot : slot + 2]
        return self.inputs[a:b].tolist(), self.targets[c:d].tolist()

    def slots(self, rows: np.ndarray) -> np.ndarray:
        """The positions of ``rows`` (all held here) in :attr:`rows`."""
        return np.searchsorted(self.rows, rows)

    def missing(self, rows: np.ndarray) -> np.ndarray:
        """Which of ``rows`` are not held here, sorted, once each."""
        return np.setdiff1d(rows, self.rows)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "rows": self.rows,
            "inputs": self.inputs,
            "input_offsets": self.input_offsets,
            "targets": self.targets,
            "target_offsets": self.target_offsets,
        }

    def valid(self) -> bool:
        n = len(self.rows)
        return (
            len(self.input_offsets) == len(self.target_offsets) == n + 1
            and int(self.input_offsets[-1]) == len(self.inputs)
            and int(self.target_offsets[-1]) == len(self.targets)
            and bool(np.all(np.diff(self.rows) > 0))
        )


def source_path(directory: Path, key: str) -> Path:
    """The cache file of the source of ``key`` in ``directory``."""
    return directory / f"{key}.safetensors"


def source_tokens(
    path: Path,
    key: str,
    rows: np.ndarray,
    tokenize: Callable[[np.ndarray], Iterable[Pair]],
    writer: bool,
) -> SourceTokens:
    """The ids of examples ``rows`` of one source: those cached at ``path`` under ``key``
    (memory-mapped), the others ``tokenize(missing rows)`` now; the ``writer`` process then
    rewrites ``path`` with both."""
    cached = read_source(path, key) or SourceTokens.empty()
    missing = cached.missing(rows)
    if not len(missing):
        return cached
    fresh = _tokenised(missing, tokenize(missing))
    merged = _merge(cached, fresh)
    if writer:
        atomic_write(path, save(merged.arrays(), metadata={META_KEY: json.dumps({"key": key})}))
        return read_source(path, key) or merged
    return merged


def read_source(path: Path, key: str) -> SourceTokens | None:
    """The source cache at ``path``, memory-mapped; ``None`` when absent, damaged or of
    another key."""
    try:
        raw = np.memmap(path, np.uint8, mode="r")
        size = int.from_bytes(raw[:8].tobytes(), "little")
        header = json.loads(raw[8 : 8 + size].tobytes())
        meta = header.pop("__metadata__", {})
        if json.loads(meta.get(META_KEY, "{}")).get("key") != key:
            return None
        body = raw[8 + size :]
        arrays = {
            name: body[slice(*info["data_offsets"])].view(_DTYPES[info["dtype"]])
            for name, info in header.items()
        }
        found = SourceTokens(**arrays)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if found.valid() else None


def _tokenised(rows: np.ndarray, pairs: Iterable[Pair]) -> SourceTokens:
    """``pairs`` (the ids of ``rows``, in order) as flat arrays, a chunk at a time."""
    parts: list[tuple[np.ndarray, ...]] = []
    pairs = iter(pairs)
    while chunk := list(itertools.islice(pairs, CHUNK)):
        parts.append((*_flat([p[0] for p in chunk]), *_flat([p[1] for p in chunk])))
    if sum(len(p[1]) - 1 for p in parts) != len(rows):
        raise ValueError(f"tokenised {sum(len(p[1]) - 1 for p in parts)} rows of {len(rows)}")
    inputs, input_offsets = _joined([(p[0], p[1]) for p in parts])
    targets, target_offsets = _joined([(p[2], p[3]) for p in parts])
    return SourceTokens(rows.astype(np.int64), inputs, input_offsets, targets, target_offsets)


def _joined(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``(ids, offsets)`` pieces as one."""
    if not parts:
        return np.zeros(0, np.int32), np.zeros(1, np.int64)
    ids = np.concatenate([p[0] for p in parts]).astype(np.int32)
    starts = np.cumsum([0] + [len(p[0]) for p in parts[:-1]])
    offsets = np.concatenate(
        [np.zeros(1, np.int64)] + [p[1][1:] + start for p, start in zip(parts, starts, strict=True)]
    )
    return ids, offsets.astype(np.int64)


def _merge(a: SourceTokens, b: SourceTokens) -> SourceTokens:
    """The examples of ``a`` and ``b`` (disjoint rows) in one, sorted by row."""
    order = np.argsort(np.concatenate([a.rows, b.rows]), kind="stable")
    inputs, input_offsets = _gather(
        *_joined([(a.inputs, a.input_offsets), (b.inputs, b.input_offsets)]), order
    )
    targets, target_offsets = _gather(
        *_joined([(a.targets, a.target_offsets), (b.targets, b.target_offsets)]), order
    )
    rows = np.concatenate([a.rows, b.rows])[order]
    return SourceTokens(rows, inputs, input_offsets, targets, target_offsets)


def _gather(
    ids: np.ndarray, offsets: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The rows of flat ``(ids, offsets)`` taken in ``order``."""
    lengths = np.diff(offsets)[order]
    out = np.zeros(len(order) + 1, np.int64)
    out[1:] = np.cumsum(lengths)
    index = np.repeat(offsets[:-1][order] - out[:-1], lengths) + np.arange(out[-1])
    return ids[index], out
