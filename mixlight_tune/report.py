"""Scoring and reporting, as in the paper's Table 1.

Accuracy per (task, template); per task the **median over templates**; overall the **mean
over tasks** ("average median score"), or over a report's columns when it groups tasks into
columns (the paper's ANLI column holds three rounds). Accuracies are fractions in [0, 1];
tables print percentages. Several seeds per method aggregate to mean, sample std, min and max.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from .schema import Example


class Prediction(NamedTuple):
    """Whether the model ranked the right choice first on one example (or, for the chance
    row, the probability of that: ``1 / len(choices)``)."""

    task: str
    template: str
    correct: float


def score_table(
    predictions: Iterable[Prediction | tuple[str, str, float]],
    columns: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Score one run.

    Returns ``{"tasks": {task: {"templates": {template: acc}, "median": m, "n": count}},
    "average": mean of the task medians}``. Tasks and templates keep first-seen order. With
    ``columns`` (``{label: tasks}``) it adds ``"columns"`` (:func:`column_scores`) and the
    average is the mean over those columns.
    """
    hits: dict[str, dict[str, list[float]]] = {}
    for task, template, correct in predictions:
        hits.setdefault(task, {}).setdefault(template, []).append(float(correct))
    if not hits:
        raise ValueError("score_table needs at least one prediction")
    tasks: dict[str, dict[str, Any]] = {}
    medians: list[float] = []
    for task, by_template in hits.items():
        accuracies = {t: sum(v) / len(v) for t, v in by_template.items()}
        medians.append(statistics.median(accuracies.values()))
        tasks[task] = {
            "templates": accuracies,
            "median": medians[-1],
            "n": sum(len(v) for v in by_template.values()),
        }
    if columns is None:
        return {"tasks": tasks, "average": statistics.fmean(medians)}
    by_column = column_scores(tasks, columns)
    return {"tasks": tasks, "columns": by_column, "average": statistics.fmean(by_column.values())}


def column_scores(
    tasks: Mapping[str, Mapping[str, Any]], columns: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """``{label: score}``: a column's score is the mean of its scored tasks' medians (a
    column with none is left out); a task in no column is a column of its own, after them."""
    out = {}
    for label, names in columns.items():
        medians = [tasks[t]["median"] for t in names if t in tasks]
        if medians:
            out[label] = statistics.fmean(medians)
    grouped = {t for names in columns.values() for t in names}
    out |= {t: score["median"] for t, score in tasks.items() if t not in grouped}
    return out


def eval_scores(
    examples: Sequence[Example],
    correct: Sequence[float],
    columns: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """:func:`score_table` of scored ``examples`` with ``"sources"``: each data source's
    accuracy over its own examples (``{"source", "n", "accuracy"}``, in first-seen order)."""
    pairs = list(zip(examples, correct, strict=True))
    table = score_table(((e.task, e.template, c) for e, c in pairs), columns)
    hits: dict[str, list[float]] = {}
    for example, hit in pairs:
        hits.setdefault(example.source, []).append(float(hit))
    table["sources"] = [
        {"source": source, "n": len(v), "accuracy": statistics.fmean(v)}
        for source, v in hits.items()
    ]
    return table


def spread(values: Sequence[float]) -> dict[str, Any]:
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
            "average": spread([run["average"] for run in runs]),
            "tasks": {
                t: spread([run["tasks"][t]["median"] for run in runs if t in run["tasks"]])
                for t in task_names
            },
        }
    return aggregated


def chance_table(examples: Iterable[Example]) -> dict[str, Any]:
    """The expected score of guessing uniformly among each example's choices, per task and
    on average (aggregated exactly like a method's score)."""
    return score_table((e.task, e.template, 1 / len(e.choices or (0,))) for e in examples)


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
    return f"{100 * fraction:.1f}"


def _fixed(table: Mapping[str, Any]) -> dict[str, Any]:
    """A single score table (chance, untuned base) in ``aggregate_seeds``' shape."""
    return aggregate_seeds([{"_": table}])["_"]


def format_table(
    results: Mapping[str, Mapping[str, Any]],
    methods_info: Mapping[str, float | Mapping[str, Any]] | None = None,
    chance: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> str:
    """A markdown table like the paper's Table 1 from ``aggregate_seeds`` output.

    Rows: the chance level and the untuned base (when given), then one per method. Columns:
    method, % trainable, one per task (mean over seeds of the median over templates), and
    the average with ``± sample std [min–max]`` over seeds when a method has several.
    """
    methods_info = methods_info or {}
    rows: dict[str, Mapping[str, Any]] = {}
    labels: dict[str, tuple[str, str]] = {}
    if chance is not None:
        rows["chance"], labels["chance"] = _fixed(chance), ("Chance", "–")
    if base is not None:
        rows["base"], labels["base"] = _fixed(base), ("Base (untuned)", "0%")
    for method, r in results.items():
        pct = trainable_percent(methods_info.get(method))
        labels[method] = (
            method_label(method, methods_info.get(method)),
            "–" if pct is None else f"{pct:.3g}%",
        )
        rows[method] = r
    tasks = list(dict.fromkeys(t for r in rows.values() for t in r["tasks"]))
    lines = [
        "| " + " | ".join(["Method", "% params", *tasks, "Avg"]) + " |",
        "|" + "---|" * (len(tasks) + 3),
    ]
    for key, r in rows.items():
        avg = _pct(r["average"]["mean"])
        if r["n_seeds"] > 1:
            a = r["average"]
            avg += f" ± {_pct(a['std'])} [{_pct(a['min'])}–{_pct(a['max'])}]"
        cells = [_pct(r["tasks"][t]["mean"]) if t in r["tasks"] else "–" for t in tasks]
        lines.append("| " + " | ".join([*labels[key], *cells, avg]) + " |")
    return "\n".join(lines) + "\n"
