"""Scoring and reporting, as in the paper's Table 1.

Accuracy per (task, template); per task the **median over templates**; overall the **mean
over tasks** ("average median score"). Accuracies are fractions in [0, 1]; tables print
percentages. Several seeds per method aggregate to mean, sample std, min and max.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ._files import atomic_write


class Prediction(NamedTuple):
    """Whether the model ranked the right choice first on one example."""

    task: str
    template: str
    correct: bool


def score_table(predictions: Iterable[Prediction | tuple[str, str, bool]]) -> dict[str, Any]:
    """Score one run.

    Returns ``{"tasks": {task: {"templates": {template: acc}, "median": m, "n": count}},
    "average": mean of the task medians}``. Tasks and templates keep first-seen order.
    """
    hits: dict[str, dict[str, list[bool]]] = {}
    for task, template, correct in predictions:
        hits.setdefault(task, {}).setdefault(template, []).append(bool(correct))
    if not hits:
        raise ValueError("score_table needs at least one prediction")
    tasks = {}
    for task, by_template in hits.items():
        accuracies = {t: sum(v) / len(v) for t, v in by_template.items()}
        tasks[task] = {
            "templates": accuracies,
            "median": statistics.median(accuracies.values()),
            "n": sum(len(v) for v in by_template.values()),
        }
    return {"tasks": tasks, "average": statistics.fmean(t["median"] for t in tasks.values())}


def _spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std (0 for a single value), min, max and the values themselves."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "values": list(values),
    }


def aggregate_seeds(list_of_results: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Aggregate runs over seeds.

    ``list_of_results`` holds one ``{method: score_table(...)}`` mapping per seed. Returns
    ``{method: {"n_seeds": k, "average": spread, "tasks": {task: spread}}}`` where a spread
    is ``{"mean", "std", "min", "max", "values"}``. A method missing from some seeds is
    aggregated over the seeds that have it.
    """
    per_method: dict[str, list[Mapping[str, Any]]] = {}
    for seed_results in list_of_results:
        for method, result in seed_results.items():
            per_method.setdefault(method, []).append(result)
    if not per_method:
        raise ValueError("aggregate_seeds needs at least one result")
    aggregated = {}
    for method, runs in per_method.items():
        task_names = dict.fromkeys(t for run in runs for t in run["tasks"])
        aggregated[method] = {
            "n_seeds": len(runs),
            "average": _spread([run["average"] for run in runs]),
            "tasks": {
                t: _spread([run["tasks"][t]["median"] for run in runs if t in run["tasks"]])
                for t in task_names
            },
        }
    return aggregated


def trainable_percent(info: float | Mapping[str, Any] | None) -> float | None:
    """The % of trainable parameters in a ``methods_info`` entry (a number or a mapping
    with ``"trainable_percent"``), or ``None`` when unknown."""
    if isinstance(info, Mapping):
        info = info.get("trainable_percent")
    return None if info is None else float(info)


def method_label(method: str, info: float | Mapping[str, Any] | None) -> str:
    """The display name of ``method``: its ``"label"`` in ``methods_info``, else its key."""
    return str(info.get("label", method)) if isinstance(info, Mapping) else method


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.2f}"


def format_table(
    results: Mapping[str, Mapping[str, Any]],
    methods_info: Mapping[str, float | Mapping[str, Any]] | None = None,
) -> str:
    """A markdown table like the paper's Table 1 from ``aggregate_seeds`` output.

    Columns: method, % trainable, one per held-out task (mean over seeds of the median over
    templates), and the average, with ``± sample std`` when a method has several seeds.
    ``methods_info[method]`` is the % of trainable parameters, or a mapping with
    ``"trainable_percent"`` and optionally ``"label"``.
    """
    methods_info = methods_info or {}
    tasks = list(dict.fromkeys(t for r in results.values() for t in r["tasks"]))
    lines = [
        "| " + " | ".join(["Method", "% params", *tasks, "Avg"]) + " |",
        "|" + "---|" * (len(tasks) + 3),
    ]
    for method, r in results.items():
        info = methods_info.get(method)
        pct = trainable_percent(info)
        avg = _pct(r["average"]["mean"])
        if r["n_seeds"] > 1:
            avg += f" ± {_pct(r['average']['std'])}"
        cells = [_pct(r["tasks"][t]["mean"]) if t in r["tasks"] else "–" for t in tasks]
        row = [method_label(method, info), "–" if pct is None else f"{pct:.3g}%", *cells, avg]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    results: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    methods_info: Mapping[str, float | Mapping[str, Any]] | None = None,
) -> tuple[Path, Path]:
    """Write ``results.json`` (``{"results", "methods_info"}``) and ``results.md``
    (``format_table``) into ``out_dir`` atomically; return both paths."""
    out_dir = Path(out_dir)
    payload = {"results": results, "methods_info": dict(methods_info or {})}
    json_path = atomic_write(out_dir / "results.json", json.dumps(payload, indent=2) + "\n")
    md_path = atomic_write(out_dir / "results.md", format_table(results, methods_info))
    return json_path, md_path
