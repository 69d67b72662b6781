"""The paper's claims, checked on table B at the end of every run, with a verdict that can fail.

Each claim compares two methods on the same items: the margin is the first method's score
minus the second's (the table's score: the mean over tasks of the median over templates,
averaged over seeds), in points. Its 95% interval comes from a paired bootstrap
(:func:`margin_interval`): each replicate redraws the items of every (task, template) cell,
the same draw for both methods, and, with several seeds, redraws the seeds. With one seed
the interval covers the items only: what a different draw of test items could change, not
what a different training seed could (the run says so).

Verdicts (``TOLERANCE`` is the margin within which two methods count as level):

- ``beats``: holds when the whole interval is above 0; does not hold otherwise (the
  first method is behind, or the run cannot tell them apart).
- ``matches`` (the first at least level with the second): holds when the interval's lower
  end is above ``-TOLERANCE``; does not hold when the first may be behind by more.
- ``close``: holds when the whole interval lies within ``±TOLERANCE``; does not hold when
  the gap may be larger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CLAIMS: tuple[tuple[str, str, str, str], ...] = (
    ("mov", "ia3", "beats", "MoV-10 beats (IA)³"),
    ("molora", "lora", "matches", "MoLoRA-10 at least matches LoRA"),
    ("mov", "full", "close", "MoV-10 is close to full fine-tuning"),
)
TOLERANCE = 2.0  # points
REPLICATES = 2000
LEVEL = 0.95

Cell = tuple[str, str]  # (task, template)


def table_scores(hits: np.ndarray, cells: Sequence[Cell]) -> np.ndarray:
    """The table's score of each row of ``hits [..., items]`` (1 = correct): per cell the
    accuracy, per task the median over its templates, then the mean over tasks."""
    tasks: dict[str, dict[str, list[int]]] = {}
    for i, (task, template) in enumerate(cells):
        tasks.setdefault(task, {}).setdefault(template, []).append(i)
    medians = []
    for templates in tasks.values():
        accuracies = np.stack([hits[..., idx].mean(-1) for idx in templates.values()], -1)
        medians.append(np.median(accuracies, -1))
    return np.mean(np.stack(medians, -1), -1)


def margin_interval(
    first: np.ndarray, second: np.ndarray, cells: Sequence[Cell], seed: int = 0
) -> tuple[float, float]:
    """The 95% paired-bootstrap interval of ``score(first) - score(second)`` in points.
    ``first``/``second``: ``[seeds, items]`` hits of the same items, seed ``s`` of one
    paired with seed ``s`` of the other."""
    rng = np.random.default_rng(seed)
    by_cell: dict[Cell, list[int]] = {}
    for i, cell in enumerate(cells):
        by_cell.setdefault(cell, []).append(i)
    # one draw of item indices per replicate, cell by cell (the cells keep their sizes)
    draw = np.concatenate(
        [rng.choice(idx, size=(REPLICATES, len(idx))) for idx in by_cell.values()], 1
    )
    drawn_cells = [cell for cell, idx in by_cell.items() for _ in idx]
    seeds = first.shape[0]
    picks = rng.integers(0, seeds, size=(REPLICATES, seeds))[:, :, None]  # [R, seeds, 1]
    rows = draw[:, None, :]  # [R, 1, items]
    a = table_scores(first[picks, rows], drawn_cells).mean(-1)  # [R]
    b = table_scores(second[picks, rows], drawn_cells).mean(-1)
    margins = 100 * (a - b)
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(margins, [tail, 1 - tail])
    return float(low), float(high)


def verdict(kind: str, low: float, high: float) -> bool:
    """Whether a claim of ``kind`` holds given its margin's interval (module docstring)."""
    if kind == "beats":
        return low > 0
    if kind == "matches":
        return low > -TOLERANCE
    return -TOLERANCE < low and high < TOLERANCE


def why_not(kind: str, low: float, high: float) -> str:
    """Why a claim that does not hold failed: the opposite shown, or too little evidence."""
    refuted = {
        "beats": high < 0,
        "matches": high < -TOLERANCE,
        "close": high < -TOLERANCE or low > TOLERANCE,
    }[kind]
    if refuted:
        return "the opposite is shown"
    return "not shown: the interval is too wide to decide (more items or seeds would narrow it)"


def check_claims(
    hits: Mapping[str, Sequence[Sequence[int]]], cells: Sequence[Cell]
) -> list[dict[str, Any]]:
    """One record per claim whose two methods both ran: scores, margin (first minus second,
    in accuracy points), its interval, and the verdict. ``hits[method]``: per seed, the
    method's 0/1 correctness on table B's items (in ``cells`` order)."""
    out = []
    for first, second, kind, claim in CLAIMS:
        if first not in hits or second not in hits:
            continue
        seeds = min(len(hits[first]), len(hits[second]))
        a = np.asarray(hits[first][:seeds], dtype=float)
        b = np.asarray(hits[second][:seeds], dtype=float)
        score_a, score_b = 100 * table_scores(a, cells).mean(), 100 * table_scores(b, cells).mean()
        low, high = margin_interval(a, b, cells)
        out.append(
            {
                "claim": claim,
                "kind": kind,
                "first": first,
                "second": second,
                "first_mean": float(score_a),
                "second_mean": float(score_b),
                "margin": float(score_a - score_b),
                "interval": [round(low, 2), round(high, 2)],
                "seeds": seeds,
                "items": len(cells),
                "holds": verdict(kind, low, high),
                "why_not": None if verdict(kind, low, high) else why_not(kind, low, high),
            }
        )
    return out


def format_claims(claims: list[dict[str, Any]], rule: bool = True) -> str:
    """The claim check as markdown lines, each ending in its verdict (then, with ``rule``,
    the rule a verdict follows)."""
    if not claims:
        return "(no claim's two methods both ran)\n"
    lines = []
    for c in claims:
        low, high = c["interval"]
        over = "items and seeds" if c["seeds"] > 1 else "items only (one seed: no seed variation)"
        holds = "**holds**" if c["holds"] else f"**does not hold** ({c['why_not']})"
        lines.append(
            f"- {c['claim']}: {c['first_mean']:.1f} vs {c['second_mean']:.1f}, margin "
            f"{c['margin']:+.1f} points, 95% interval [{low:+.1f}, {high:+.1f}] over {over}: "
            f"{holds}"
        )
    if not rule:
        return "\n".join(lines) + "\n"
    text = (
        f"\nA claim that one method beats another holds when the whole interval is above 0; "
        f"'at least matches' when its lower end is above -{TOLERANCE:g}; 'close' when it lies "
        f"within ±{TOLERANCE:g} points (paired bootstrap, {REPLICATES} replicates)."
    )
    return "\n".join(lines) + "\n" + text + "\n"
