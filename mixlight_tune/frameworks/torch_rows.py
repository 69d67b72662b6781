"""Tokenised pairs as torch model inputs, and their summed token loss, for T5 and causal LMs.

A T5 pair is an encoder row and a decoder row. A causal pair is joined into one row (prompt,
then answer) whose labels are -100 on the prompt: only the answer's tokens are in the loss
and in a choice's score. Rows are right-padded; padded labels are -100.

:func:`pack` puts several causal pairs in one row instead: each keeps its own positions
(``position_ids`` restart at 0) and attends only within itself (HF builds that block
mask from the restarts when no ``attention_mask`` is given), so a packed micro-batch trains
exactly as its unpacked rows do, with less padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from mixlight_tune.text_codec import Pair

IGNORE = -100  # the label HF's losses and ours skip


def pad(rows: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists: ``(ids [len(rows), max_len], mask of real tokens)``."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)
    mask = torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]
    return ids, mask.long()


def collate(pairs: Sequence[Pair], pad_id: int, causal: bool = False) -> dict[str, torch.Tensor]:
    """``input_ids``/``attention_mask [rows, len]`` and ``labels`` (T5: ``[rows, target
    len]``; causal: ``[rows, len]``, aligned with ``input_ids``, HF's convention)."""
    if causal:
        input_ids, attention_mask = pad([[*p, *a] for p, a in pairs], pad_id)
        labels, _ = pad([[IGNORE] * len(p) + list(a) for p, a in pairs], IGNORE)
    else:
        input_ids, attention_mask = pad([p for p, _ in pairs], pad_id)
        labels, _ = pad([a for _, a in pairs], IGNORE)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pack(pairs: Sequence[Pair], pad_id: int, width: int) -> dict[str, torch.Tensor]:
    """Causal pairs first-fit into rows of at most ``width`` tokens (longest first; a pair
    longer than ``width`` gets a row of its own): ``input_ids``, ``position_ids`` and
    ``labels [rows, len]``. Padding is a segment of its own whose labels are -100."""
    rows: list[list[Pair]] = []
    room: list[int] = []
    for pair in sorted(pairs, key=lambda p: -(len(p[0]) + len(p[1]))):
        size = len(pair[0]) + len(pair[1])
        slot = next((i for i, r in enumerate(room) if r >= size), None)
        if slot is None:
            rows.append([])
            room.append(width)
            slot = len(rows) - 1
        rows[slot].append(pair)
        room[slot] -= size
    ids = [[t for p, a in row for t in (*p, *a)] for row in rows]
    labels = [[t for p, a in row for t in ([IGNORE] * len(p) + list(a))] for row in rows]
    positions = [[i for p, a in row for i in range(len(p) + len(a))] for row in rows]
    longest = max(len(r) for r in ids)
    gaps = [longest - len(r) for r in ids]
    return {
        "input_ids": pad(ids, pad_id)[0],
        "labels": pad(labels, IGNORE)[0],
        "position_ids": torch.tensor(
            [r + list(range(g)) for r, g in zip(positions, gaps, strict=True)]
        ),
    }


def token_logits(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    causal: bool,
    shift_right: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [rows, n, vocab], labels [rows, n])``: the logits that predict each label
    (a causal row's position ``t`` predicts token ``t + 1``). ``shift_right`` makes T5's
    decoder inputs from its labels (the unwrapped model's ``_shift_right``)."""
    labels = batch["labels"]
    if causal:
        names = ("input_ids", "attention_mask", "position_ids")
        out = model(**{k: batch[k] for k in names if k in batch}, use_cache=False)
        return out.logits[:, :-1], labels[:, 1:]
    if shift_right is None:
        raise TypeError("an encoder-decoder's logits need shift_right (its _shift_right)")
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=shift_right(labels),
    )
    return out.logits, labels


def summed_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The cross-entropy summed over every label that is not -100 (float32)."""
    return nn.functional.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
    )
