"""A ``[[mixture]]`` run's training rows: drawn by plan, read by index, tokenised per source.

:func:`open_mixture` opens every source by index (:mod:`mixlight_tune.row_tables`: nothing
read but the first row of each, to refuse a wrong layout or format before the model loads),
weighs them (:mod:`mixlight_tune.mixture`) and plans ``steps × batch_size`` draws
(:mod:`mixlight_tune.mixture_draws`). The :class:`Mixture` is the run's
``Sequence[Example]``: item ``k`` is read from its source when asked.

:meth:`Mixture.pairs` tokenises, source by source, the examples the plan draws that the
source's token cache lacks (:func:`mixlight_tune.token_cache.source_tokens`) and returns
:class:`DrawnPairs`, the ``Sequence[Pair]`` the training loop indexes: draw ``k``'s ids,
read from the memory-mapped cache when asked. Its iterator yields :class:`DrawnPair` views
(each resolved when it is read), so a backend's ``list(pairs)`` holds one small object a
draw, not its token ids.

The loop (:func:`mixlight_tune.sampling.batches`) shuffles ``range(steps × batch_size)`` by
``seed``: one epoch over the draws, so each draw is trained on once, in an order ``seed``
fixes; which examples are drawn, ``data_seed`` fixes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from .mixture import MixtureEntry, weights
from .mixture_draws import Plan, plan
from .row_tables import ExampleTable
from .schema import Example
from .sources import SourceError
from .text_codec import Pair, TextCodec
from .token_cache import SourceTokens, cache_key, source_path, source_tokens


def open_mixture(
    entries: tuple[MixtureEntry, ...], mixture_cap: int | None, total: int, data_seed: int
) -> Mixture:
    """The mixture's sources opened and its ``total`` draws planned; :class:`SourceError`
    naming the entry when a source cannot be read or holds no examples."""
    tables = []
    for i, entry in enumerate(entries):
        key = f"mixture[{i}] = {entry.source}"
        try:
            table = entry.source.indexed()  # one row read: its layout and format checked
        except (ValueError, OSError, ImportError) as err:
            raise SourceError(f"mixture[{i}]: {err}") from None
        if not len(table):
            raise SourceError(
                f"{key}: no examples; point it at data with rows (a non-empty .jsonl, folder "
                "or split) or remove the entry"
            )
        tables.append(table)
    return Mixture(
        entries, tables, weights(entries, [len(t) for t in tables], mixture_cap), total, data_seed
    )


class Mixture(Sequence[Example]):
    """The run's training examples: draw ``k`` is read from its source when indexed."""

    def __init__(
        self,
        entries: tuple[MixtureEntry, ...],
        tables: list[ExampleTable],
        probabilities: list[float],
        total: int,
        data_seed: int,
    ) -> None:
        self.entries, self.tables, self.probabilities = entries, tables, probabilities
        self.plan: Plan = plan(probabilities, [len(t) for t in tables], total, data_seed)

    def __len__(self) -> int:
        return len(self.plan)

    @overload
    def __getitem__(self, k: int) -> Example: ...

    @overload
    def __getitem__(self, k: slice) -> list[Example]: ...

    def __getitem__(self, k: int | slice) -> Example | list[Example]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        return self.tables[int(self.plan.sources[k])][int(self.plan.rows[k])]

    def record(self) -> list[dict[str, Any]]:
        """``metrics.json``'s ``mixture``: each source, its examples, probability and
        number of draws."""
        rows = zip(
            self.entries,
            self.tables,
            self.probabilities,
            self.plan.counts(len(self.entries)),
            strict=True,
        )
        return [
            {"source": str(e.source), "examples": len(t), "probability": p, "draws": c}
            for e, t, p, c in rows
        ]

    def describe(self) -> str:
        """One line: the number of draws and each source's share of them."""
        shares = ", ".join(
            f"{r['source']} {r['draws']} ({100 * r['probability']:.1f}%)" for r in self.record()
        )
        return f"mixture: {len(self)} draws from {len(self.entries)} sources: {shares}"

    def pairs(
        self,
        codec: TextCodec,
        model_dir: Path,
        limits: tuple[int, int],
        cache: Path,
        writer: bool,
    ) -> DrawnPairs:
        """The draws' token ids, each source's cached under its own key in ``cache``."""
        slots = np.zeros(len(self), np.int64)
        tokens = []
        for i, (entry, table) in enumerate(zip(self.entries, self.tables, strict=True)):
            source = entry.source
            identity = {"hub": source.hub_id, "split": source.split, "name": source.name}
            key = cache_key(identity | {"sha256": source.digest()}, model_dir, limits)
            mask = self.plan.of(i)
            rows = self.plan.rows[mask]

            def tokenize(todo: np.ndarray, table: ExampleTable = table) -> Iterator[Pair]:
                for example in table.examples(todo.tolist()):
                    yield codec.pair(example.inputs, example.targets, *limits)

            try:
                found = source_tokens(source_path(cache, key), key, rows, tokenize, writer)
            except (ValueError, OSError) as err:
                raise SourceError(f"mixture[{i}]: {err}") from None
            slots[mask] = found.slots(rows)
            tokens.append(found)
        return DrawnPairs(self.plan.sources, slots, tokens)


class DrawnPairs(Sequence[Pair]):
    """Draw ``k``'s ``(input ids, target ids)``, read from its source's cache when asked."""

    def __init__(self, sources: np.ndarray, slots: np.ndarray, tokens: list[SourceTokens]):
        self._sources, self._slots, self._tokens = sources, slots, tokens

    def __len__(self) -> int:
        return len(self._sources)

    @overload
    def __getitem__(self, k: int) -> Pair: ...

    @overload
    def __getitem__(self, k: slice) -> list[Pair]: ...

    def __getitem__(self, k: int | slice) -> Pair | list[Pair]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        return self._tokens[int(self._sources[k])].pair(int(self._slots[k]))

    def __iter__(self) -> Iterator[Pair]:
        for k in range(len(self)):
            yield DrawnPair(self, k)  # type: ignore[misc]  # a Pair to every reader


class DrawnPair(Sequence[list[int]]):
    """A view of draw ``k``'s pair: read (from the memory-mapped cache) each time it is
    indexed or unpacked, held nowhere."""

    __slots__ = ("_pairs", "_k")

    def __init__(self, pairs: DrawnPairs, k: int) -> None:
        self._pairs, self._k = pairs, k

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: Any) -> Any:
        return self._pairs[self._k][i]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._pairs[self._k])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (tuple, DrawnPair)):
            return tuple(self) == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"DrawnPair({self._k}: {tuple(self)!r})"
