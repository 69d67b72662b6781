"""``[[mixture]]``: the training data as a weighted mixture of sources (T0's recipe).

Each entry is a data source (a path or Hub id, or a table of a source's keys:
:mod:`mixlight_tune.sources`) with at most one of

* ``rate``: the source's sampling weight, a positive finite number;
* ``cap``: examples-proportional mixing capped at ``cap``: the weight is
  ``min(number of examples, cap)``.

An entry with neither is examples-proportional under the top-level ``mixture_cap`` (without
one: its number of examples). T0 mixes P3 this way with ``mixture_cap = 500000``. Weights are
normalised over the whole mixture, so beside proportional entries a ``rate`` counts as that
many examples. How a run draws from the weights: :mod:`mixlight_tune.mixture_draws`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .sources import DataSource, SourceError, parse_source

SOURCE_KEYS = tuple(f.name for f in fields(DataSource))
WEIGHT_KEYS = ("rate", "cap")


@dataclass(frozen=True)
class MixtureEntry:
    """One source of a mixture and its weighting (``rate``, or ``cap``, or neither)."""

    source: DataSource
    rate: float | None = None
    cap: int | None = None

    def resolved(self) -> dict[str, Any]:
        """The entry as a config table (the source's keys, then ``rate``/``cap`` if set)."""
        value = self.source.resolved()
        table = {"path": value} if isinstance(value, str) else dict(value)
        weighting = {"rate": self.rate, "cap": self.cap}
        return table | {k: v for k, v in weighting.items() if v is not None}

    def weight(self, examples: int, mixture_cap: int | None) -> float:
        """The unnormalised sampling weight of a source of ``examples`` examples."""
        if self.rate is not None:
            return self.rate
        cap = self.cap if self.cap is not None else mixture_cap
        return float(examples if cap is None else min(examples, cap))


def parse_mixture(
    value: Any, mixture_cap: Any, base_dir: Path
) -> tuple[tuple[MixtureEntry, ...] | None, int | None]:
    """``(mixture, mixture_cap)`` of a config (``(None, None)``: absent), or
    :class:`~mixlight_tune.sources.SourceError` naming the entry and the fix."""
    if value is None:
        if mixture_cap is not None:
            raise SourceError(
                "mixture_cap caps the examples-proportional weights of [[mixture]] entries, and "
                "there is no mixture: remove mixture_cap"
            )
        return None, None
    if not isinstance(value, list):
        raise SourceError(
            f"mixture must be a list of sources ([[mixture]] tables with path and rate or "
            f"cap), got {value!r:.80}"
        )
    if not value:
        raise SourceError(
            "mixture is empty: give at least one [[mixture]] entry (path = ..., with rate or "
            "cap) or remove mixture"
        )
    cap = None if mixture_cap is None else _cap(mixture_cap, "mixture_cap")
    return tuple(_entry(v, f"mixture[{i}]", base_dir) for i, v in enumerate(value)), cap


def resolved(mixture: tuple[MixtureEntry, ...] | None) -> list[dict[str, Any]] | None:
    """The config value of ``mixture``."""
    return None if mixture is None else [e.resolved() for e in mixture]


def weights(
    mixture: tuple[MixtureEntry, ...], sizes: list[int], mixture_cap: int | None
) -> list[float]:
    """Each entry's sampling probability, given each source's number of examples."""
    raw = [e.weight(n, mixture_cap) for e, n in zip(mixture, sizes, strict=True)]
    total = math.fsum(raw)
    return [w / total for w in raw]


def _entry(value: Any, key: str, base_dir: Path) -> MixtureEntry:
    if isinstance(value, str):
        return MixtureEntry(parse_source(value, key, base_dir))
    if not isinstance(value, dict):
        raise SourceError(
            f"{key} must be a source table (path = ..., with rate or cap) or a path, got "
            f"{value!r:.80}"
        )
    unknown = sorted(set(value) - set(SOURCE_KEYS) - set(WEIGHT_KEYS))
    if unknown:
        raise SourceError(
            f"{key}: unknown key(s) {', '.join(unknown)}; a mixture entry has path (required), "
            f"{', '.join(SOURCE_KEYS[1:])} and rate or cap"
        )
    source = parse_source({k: v for k, v in value.items() if k in SOURCE_KEYS}, key, base_dir)
    if "rate" in value and "cap" in value:
        raise SourceError(
            f"{key} ({source}) has both rate and cap: rate is the source's sampling weight, cap "
            "makes it examples-proportional up to cap examples; keep one"
        )
    rate = None if "rate" not in value else _rate(value["rate"], f"{key}.rate ({source})")
    cap = None if "cap" not in value else _cap(value["cap"], f"{key}.cap ({source})")
    return MixtureEntry(source, rate, cap)


def _rate(value: Any, key: str) -> float:
    number = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float's range
            number = math.inf
    if not (math.isfinite(number) and number > 0):
        raise SourceError(
            f"{key} must be a positive finite number (the source's relative sampling weight), "
            f"got {value!r:.40}; to leave the source out, remove its entry"
        )
    return number


def _cap(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SourceError(
            f"{key} must be an integer >= 1 (the most examples a source's weight counts, e.g. "
            f"T0's 500000), got {value!r:.40}"
        )
    return value
