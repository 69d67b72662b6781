"""Figures for the demo, drawn with matplotlib's Agg canvas (imported lazily, no pyplot)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._files import atomic_write
from .report import method_label, trainable_percent


def _figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` attached to an Agg canvas."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from err
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Any, path: str | os.PathLike[str]) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return atomic_write(path, buffer.getvalue())


def plot_accuracy_vs_params(
    results: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike[str],
    methods_info: Mapping[str, float | Mapping[str, Any]],
    ylabel: str = "held-out average median accuracy (%)",
    references: Mapping[str, float] | None = None,
) -> Path:
    """Average accuracy against % trainable parameters (log x), one point per method, with
    ``references`` (e.g. ``{"chance": 0.33, "untuned base": 0.34}``) as dashed lines.

    ``results`` is ``report.aggregate_seeds`` output; error bars span the seeds' min to max.
    Methods without a positive % in ``methods_info`` cannot sit on a log axis and are left out.
    """
    points = []
    for method, r in results.items():
        pct = trainable_percent(methods_info.get(method))
        if pct is not None and pct > 0:
            points.append((method_label(method, methods_info.get(method)), pct, r["average"]))
    if not points:
        raise ValueError("no method has a positive trainable % in methods_info")
    from matplotlib import ticker

    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    for label, pct, avg in points:
        mean = 100 * avg["mean"]
        spread = [[mean - 100 * avg["min"]], [100 * avg["max"] - mean]]
        ax.errorbar([pct], [mean], yerr=spread, fmt="o", capsize=4, label=label)
        ax.annotate(label, (pct, mean), textcoords="offset points", xytext=(6, 4), fontsize=8)
    for i, (name, value) in enumerate((references or {}).items()):
        ax.axhline(100 * value, linestyle="--", linewidth=1, color=f"C{7 + i}", label=name)
        ax.annotate(
            name,
            (0.01, 100 * value),
            xycoords=("axes fraction", "data"),
            textcoords="offset points",
            xytext=(0, 3 - 12 * i),
            fontsize=8,
            color=f"C{7 + i}",
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.margins(x=0.2, y=0.1)
    ax.set_xlabel("% trainable parameters (log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    return _save_png(fig, path)


def _by_layer(mean_probs: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Accept ``{task: probs}`` or ``{layer: {task: probs}}``; return the layered form."""
    if all(isinstance(v, Mapping) for v in mean_probs.values()):
        return dict(mean_probs)
    return {"": mean_probs}


def plot_routing_heatmap(
    mean_probs: Mapping[str, Any], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Mean routing probability per expert (columns) per task (rows), one panel per layer.

    ``mean_probs`` is ``{task: array[experts]}`` or ``{layer: {task: array[experts]}}``;
    arrays with more axes (e.g. heads) are averaged over all but the last.
    """
    import numpy as np

    layers = _by_layer(mean_probs)
    if not layers or not all(layers.values()):
        raise ValueError("plot_routing_heatmap needs at least one task per layer")
    tasks = list(dict.fromkeys(t for per_task in layers.values() for t in per_task))
    grids = []
    for name, per_task in layers.items():
        rows = {t: np.asarray(p, dtype=float) for t, p in per_task.items()}
        rows = {t: p.reshape(-1, p.shape[-1]).mean(axis=0) for t, p in rows.items()}
        n_experts = {p.shape[0] for p in rows.values()}
        if len(n_experts) != 1:
            raise ValueError(f"layer {name!r}: tasks disagree on the number of experts")
        width = n_experts.pop()
        grids.append((name, np.stack([rows.get(t, np.full(width, np.nan)) for t in tasks])))
    vmax = max(float(np.nanmax(g)) for _, g in grids)
    fig = _figure(1.0 + 3.2 * len(grids), 1.2 + 0.3 * len(tasks))
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    for ax, (name, grid) in zip(axes, grids, strict=True):
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("expert")
        ax.set_xticks(range(grid.shape[1]))
        ax.set_yticks(range(len(tasks)), tasks if ax is axes[0] else [""] * len(tasks), fontsize=8)
    fig.colorbar(image, ax=list(axes), label="mean routing probability")
    if title:
        fig.suptitle(title)
    return _save_png(fig, path)
