"""Which examples a run draws from a mixture: a plan fixed by the config alone.

A run trains on ``total = steps × batch_size`` draws. Draw ``k`` takes a source ``s`` chosen
by weight (``random.Random(f"mixlight-mixture:{data_seed}").choices`` over the cumulative
weights: one uniform number a draw, in order), then that source's next example: the
``o``-th draw of source ``s`` (``o`` counts its earlier draws) is example
``perm(s, e)(o mod n)`` of its ``n``, in epoch ``e = o // n``. So a source is read without
replacement, epoch after epoch, each epoch in a new order.

``perm(s, e)`` is a pseudo-random permutation of ``range(n)`` keyed by ``data_seed``, ``s``
and ``e``: a :data:`ROUNDS`-round Feistel network on the index's bits (the smallest even
number of bits that holds ``n - 1``), walked again while it lands at ``n`` or beyond. It is
computed index by index, vectorised with numpy, so no list of a source's ``n`` indices is
ever built, however large the source.

The :class:`Plan` is two arrays of ``total`` entries (12 bytes a draw); it depends on the
weights, the sources' sizes, ``total`` and ``data_seed`` only, so a resumed run draws the
same examples.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass

import numpy as np

ROUNDS = 6
CHUNK = 1 << 16  # source choices made per call of random.choices (the same stream)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class Plan:
    """Draw ``k`` is example ``rows[k]`` of source ``sources[k]``."""

    sources: np.ndarray  # int32
    rows: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.sources)

    def of(self, source: int) -> np.ndarray:
        """The boolean mask of the draws from ``source``."""
        return self.sources == source

    def counts(self, n_sources: int) -> list[int]:
        """The number of draws from each source."""
        return np.bincount(self.sources, minlength=n_sources).tolist()


def plan(weights: list[float], sizes: list[int], total: int, data_seed: int) -> Plan:
    """The draws of a mixture of sources of ``sizes`` examples (each at least one)
    sampled with probabilities ``weights``."""
    sources = choose_sources(weights, total, data_seed)
    rows = np.empty(total, np.int64)
    for s, size in enumerate(sizes):
        mask = sources == s
        ordinal = np.arange(int(mask.sum()), dtype=np.uint64)
        epochs, which = np.unique(ordinal // np.uint64(size), return_inverse=True)
        keys = _keys(data_seed, s, epochs)
        rows[mask] = permute(ordinal % np.uint64(size), size, keys, which)
    return Plan(sources, rows)


def choose_sources(weights: list[float], total: int, data_seed: int) -> np.ndarray:
    """The source of each of ``total`` draws."""
    out = np.zeros(total, np.int32)
    if len(weights) == 1:
        return out
    rng = random.Random(f"mixlight-mixture:{data_seed}")
    cumulative = list(itertools.accumulate(weights))
    population = range(len(weights))
    for start in range(0, total, CHUNK):
        count = min(CHUNK, total - start)
        out[start : start + count] = rng.choices(population, cum_weights=cumulative, k=count)
    return out


def permute(
    positions: np.ndarray, size: int, keys: np.ndarray, which: np.ndarray | None = None
) -> np.ndarray:
    """Each of ``positions`` (in ``range(size)``) through the permutation of ``range(size)``
    named by a row of ``keys`` (``(rows, ROUNDS)`` uint64): row ``which[i]`` for position
    ``i`` (default: row 0 for all)."""
    half = max(1, ((size - 1).bit_length() + 1) // 2)
    which = np.zeros(len(positions), np.intp) if which is None else which
    out = _feistel(positions.astype(np.uint64), keys, which, half)
    outside = np.flatnonzero(out >= np.uint64(size))
    while len(outside):  # cycle-walking: a bijection of range(2 ** (2 * half)) kept in range
        out[outside] = _feistel(out[outside], keys, which[outside], half)
        outside = outside[out[outside] >= np.uint64(size)]
    return out.astype(np.int64)


def _feistel(x: np.ndarray, keys: np.ndarray, which: np.ndarray, half: int) -> np.ndarray:
    shift, mask = np.uint64(half), np.uint64((1 << half) - 1)
    left, right = x >> shift, x & mask
    for r in range(ROUNDS):
        left, right = right, left ^ (_mix(right ^ keys[which, r]) & mask)
    return (left << shift) | right


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective scramble of 64-bit integers."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _keys(data_seed: int, source: int, epochs: np.ndarray) -> np.ndarray:
    """The round keys of source ``source``'s permutation in each of ``epochs``:
    ``(len(epochs), ROUNDS)`` uint64."""
    digest = hashlib.sha512(f"mixlight-mixture-perm:{data_seed}:{source}".encode()).digest()
    bases = np.frombuffer(digest, "<u8")[:ROUNDS].astype(np.uint64)
    return _mix(epochs[:, None] ^ bases[None, :])
