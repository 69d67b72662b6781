"""``RESULTS.md`` and ``results.json`` from a run's environment and case results."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path

import torch

LIBRARIES = ("mixlight", "torch", "transformers", "peft", "numpy", "einops", "jax", "flax")
MIB = 2**20


def environment(device: torch.device) -> dict[str, object]:
    """Machine and library versions."""
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = "not installed"
    env: dict[str, object] = {
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(device),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "versions": versions,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:.1f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _group_table(group: dict) -> list[str]:
    base = group["impls"][group["baseline"]]
    rows = [
        f"**{group['label']}** (baseline `{group['baseline']}`)",
        "",
        "| implementation | median ms [IQR] | time ratio [IQR] | saved for backward MiB | "
        "saved ratio | CUDA peak MiB |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in group["impls"].items():
        saved_ratio = None
        if r["saved_bytes"] and base["saved_bytes"]:
            saved_ratio = r["saved_bytes"] / base["saved_bytes"]
        lo, hi = r["iqr_ms"]
        rlo, rhi = r["ratio_iqr"]
        rows.append(
            f"| `{name}` | {r['median_ms']:.1f} [{lo:.1f}-{hi:.1f}] | {r['ratio']:.2f}x "
            f"[{rlo:.2f}-{rhi:.2f}] | {_mib(r['saved_bytes'])} | {_ratio(saved_ratio)} | "
            f"{_mib(r['cuda_peak_bytes'])} |"
        )
    return [*rows, ""]


def _verdict(entry: dict) -> str:
    if entry["met"] is None:
        return "n/a"
    return "**met**" if entry["met"] else "**missed**"


def _profile_lines(entry: dict) -> list[str]:
    versus = entry["target"].rsplit(" ", 1)[-1]
    lines = [
        f"Missed *{entry['target']}*: operators with the most extra self time (one profiled "
        f"step of each; ms here vs in `{versus}`):",
        "",
    ]
    lines += [f"- `{p['op']}` {p['ms']:.1f} vs {p['versus_ms']:.1f}" for p in entry["profile"]]
    return [*lines, ""]


def _case_section(case: dict) -> list[str]:
    lines = [
        f"## Case {case['case']}: {case['title']}",
        "",
        f"Shapes: {case['shapes']}. {case['repeats']} timed rounds after {case['warmup']} "
        "warm-up round(s).",
        "",
    ]
    for group in case["groups"]:
        lines += _group_table(group)
    lines += ["Targets:", ""]
    lines += [
        f"- {t['target']}: measured {_ratio(t['ratio'])} - {_verdict(t)}" for t in case["targets"]
    ]
    lines.append("")
    for t in case["targets"]:
        if t.get("profile"):
            lines += _profile_lines(t)
    if case["analysis"]:
        lines += [case["analysis"], ""]
    return lines


def render_markdown(run: dict) -> str:
    """The whole ``RESULTS.md`` text."""
    env = run["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = [
        "# mixlight benchmarks",
        "",
        f"Command: `{run['command']}`" + (" (quick: tiny shapes)" if run["quick"] else ""),
        "",
        f"Date (UTC): {run['date']}. Wall time: {run['wall_s']:.0f} s.",
        "",
        f"Machine: {env['processor']}, {env['cpu_count']} CPUs, torch threads "
        f"{env['torch_threads']} (OMP_WAIT_POLICY {env['omp_wait_policy']}), "
        f"{env['platform']}, Python {env['python']}; device "
        f"`{env['device']}`" + (f" ({env['gpu']})" if env.get("gpu") else "") + ".",
        "",
        f"Libraries: {versions}.",
        "",
        "Times are medians over interleaved rounds (each round runs every implementation "
        "once, in rotating order); ratios are taken round by round against the baseline "
        "measured in the same round, with their interquartile range. *Saved for backward* "
        "counts the distinct storages autograd keeps for backward (via "
        "`torch.autograd.graph.saved_tensors_hooks`), excluding weights and parameters.",
        "",
        "## Targets",
        "",
        "| case | target | measured | verdict |",
        "|---|---|---|---|",
    ]
    for case in run["cases"]:
        lines += [
            f"| {case['case']} | {t['target']} | {_ratio(t['ratio'])} | {_verdict(t)} |"
            for t in case["targets"]
        ]
    lines.append("")
    cases = {c["case"] for c in run["cases"]}
    proposed = [p for p in run.get("proposed_targets", []) if p[0] in cases]
    if proposed:
        lines += [
            "Proposed targets for this CPU, where the measurements (see each case's analysis) "
            "show the original one out of reach of the implementation measured here:",
            "",
            "| case | original target | proposed on CPU |",
            "|---|---|---|",
            *[f"| {case} | {original} | {new} |" for case, original, new in proposed],
            "",
        ]
    history = [p for p in run.get("before_after", []) if p[0] in cases]
    if history:
        lines += [
            "Before and after the hot-path fixes (details and commands in `HISTORY.md`):",
            "",
            "| case | measure | first measured | now |",
            "|---|---|---|---|",
            *[f"| {c} | {what} | {before} | {after} |" for c, what, before, after in history],
            "",
        ]
    for case in run["cases"]:
        lines += _case_section(case)
    if run["notes"]:
        lines += ["## Notes", "", *[f"- {n}" for n in run["notes"]], ""]
    return "\n".join(lines)


def write(run: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write ``RESULTS.md`` and ``results.json`` under ``out_dir``; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "RESULTS.md", out_dir / "results.json"
    md.write_text(render_markdown(run))
    js.write_text(json.dumps(run, indent=1) + "\n")
    return md, js
