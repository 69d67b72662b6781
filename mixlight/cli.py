"""The ``mixlight`` command: ``info``, ``inspect DIR``, ``tune CONFIG``, ``demo``, ``bench``,
``check``.

``inspect`` describes a mixlight adapter directory, a PEFT adapter
directory (as mixlight would import it), or a Hub repo id holding either.

Heavy subcommands import their backend only when they run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import mixlight as ml
import mixlight.extend as mlx
from mixlight._hub import resolve
from mixlight._peft import read_peft
from mixlight.adapter_file import WEIGHTS_FILE, peft_description


def _info(args: argparse.Namespace) -> int:
    print(f"mixlight {ml.__version__}")
    print("backends:")
    for name, plugin in sorted(mlx.installed_backends().items()):
        try:
            mlx.load_backend(name)
            state = "available"
        except ImportError as err:
            state = f"not usable: {err}"
        print(f"  {name:8s} framework={plugin.framework:6s} {state}")
    print("expert kinds:")
    for name, cls in sorted(mlx.expert_kinds().items()):
        print(f"  {name:10s} {cls.__module__}.{cls.__name__}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    root = resolve(args.directory, "inspect")
    if root.is_dir() and not (root / WEIGHTS_FILE).is_file():
        if peft_description(root) is not None:
            return _inspect_peft(args.directory, root)
    adapter = ml.read_adapter(root)
    cfg = adapter.config
    total = sum(int(np.prod(a.shape)) for a in adapter.arrays.values())
    print(
        f"{args.directory}: {cfg.method} (format {adapter.format_version}, "
        f"written by mixlight {adapter.mixlight_version})"
    )
    print(f"  experts: {cfg.num_experts}  router: {cfg.router}  routing: {cfg.routing}")
    base = adapter.base_identity
    known = ", ".join(
        f"{k} {v}" for k, v in (("name", base.name), ("revision", base.revision)) if v
    )
    sampled = "" if base.samples is None else f", {base.samples.size} sampled weights"
    print(
        f"  base-model fingerprint: {adapter.fingerprint[:16]} ({known or 'name unknown'}{sampled})"
    )
    print(f"  sites ({len(adapter.specs)} modules, {total:,} parameters):")
    for spec in adapter.specs:
        count = sum(int(np.prod(p.shape)) for p in spec.param_specs().values())
        heads = f" heads={spec.heads}" if spec.heads else ""
        print(
            f"    {spec.path}  {spec.expert.kind} d_in={spec.d_in} d_out={spec.d_out}"
            f"{heads}  params={count:,}"
        )
    return 0


def _inspect_peft(name: str, root: Path) -> int:
    """Describe a PEFT adapter directory as mixlight would import it."""
    peft = read_peft(root)
    kinds = sorted({m.kind for m in peft.modules.values()})
    total = sum(int(a.size) for m in peft.modules.values() for a in m.arrays.values())
    print(f"{name}: a PEFT {peft.peft_type} adapter (not a mixlight adapter directory)")
    print(f"  base model: {peft.base_model or 'not recorded'}")
    print(f"  {len(peft.modules)} modules, {total:,} parameters, as mixlight {', '.join(kinds)}")
    for module in peft.modules.values():
        shapes = " ".join(f"{k}{tuple(a.shape)}" for k, a in module.arrays.items())
        print(f"    {module.path}  {shapes}")
    print(f"  import: ml.load_peft_adapter(model, {name!r}) (upcycle=ml.MoV(...) for a mixture)")
    return 0


def _demo(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from mixlight_tune.cli import main as demo_main

    return demo_main(list(rest))


def _tune(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from mixlight_tune.tune_cli import main as tune_main

    return tune_main(list(rest))


def _bench(args: argparse.Namespace, rest: Sequence[str]) -> int:
    """``python -m benchmarks`` of the source checkout in the current directory: the
    benchmarks ship with the source tree, not with the installed package."""
    here = os.getcwd()
    if not os.path.isfile(os.path.join(here, "benchmarks", "cli.py")):
        print(
            "mixlight bench: error: mixlight bench needs a source checkout: the benchmarks are "
            "not installed with the package. Clone the mixlight repository, install it with "
            'pip install -e ".[all]", and run `mixlight bench` or `python -m benchmarks` '
            "from its root",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, here)
    from benchmarks.cli import main as bench_main

    return int(bench_main(list(rest)))


CHECK_HELP = """Check, on this machine's devices, what a model runs there against mixlight's
independent loop reference: the injected adapter layer with the fast op the registry picks,
forward and gradients, eager and compiled (torch.compile; jax.jit), at every place (each
device; JAX meshes of all devices; a torch DDP group under torchrun). Prints the largest
errors per path. Exit status: 0 passed, 1 a path differs, 2 an error that is not a
numerical mismatch (or bad arguments)."""


def _check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixlight check", description=CHECK_HELP)
    parser.add_argument(
        "--framework",
        choices=("all", "torch", "jax"),
        default="all",
        help="which framework's places to check (default: every one installed)",
    )
    parser.add_argument(
        "--examples", type=int, default=10, help="hypothesis examples per case family"
    )
    parser.add_argument(
        "--dtypes",
        default="float32,bfloat16",
        help="activation dtypes to draw, comma-separated: float32, bfloat16, float16",
    )
    parser.add_argument(
        "--compile-backend",
        default="aot_eager",
        help="torch.compile backend of the compiled paths ('none': eager only; default "
        "aot_eager, cheaper than inductor on a CPU)",
    )
    parser.add_argument(
        "--kind",
        metavar="MODULE:NAME",
        help="check a custom expert kind (an ExpertKind instance or class, importable)",
    )
    parser.add_argument(
        "--append",
        metavar="FILE",
        help="also append the tables, with a heading, to this markdown file",
    )
    return parser


def _expert_from(reference: str) -> mlx.ExpertKind:
    import importlib

    module, _, name = reference.partition(":")
    if not module or not name:
        raise ValueError(f"--kind {reference!r}: give MODULE:NAME, e.g. my_kinds:Biases")
    found = getattr(importlib.import_module(module), name)
    expert = found() if isinstance(found, type) else found
    if not isinstance(expert, mlx.ExpertKind):
        raise ValueError(f"--kind {reference!r} is a {type(expert).__name__}, not an ExpertKind")
    return expert


def _join_torchrun() -> None:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1), join its process group, so that the check
    runs a DDP group of all processes too (NCCL with a GPU per process, else gloo)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch

    from mixlight._torch_group import join_process_group

    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if torch.cuda.is_available() and torch.cuda.device_count() >= local:  # a GPU each
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        join_process_group("nccl")
    else:
        join_process_group("gloo")


def _check(args: argparse.Namespace, rest: Sequence[str]) -> int:
    """``mixlight check``: :func:`mixlight.testing.check_on_devices` for each framework."""
    import importlib.util
    import time

    options = _check_parser().parse_args(list(rest))
    try:
        from mixlight.testing import ConformanceError, PlaceError, check_on_devices
    except ImportError as err:
        print(f"mixlight check: error: {err} (pip install hypothesis)", file=sys.stderr)
        return 2
    names = ("torch", "jax") if options.framework == "all" else (options.framework,)
    frameworks = [n for n in names if importlib.util.find_spec(n) is not None]
    if not frameworks:
        print(f"mixlight check: error: {' or '.join(names)} is not installed", file=sys.stderr)
        return 2
    backend = None if options.compile_backend.lower() == "none" else options.compile_backend
    try:
        expert = _expert_from(options.kind) if options.kind else None
        dtypes = tuple(d.strip() for d in options.dtypes.split(",") if d.strip())
    except (ValueError, ImportError, AttributeError) as err:
        print(f"mixlight check: error: {err}", file=sys.stderr)
        return 2
    if "torch" in frameworks:
        _join_torchrun()
    sections, status = [], 0
    for framework in frameworks:  # each framework checked, whatever the one before found
        start = time.perf_counter()
        report: Any
        try:
            report = check_on_devices(
                framework,
                options.examples,
                expert=expert,
                dtypes=dtypes,
                compile_backend=backend,
                show=False,
            )
        except ConformanceError as err:
            report, found, code = err.report, f"FAILED: {err}", 1
        except (PlaceError, ValueError, ImportError) as err:
            report, found, code = getattr(err, "report", None), f"ERROR: {err}", 2
        else:
            found, code = "", 0
        seconds = time.perf_counter() - start
        title = f"### {framework}"
        if report is not None:
            title += (
                f": {len(report)} paths on {', '.join(report.places)} ({options.examples} "
                f"examples per family, {seconds:.0f} s{', stopped early' if code else ''})"
            )
        found = (report.table(title) if report is not None else title) + (
            f"\n\n```\n{found}\n```" if code else ""
        )
        status = max(status, code)
        sections.append(found)
        print(found, end="\n\n", file=sys.stderr if code else sys.stdout, flush=True)
    if options.append:
        stamp = time.strftime("%Y-%m-%d %H:%M")
        with open(options.append, "a") as out:
            out.write(f"\n## mixlight check ({stamp})\n\n" + "\n\n".join(sections) + "\n")
    verdict = ["every path equals the loop reference", "a path differs", "a check failed"]
    print(f"mixlight check: {verdict[status]}", file=sys.stderr if status else sys.stdout)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mixlight", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="list backends and expert kinds")
    inspect = sub.add_parser(
        "inspect", help="describe an adapter directory (mixlight or PEFT) or Hub repo id"
    )
    inspect.add_argument("directory")
    sub.add_parser(
        "tune",
        help="tune an adapter from a TOML/JSON config, torch or JAX (see `mixlight tune -h`)",
        add_help=False,
    )
    sub.add_parser(
        "demo", help="instruction tuning in miniature (see `mixlight demo -h`)", add_help=False
    )
    sub.add_parser(
        "bench", help="speed and memory benchmarks (see `mixlight bench -h`)", add_help=False
    )
    sub.add_parser(
        "check",
        help="check every device's path against the loop reference (see `mixlight check -h`)",
        add_help=False,
    )
    args, rest = parser.parse_known_args(argv)
    heavy = {"tune": _tune, "demo": _demo, "bench": _bench, "check": _check}
    if args.command in heavy:
        from mixlight._torch_group import end_launched_process

        return end_launched_process(heavy[args.command](args, rest))
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    try:
        return {"info": _info, "inspect": _inspect}[args.command](args)
    except (ValueError, OSError) as err:
        print(f"mixlight {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
