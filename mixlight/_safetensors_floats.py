"""Read the floating-point tensors of a safetensors file into float32 numpy arrays, without
torch: ``safetensors.numpy`` cannot read bfloat16 (numpy has no such dtype), the type many
adapters on the Hugging Face Hub are stored in. The format: an 8-byte little-endian header
length, a JSON header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}`` and the tensors' bytes, which the offsets must cover exactly.
Every way a file can fail to be that is an :class:`~mixlight.AdapterFileError` naming the file
and the tensor; the caller says what to do about it (``fix``)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from mixlight.adapter_file import AdapterFileError

# Little-endian storage types; bfloat16 is read as the high half of a float32.
FLOAT_DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
}
_HEADER_LENGTH_BYTES = 8


@attrs.frozen
class _Entry:
    """One tensor's header entry, checked: where its bytes are in the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def read_float32(data: bytes, where: Path, fix: str) -> dict[str, np.ndarray]:
    """The tensors of safetensors ``data`` (the bytes of file ``where``) as float32 arrays;
    BF16, F16, F32 and F64 tensors are read, any other dtype refused."""
    header, body_start = _header(data, where, fix)
    _check_metadata(header.pop("__metadata__", {}), where, fix)
    entries = [_entry(name, spec, where, fix) for name, spec in header.items()]
    _check_coverage(entries, len(data) - body_start, where, fix)
    return {entry.name: _decode(entry, data, body_start) for entry in entries}


def _header(data: bytes, where: Path, fix: str) -> tuple[dict[str, Any], int]:
    """The JSON header, and where the data section starts."""
    if len(data) < _HEADER_LENGTH_BYTES:
        raise AdapterFileError(
            f"{where} is not a safetensors file: it holds {len(data)} bytes, fewer than the "
            f"{_HEADER_LENGTH_BYTES} of its header length field; {fix}"
        )
    length = int.from_bytes(data[:_HEADER_LENGTH_BYTES], "little")
    body_start = _HEADER_LENGTH_BYTES + length
    if body_start > len(data):
        raise AdapterFileError(
            f"{where} is truncated or not a safetensors file: its header length field says "
            f"{length} bytes, the file holds {len(data) - _HEADER_LENGTH_BYTES} after it; {fix}"
        )
    try:
        header = json.loads(data[_HEADER_LENGTH_BYTES:body_start])
    except (UnicodeDecodeError, ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise AdapterFileError(
            f"{where} is not a safetensors file: its header is not a JSON object; {fix}"
        )
    return header, body_start


def _check_metadata(metadata: Any, where: Path, fix: str) -> None:
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise AdapterFileError(
            f"{where}: its safetensors __metadata__ is {type(metadata).__name__} "
            f"{short_repr(metadata)}, not a map of strings to strings; {fix}"
        )


def _entry(name: str, spec: Any, where: Path, fix: str) -> _Entry:
    """``spec``'s header entry checked for form, dtype and byte size."""
    try:
        dtype, shape, (begin, end) = spec["dtype"], spec["shape"], spec["data_offsets"]
    except (TypeError, KeyError, ValueError):
        dtype, shape, begin, end = None, None, None, None
    numbers = [*shape, begin, end] if isinstance(shape, list) else [None]
    if not isinstance(dtype, str) or not all(_is_count(n) for n in numbers) or begin > end:
        raise AdapterFileError(
            f"{where}: the header entry of tensor {name!r} is {short_repr(spec)}, not "
            "{'dtype': str, 'shape': [int, ...], 'data_offsets': [begin, end]}; " + fix
        )
    if dtype not in FLOAT_DTYPES:
        raise AdapterFileError(
            f"{where}: tensor {name!r} has dtype {dtype}; adapter weights are floating point "
            f"({', '.join(FLOAT_DTYPES)}): convert the tensor to float32 and save it again"
        )
    size = math.prod(shape) * FLOAT_DTYPES[dtype].itemsize
    if end - begin != size:
        raise AdapterFileError(
            f"{where}: tensor {name!r} of shape {tuple(shape)} and dtype {dtype} needs {size} "
            f"bytes, its data_offsets [{begin}, {end}] hold {end - begin}; {fix}"
        )
    return _Entry(name, dtype, tuple(shape), begin, end)


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_coverage(entries: list[_Entry], body: int, where: Path, fix: str) -> None:
    """The tensors' byte ranges must tile the data section: no gap, no overlap, no excess."""
    needed = max((e.end for e in entries), default=0)
    if needed > body:
        raise AdapterFileError(
            f"{where} is truncated: its tensors need {needed} bytes of data, the file holds "
            f"{body}; {fix}"
        )
    position = 0
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if entry.begin != position:
            raise AdapterFileError(
                f"{where}: the bytes of tensor {entry.name!r} start at {entry.begin}, the "
                f"previous tensor ends at {position} (tensors overlap or leave a gap); {fix}"
            )
        position = entry.end
    if position != body:
        raise AdapterFileError(
            f"{where}: {body - position} bytes after the last tensor belong to no tensor; {fix}"
        )


def _decode(entry: _Entry, data: bytes, body_start: int) -> np.ndarray:
    stored = FLOAT_DTYPES[entry.dtype]
    raw = np.frombuffer(
        data, stored, count=math.prod(entry.shape), offset=body_start + entry.begin
    ).reshape(entry.shape)
    if entry.dtype == "BF16":  # bfloat16 is the upper 16 bits of a float32
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["FLOAT_DTYPES", "read_float32", "short_repr"]
