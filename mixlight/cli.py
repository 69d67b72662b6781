"""The ``mixlight`` command: ``info``, ``inspect DIR``, ``tune CONFIG``, ``demo``, ``bench``.

``inspect`` describes a mixlight adapter directory (any format version), a PEFT adapter
directory (as mixlight would import it), or a Hub repo id holding either.

Heavy subcommands import their backend only when they run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import mixlight as ml
import mixlight.extend as mlx
from mixlight._hub import resolve
from mixlight._peft_format import read_peft
from mixlight.adapter_file import LAYOUTS, peft_description


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
    if root.is_dir() and not any((root / w).is_file() for w, _ in LAYOUTS):
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

    return bench_main(list(rest))


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
    args, rest = parser.parse_known_args(argv)
    if args.command in ("tune", "demo", "bench"):
        return {"tune": _tune, "demo": _demo, "bench": _bench}[args.command](args, rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    try:
        return {"info": _info, "inspect": _inspect}[args.command](args)
    except (ValueError, OSError) as err:
        print(f"mixlight {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
