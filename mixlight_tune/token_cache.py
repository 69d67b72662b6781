"""The training data tokenised once: ``output_dir/tokens.safetensors``.

A run tokenises its rows (truncated to ``max_input_tokens`` / ``max_target_tokens``, EOS
kept) and keeps the ids in one safetensors file: flat ``int32`` arrays of every row's input
and target ids with their offsets, and in the metadata the key they were made under (the
data's sha256 or the built-in mixture's settings, the tokenizer files' sha256, the two
limits). A resumed run, or any process of a parallel run, reads it instead of tokenising
again; a file of another key is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from ._files import atomic_write, sha256_of
from .steps import Pair

FILE = "tokens.safetensors"
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
