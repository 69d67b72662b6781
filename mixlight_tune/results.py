"""The paper's results table for ``mixlight tune`` runs.

One row per run (its method and trainable share), one column per evaluated dataset (the
median accuracy over that dataset's templates; a suite's grouped columns, such as ANLI's
three rounds, :mod:`mixlight_tune.suites`) and the average over the columns, as in the
paper's Table 1. A run with an evaluation writes ``results.md`` and ``results.json`` to its
``output_dir``; ``mixlight tune report RUN_DIR... [--out FILE]`` joins several runs' tables
(read from each run's ``metrics.json``) into one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._files import atomic_write
from .report import aggregate_seeds, format_table

RESULTS_MD = "results.md"
RESULTS_JSON = "results.json"
METRICS = "metrics.json"
NOTE = (
    "Accuracy (%) by rank classification: each column is the median over its dataset's "
    "templates (a column of several datasets, such as ANLI R1-R3, the mean of their medians); "
    "Avg is the mean over the columns."
)


def run_row(metrics: Mapping[str, Any], run: str) -> dict[str, Any]:
    """A run's row: ``{"run", "method", "backend", "trainable_percent", "columns",
    "average", "scores"}`` from its ``metrics.json`` (``scores``: its whole evaluation)."""
    scores = metrics.get("eval")
    if not scores:
        raise ValueError(f"{run}: its {METRICS} holds no evaluation (no eval_data or eval_suite)")
    columns = scores.get("columns") or {t: s["median"] for t, s in scores["tasks"].items()}
    config = metrics.get("config") or {}
    adapter = config.get("adapter") or {}
    method = "Full FT" if adapter == "full" else (adapter.get("config") or {}).get("method", "?")
    return {
        "run": run,
        "method": method,
        "backend": config.get("backend"),
        "trainable_percent": metrics.get("trainable_percent"),
        "columns": dict(columns),
        "average": scores["average"],
        "scores": scores,
    }


def table(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``results.json``: the columns in first-seen order and the rows."""
    columns = list(dict.fromkeys(c for row in rows for c in row["columns"]))
    return {"columns": columns, "note": NOTE, "rows": list(rows)}


def markdown(rows: Sequence[Mapping[str, Any]], title: str = "mixlight tune results") -> str:
    """``results.md``: one table row per run (:func:`~mixlight_tune.report.format_table`)."""
    results, info = {}, {}
    for number, row in enumerate(rows):
        key = str(number)
        one = {"tasks": {c: {"median": v} for c, v in row["columns"].items()}}
        results[key] = aggregate_seeds([{key: one | {"average": row["average"]}}])[key]
        info[key] = {
            "label": f"{row['method']} ({row['run']})",
            "trainable_percent": row["trainable_percent"],
        }
    return f"# {title}\n\n{format_table(results, info)}\n{NOTE}\n"


def write(directory: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """``results.md`` and ``results.json`` in ``directory``."""
    atomic_write(directory / RESULTS_JSON, json.dumps(table(rows), indent=2) + "\n")
    atomic_write(directory / RESULTS_MD, markdown(rows))


def read_run(directory: Path) -> dict[str, Any]:
    """The row of the run in ``directory`` (``ValueError`` when it has no evaluation)."""
    path = directory / METRICS
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{directory}: no {METRICS} (not a finished mixlight tune run)") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: not a mixlight tune metrics object")
    return run_row(metrics, str(directory))


def main(argv: Sequence[str] | None = None) -> int:
    """``mixlight tune report RUN_DIR... [--out FILE]``; 0, or 2 on a bad run folder."""
    parser = argparse.ArgumentParser(
        prog="mixlight tune report",
        description="join mixlight tune runs' evaluations into one table (the paper's layout)",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="output_dir folders of finished runs")
    parser.add_argument(
        "--out", type=Path, help="write the table to FILE (.json: JSON, else markdown)"
    )
    args = parser.parse_args(argv)
    try:
        rows = [read_run(run) for run in args.runs]
        if args.out is None:
            print(markdown(rows), end="")
        elif args.out.suffix == ".json":
            atomic_write(args.out, json.dumps(table(rows), indent=2) + "\n")
        else:
            atomic_write(args.out, markdown(rows))
    except (ValueError, OSError) as err:
        print(f"mixlight tune report: error: {err}", file=sys.stderr)
        return 2
    return 0
