"""``python -m benchmarks`` (or ``mixlight bench`` from a source checkout): run the speed and
memory benchmarks and write RESULTS.md/results.json. torch is imported only when a run
starts. The benchmarks ship with the source tree, not with the installed package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

NOTES = (
    "Case 3 runs at batch 4 (the issue asks for 8): a batch-8 step takes about 10 s on 2 "
    "shared cores, and 6 implementations x 6 rounds of it would not fit the 15-minute budget.",
    "Case 4 is latency: batch 1, the source as long as case 3's.",
    "OMP_WAIT_POLICY=PASSIVE: on this oversubscribed machine the default (spinning) policy "
    "made a [64, 32] x [32, 10] matmul take ~30 ms instead of ~20 us, which swamped every "
    "small operation.",
    "Profiles of missed targets are one profiled step of each side on a shared machine: "
    "only large differences mean something.",
    "The CUDA peak column is filled on CUDA runs only (benchmarks/gpu.sh writes "
    "RESULTS-gpu.md); on CPU, memory is the bytes saved for backward.",
    "PEFT X-LoRA is in case 7, on a decoder-only Llama, not in case 3: PEFT 0.21's X-LoRA "
    "cannot load adapters into an encoder-decoder T5 (it rewrites keys to a decoder-only "
    "`model.model.*` layout) and applies one sequence's scalings at every layer.",
    "Case 9 (mixlight tune steps per second, torch and JAX) is not in the default set either; "
    "it times the tune pipeline's own trainers (python -m benchmarks --cases 9).",
    "Cases 5 (torch.compile; inductor takes about 40 s per graph on these cores), 6 and 8 "
    "(the JAX rows; need jax and mixlight_jax) are not in the default set: ask for them with "
    "--cases. Case 3's compiled group runs on CPU only (three inductor compiles of a T5 "
    "step, ~1-2.5 min each here).",
)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mixlight bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (under a minute)")
    parser.add_argument("--cases", default="1,2,3,4,7", help="comma-separated case numbers")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per case")
    parser.add_argument("--out", default="benchmarks", help="directory for the results")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: rewrite OUT/RESULTS.md from OUT/results.json with the current "
        "analysis text",
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="skip profiling misses (--quick never does)"
    )
    args = parser.parse_args(argv)
    try:
        args.cases = [int(c) for c in args.cases.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--cases must be comma-separated numbers; got {args.cases!r}")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def run(args: argparse.Namespace, command: str) -> dict:
    """Run the selected cases; the JSON-ready record of the run.

    Sets ``OMP_WAIT_POLICY=PASSIVE`` (unless set) before torch loads OpenMP: on a shared,
    oversubscribed CPU, spinning OpenMP workers turn every parallel region into a wait for a
    descheduled thread (a 64x32 matmul then takes ~30 ms instead of ~20 us).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from benchmarks import analysis, cases, report

    unknown = sorted(set(args.cases) - set(cases.CASES))
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}; known: {sorted(cases.CASES)}")
    torch.set_num_threads(args.threads)
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    profile = not (args.quick or args.no_profile)
    start = time.perf_counter()
    results = []
    for number in args.cases:
        case = cases.CASES[number]
        print(f"case {number}: {case.title} ...", flush=True)
        results.append(cases.run_case(case, args.quick, args.repeats, device, profile))
    return {
        "command": command,
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "wall_s": time.perf_counter() - start,
        "environment": report.environment(device),
        "cases": results,
        "proposed_targets": analysis.proposed_targets(device.type, args.quick),
        "before_after": analysis.before_after(device.type, args.quick),
        "notes": list(NOTES),
    }


def rerender(out: Path) -> dict:
    """The record stored in ``out/results.json``, its notes and analysis text refreshed."""
    from benchmarks import analysis

    record = json.loads((out / "results.json").read_text())
    record["notes"] = list(NOTES)
    device = str(record["environment"]["device"]).split(":")[0]
    for case in record["cases"]:
        case["analysis"] = analysis.analysis_for(case["case"], device, record["quick"])
    record["proposed_targets"] = analysis.proposed_targets(device, record["quick"])
    record["before_after"] = analysis.before_after(device, record["quick"])
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks`` and ``mixlight bench``; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = " ".join(["mixlight", "bench", *argv])
    try:
        record = rerender(Path(args.out)) if args.render else run(args, command)
    except (ValueError, OSError, ImportError) as err:
        print(f"mixlight bench: error: {err}", file=sys.stderr)
        return 2
    from benchmarks import report

    md, js = report.write(record, Path(args.out))
    print(f"wrote {md} and {js}")
    return 0
