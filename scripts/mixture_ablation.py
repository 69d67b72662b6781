"""Which change to the training mixture moves which table: the demo under each mixture.

Runs ``mixlight demo --mixture NAME --seeds 3 --threads 1`` with our two held-out prompt sets
(tables D and E) for each mixture whose run folder holds no ``results.json`` yet, then writes
``ablation.md`` and ``ablation.json`` to ``--out`` and copies each run's ``results.md``,
``results.json`` and ``config.json`` beside them::

    python scripts/mixture_ablation.py --runs runs/mixtures --out docs/demo/mixtures

Table B is averaged over the ten pick-one families only, which every mixture trains, so the
columns compare like with like. D and E are also split by answer format: families whose
rows all share one pair of label words (yes/no, right/wrong, ...) and families whose
choices are content words of the world (animals, homes, names, ...).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from scaling import HELD_OUT, run_demo

from mixlight_tune._files import atomic_write
from mixlight_tune.data_files import load_examples
from mixlight_tune.miniature.suite import MIXTURES
from mixlight_tune.miniature.train_tasks import TRAIN_TASKS

PICK_ONE = [t.name for t in TRAIN_TASKS]


def label_families(path: Path) -> set[str]:
    """The families of a prompt set whose rows all offer the same label words."""
    choices: dict[str, set[tuple[str, ...]]] = {}
    for e in load_examples(path):
        choices.setdefault(e.task, set()).add(tuple(sorted(e.choices or ())))
    return {task for task, seen in choices.items() if len(seen) == 1}


def _mean_sd(values: Sequence[float]) -> dict[str, float]:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": 100 * statistics.fmean(values), "sd": 100 * sd, "n": len(values)}


def column(table: dict[str, Any], tasks: Iterable[str]) -> dict[str, Any]:
    """Chance, base and each method's per-seed average over ``tasks`` of one results table."""
    tasks = [t for t in tasks if t in table["chance"]["tasks"]]

    def over(per_task: dict[str, Any], key: str) -> float:
        return statistics.fmean(per_task[t][key] for t in tasks)

    methods = {}
    for method, scores in table["methods"].items():
        seeds = len(scores["tasks"][tasks[0]]["values"])
        per_seed = [
            statistics.fmean(scores["tasks"][t]["values"][s] for t in tasks) for s in range(seeds)
        ]
        methods[method] = _mean_sd(per_seed)
    return {
        "tasks": tasks,
        "chance": 100 * over(table["chance"]["tasks"], "median"),
        "base": 100 * over(table["base"]["tasks"], "median"),
        "methods": methods,
    }


def summarise(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every column of the ablation, per mixture."""
    labels = {k: label_families(p) for k, p in HELD_OUT.items()}
    columns: dict[str, dict[str, Any]] = {}
    for mixture, res in results.items():
        tables = res["tables"]
        cols = {
            "B: the ten pick-one families": column(tables["B"], PICK_ONE),
            "C: held-out tasks": column(tables["C"], tables["C"]["chance"]["tasks"]),
        }
        for name in HELD_OUT:
            tasks = list(tables[name]["chance"]["tasks"])
            cols[f"{name}: all"] = column(tables[name], tasks)
            cols[f"{name}: label-word families"] = column(
                tables[name], [t for t in tasks if t in labels[name]]
            )
            cols[f"{name}: content-word families"] = column(
                tables[name], [t for t in tasks if t not in labels[name]]
            )
        for title, col in cols.items():
            columns.setdefault(title, {})[mixture] = col
    claims = {
        mixture: {"B": res["claims"], **res.get("eval_data_claims", {})}
        for mixture, res in results.items()
    }
    labels_of = {m: i["label"] for res in results.values() for m, i in res["methods_info"].items()}
    return {"columns": columns, "claims": claims, "labels": labels_of}


def format_summary(summary: dict[str, Any]) -> str:
    parts = []
    labels = summary["labels"]
    for title, per_mixture in summary["columns"].items():
        mixtures = list(per_mixture)
        first = per_mixture[mixtures[0]]
        lines = [f"### {title}\n", "| Method | " + " | ".join(mixtures) + " |"]
        lines.append("|---" * (len(mixtures) + 1) + "|")
        lines.append(
            "| Chance | " + " | ".join(f"{per_mixture[m]['chance']:.1f}" for m in mixtures) + " |"
        )
        lines.append(
            "| Base (untuned) | "
            + " | ".join(f"{per_mixture[m]['base']:.1f}" for m in mixtures)
            + " |"
        )
        for method in first["methods"]:
            cells = []
            for m in mixtures:
                s = per_mixture[m]["methods"].get(method)
                cells.append("–" if s is None else f"{s['mean']:.1f} ± {s['sd']:.1f}")
            lines.append(f"| {labels.get(method, method)} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    lines = ["### The paper's claims per table (margin, 95% interval, verdict)\n"]
    for mixture, tables in summary["claims"].items():
        for table, claims in tables.items():
            for c in claims:
                low, high = c["interval"]
                verdict = "holds" if c["holds"] else "does not hold"
                lines.append(
                    f"- `{mixture}`, table {table}: {c['claim']}: {c['margin']:+.1f} "
                    f"[{low:+.1f}, {high:+.1f}], {verdict}"
                )
    parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=Path, default=Path("runs/mixtures"))
    p.add_argument("--out", type=Path, default=Path("docs/demo/mixtures"))
    p.add_argument("--mixtures", default=",".join(MIXTURES))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--reuse", action="append", default=[], metavar="MIXTURE=DIR")
    args = p.parse_args()
    reused = dict(item.split("=", 1) for item in args.reuse)
    results = {}
    for name in args.mixtures.split(","):
        folder = Path(reused.get(name, args.runs / name))
        if not (folder / "results.json").is_file():
            run_demo(["--mixture", name], folder, args.seeds)
        results[name] = json.loads((folder / "results.json").read_text())
        for file in ("results.md", "results.json", "config.json"):
            atomic_write(args.out / name / file, (folder / file).read_bytes())
    summary = summarise(results)
    atomic_write(args.out / "ablation.json", json.dumps(summary, indent=1) + "\n")
    atomic_write(
        args.out / "ablation.md", "# The training mixture, ablated\n\n" + format_summary(summary)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
