"""The scale trend in miniature: the demo's comparison at every base size, and the gap plot.

Runs ``mixlight demo --base-size SIZE --seeds 3 --threads 1`` with our two held-out prompt
sets as tables D and E, for each size whose run folder holds no ``results.json`` yet, then writes
``scaling.md``, ``scaling.json`` and ``gap_vs_size.png`` to ``--out`` and copies each size's
``results.md``/``results.json`` beside them::

    python scripts/scaling.py --runs runs/scaling --out docs/demo/scaling

``--reuse small=docs/demo/held_out_prompts`` takes a size's finished run from a folder (the
committed small run is the same command). The bases are the shipped ones
(``mixlight_tune/miniature/base*``); ``mixlight demo --base-size SIZE --build-base DIR``
regenerates one from its seed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from mixlight_tune._files import atomic_write
from mixlight_tune.experiment import BASE_SIZES, TABLE_TITLES, DemoConfig, base_checkpoint
from mixlight_tune.scaling import (
    SizePoint,
    count_parameters,
    format_scaling,
    plot_gap_vs_size,
    scaling_summary,
)

HELD_OUT = {
    "D": Path("docs/demo/held_out_prompts.jsonl"),
    "E": Path("docs/demo/held_out_prompts_e.jsonl"),
}


def run_demo(flags: list[str], folder: Path, seeds: int) -> None:
    """``mixlight demo FLAGS`` over ``seeds`` seeds on one thread, our held-out sets as tables
    D and E, into ``folder`` (also scripts/mixture_ablation.py's runs)."""
    command = [
        *(sys.executable, "-m", "mixlight.cli", "demo", *flags),
        *("--seeds", str(seeds), "--threads", "1", "--no-progress"),
        *(a for path in HELD_OUT.values() for a in ("--eval-data", str(path))),
        *("--output-dir", str(folder)),
    ]
    print("running:", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=Path, default=Path("runs/scaling"))
    p.add_argument("--out", type=Path, default=Path("docs/demo/scaling"))
    p.add_argument("--sizes", default=",".join(BASE_SIZES))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--reuse", action="append", default=[], metavar="SIZE=DIR")
    args = p.parse_args()
    reused = dict(item.split("=", 1) for item in args.reuse)
    points = []
    for size in args.sizes.split(","):
        folder = Path(reused.get(size, args.runs / size))
        if not (folder / "results.json").is_file():
            run_demo(["--base-size", size], folder, args.seeds)
        base = base_checkpoint(DemoConfig(base=BASE_SIZES[size]))
        results = json.loads((folder / "results.json").read_text())
        points.append(SizePoint(size, count_parameters(base), results))
        (args.out / size).mkdir(parents=True, exist_ok=True)
        for name in ("results.md", "results.json"):
            shutil.copyfile(folder / name, args.out / size / name)
    summary = scaling_summary(points)
    titles = {
        **TABLE_TITLES,
        **{k: f"{k}. Our held-out prompts ({p})" for k, p in HELD_OUT.items()},
    }
    atomic_write(args.out / "scaling.json", json.dumps(summary, indent=1) + "\n")
    atomic_write(
        args.out / "scaling.md",
        "# The scale trend in miniature\n\n" + format_scaling(summary, titles),
    )
    plot_gap_vs_size(
        summary, args.out / "gap_vs_size.png", [t for t in "BDE" if t in summary["tables"]]
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
