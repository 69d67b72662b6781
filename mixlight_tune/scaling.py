"""The scale trend: each method's gap to full fine-tuning against the base's size.

The paper's central figure (MoV closes the gap to full fine-tuning as T5 grows from 770M to
11B) in miniature: ``mixlight demo`` run with the same protocol and seeds at each
``--base-size``, read back from each run's ``results.json``. A method's gap is paired by
seed (full FT and the method saw the same data order), so the spread is of the differences.
``scripts/scaling.py`` runs the sizes and writes ``docs/demo/scaling``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from .report import method_label, spread, trainable_percent


@attrs.frozen
class SizePoint:
    """One base size's run: its name, its base's parameter count and its ``results.json``."""

    name: str
    parameters: int
    results: Mapping[str, Any]


def count_parameters(base_dir: Path) -> int:
    """The number of weights in a checkpoint's ``model.safetensors`` (read from its header)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(base_dir / "model.safetensors"), framework="numpy") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            total += math.prod(int(d) for d in f.get_slice(name).get_shape())
    return total


def _table_at(point: SizePoint, table: str) -> dict[str, Any]:
    """One table of one size: chance, the untuned base, each method's accuracy and its
    seed-paired gap to full fine-tuning (fractions; ``values`` per seed)."""
    scored = point.results["tables"][table]
    methods = scored["methods"]
    full = methods["full"]["average"]["values"] if "full" in methods else None
    rows: dict[str, Any] = {}
    for method, result in methods.items():
        values = result["average"]["values"]
        row = {"accuracy": spread(values)}
        if full is not None and method != "full":
            if len(full) != len(values):
                raise ValueError(
                    f"{point.name}, table {table}: full FT has {len(full)} seeds and {method} "
                    f"{len(values)}; the gap is paired by seed, so run both on the same seeds"
                )
            row["gap_to_full"] = spread([f - v for f, v in zip(full, values, strict=True)])
        rows[method] = row
    return {
        "size": point.name,
        "parameters": point.parameters,
        "chance": scored["chance"]["average"],
        "base": scored["base"]["average"] if scored.get("base") else None,
        "methods": rows,
    }


def scaling_summary(points: Sequence[SizePoint]) -> dict[str, Any]:
    """``{table: [per size, smallest first]}`` for every table all sizes scored."""
    if not points:
        raise ValueError("scaling_summary needs at least one size")
    ordered = sorted(points, key=lambda p: p.parameters)
    tables = set.intersection(*(set(p.results["tables"]) for p in ordered))
    labels = {m: method_label(m, i) for p in ordered for m, i in p.results["methods_info"].items()}
    shares = {
        m: [trainable_percent(p.results["methods_info"].get(m)) for p in ordered] for m in labels
    }
    return {
        "sizes": [{"name": p.name, "parameters": p.parameters} for p in ordered],
        "trainable_percent": shares,
        "labels": labels,
        "tables": {t: [_table_at(p, t) for p in ordered] for t in sorted(tables)},
    }


def _cell(spread: Mapping[str, Any], signed: bool = False) -> str:
    mean, std = 100 * spread["mean"], 100 * spread["std"]
    return f"{mean:+.1f} ± {std:.1f}" if signed else f"{mean:.1f} ± {std:.1f}"


def format_scaling(summary: Mapping[str, Any], titles: Mapping[str, str]) -> str:
    """Markdown: per table, accuracy and gap to full FT (points, mean ± sd over seeds) per
    method and size, with chance and the untuned base."""
    sizes = summary["sizes"]
    head = " | ".join(f"{s['name']} ({s['parameters'] / 1e6:.2f}M)" for s in sizes)
    out = ["## Trainable parameters (% of the base)\n"]
    out.append(f"| Method | {head} |\n|---|" + "---|" * len(sizes))
    for method, shares in summary["trainable_percent"].items():
        cells = [f"{v:.3g}%" if v is not None else "–" for v in shares]
        out.append(f"| {summary['labels'][method]} | " + " | ".join(cells) + " |")
    out.append("")
    for table, per_size in summary["tables"].items():
        out.append(f"## {titles.get(table, table)}\n")
        out.append("Accuracy (%), and in brackets the gap to full FT (points, paired by seed).\n")
        out.append(f"| Method | {head} |\n|---|" + "---|" * len(sizes))
        out.append("| Chance | " + " | ".join(f"{100 * s['chance']:.1f}" for s in per_size) + " |")
        bases = [f"{100 * s['base']:.1f}" if s["base"] is not None else "–" for s in per_size]
        out.append("| Base (untuned) | " + " | ".join(bases) + " |")
        for method in per_size[0]["methods"]:
            cells = []
            for s in per_size:
                row = s["methods"].get(method)
                if row is None:
                    cells.append("–")
                    continue
                gap = f" ({_cell(row['gap_to_full'], signed=True)})" if "gap_to_full" in row else ""
                cells.append(_cell(row["accuracy"]) + gap)
            label = summary["labels"].get(method, method)
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plot_gap_vs_size(summary: Mapping[str, Any], path: Path, tables: Sequence[str]) -> Path:
    """One panel per table: each method's gap to full FT (points) against the base's
    parameters (log x); error bars span the seeds' paired gaps, min to max."""
    from .plots import _figure, _save_png

    fig = _figure(5.0 * len(tables), 4.0)
    for i, table in enumerate(tables):
        ax = fig.add_subplot(1, len(tables), i + 1)
        per_size = summary["tables"][table]
        x = [s["parameters"] / 1e6 for s in per_size]
        for method in per_size[0]["methods"]:
            gaps = [s["methods"][method].get("gap_to_full") for s in per_size]
            if any(g is None for g in gaps):
                continue
            mean = [100 * g["mean"] for g in gaps]
            low = [m - 100 * g["min"] for m, g in zip(mean, gaps, strict=True)]
            high = [100 * g["max"] - m for m, g in zip(mean, gaps, strict=True)]
            label = summary["labels"].get(method, method)
            ax.errorbar(x, mean, yerr=[low, high], marker="o", capsize=3, label=label)
        ax.axhline(0, color="black", linewidth=1, linestyle="--")
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{v:.2f}M" for v in x])
        ax.minorticks_off()
        ax.set_xlabel("base parameters (log scale)")
        ax.set_ylabel("full FT minus method (points)")
        ax.set_title(f"table {table}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return _save_png(fig, path)
