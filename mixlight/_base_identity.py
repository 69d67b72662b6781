"""Which base model an adapter was trained on: its name, revision and a few sampled weights.

Shapes alone cannot tell two checkpoints of one architecture apart, so a save records, when
the backend can tell, the model's name or path and revision, and a cheap digest of the
adapted modules' weights: up to :data:`PER_SITE` values read at fixed positions of each of up
to :data:`MAX_SITES` adapted weight matrices, in the canonical ``[d_in, d_out]`` orientation
(the same positions in every backend). A load compares them and *warns* on a mismatch (the
adapter still fits, it was just trained elsewhere); only shapes are a hard error.

Samples are compared with the tolerance of the coarser of the two dtypes, so a float32
checkpoint loaded in bfloat16 still counts as the same weights.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

PER_SITE = 4
MAX_SITES = 32
_RELATIVE_TOLERANCE = {"float64": 1e-12, "float32": 1e-6, "float16": 2**-10, "bfloat16": 2**-7}


@attrs.frozen
class SamplePoint:
    """Read ``weight[d_in index, d_out index]`` of the module at ``path`` (canonical order)."""

    path: str
    rows: tuple[int, ...]
    cols: tuple[int, ...]


@attrs.frozen
class BaseIdentity:
    """Name, revision and sampled weights of a base model; any part may be unknown (None)."""

    name: str | None = None
    revision: str | None = None
    samples: np.ndarray | None = attrs.field(default=None, eq=False)
    dtype: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "revision": self.revision}
        if self.samples is not None:
            raw = np.ascontiguousarray(self.samples, "<f4").tobytes()
            out["weight_samples"] = base64.b64encode(raw).decode("ascii")
            out["weight_dtype"] = self.dtype
        return out

    @classmethod
    def from_dict(cls, data: Any) -> BaseIdentity:
        if not isinstance(data, dict):
            return cls()
        samples = data.get("weight_samples")
        array = None
        if isinstance(samples, str):
            array = np.frombuffer(base64.b64decode(samples), "<f4").astype(np.float32)
        return cls(data.get("name"), data.get("revision"), array, data.get("weight_dtype"))


def sample_points(sites: Sequence[tuple[str, int, int]]) -> list[SamplePoint]:
    """Fixed positions to sample from ``(path, d_in, d_out)`` weight matrices: the same
    sites and positions for the same shapes, whatever the backend."""
    chosen = sorted(sites)
    if len(chosen) > MAX_SITES:
        keep = np.linspace(0, len(chosen) - 1, MAX_SITES).round().astype(int)
        chosen = [chosen[i] for i in sorted(set(keep.tolist()))]
    points = []
    for path, d_in, d_out in chosen:
        size = d_in * d_out
        flat = np.unique(np.linspace(0, size - 1, min(PER_SITE, size)).round().astype(np.int64))
        rows, cols = np.divmod(flat, d_out)
        points.append(SamplePoint(path, tuple(rows.tolist()), tuple(cols.tolist())))
    return points


def sample_weights(
    shapes: Mapping[str, tuple[int, int]], gather: Callable[[SamplePoint], Any]
) -> np.ndarray | None:
    """The float32 samples of weight matrices with canonical ``(d_in, d_out)`` ``shapes``;
    ``gather(point)`` reads ``weight[point.rows, point.cols]`` of ``point.path`` in the
    backend's own layout. None when there is no weight to sample."""
    points = sample_points([(path, d_in, d_out) for path, (d_in, d_out) in shapes.items()])
    if not points:
        return None
    return np.concatenate([np.asarray(gather(p), np.float32).reshape(-1) for p in points])


def mismatch(saved: BaseIdentity, current: BaseIdentity) -> str | None:
    """A sentence saying how ``current`` differs from ``saved``, or None when nothing known
    differs."""
    problems = []
    for field in ("name", "revision"):
        a, b = getattr(saved, field), getattr(current, field)
        if a and b and a != b:
            problems.append(f"its {field} was {a!r}, this model's is {b!r}")
    if saved.samples is not None and current.samples is not None:
        a, b = saved.samples, current.samples
        tol = max(_RELATIVE_TOLERANCE.get(str(d), 2**-7) for d in (saved.dtype, current.dtype))
        if a.shape != b.shape or not np.all(np.abs(a - b) <= tol * np.maximum(np.abs(a), 1e-4)):
            problems.append("the adapted modules' weights differ (sampled values do not match)")
    return "; ".join(problems) or None
