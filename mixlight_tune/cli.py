"""``mixlight demo``: the paper in miniature (see :mod:`mixlight_tune.experiment`).

Tunes the shipped tiny T5 with full fine-tuning, (IA)³, LoRA, MoV and MoLoRA on the built-in
instruction mixture, scores held-in items, held-out prompts and held-out tasks zero-shot by
rank classification, checks the paper's claims, and writes the tables, plots and adapters
to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from mixlight import AdapterFileError

from .experiment import (
    BACKENDS,
    BASE_SIZES,
    DEFAULT_METHODS,
    LEARNING_RATES,
    METHODS,
    QUICK,
    DemoConfig,
    DemoError,
    run,
    select,
)
from .miniature.suite import DEFAULT_MIXTURE, MIXTURES


def _parser() -> argparse.ArgumentParser:
    default = DemoConfig()
    p = argparse.ArgumentParser(prog="mixlight demo", description=__doc__)
    p.add_argument("--quick", action="store_true", help="one-minute smoke test (tiny everything)")
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, from: {', '.join(METHODS)} (default: %(default)s)",
    )
    p.add_argument("--seeds", type=int, help=f"number of seeds (default {default.seeds})")
    p.add_argument(
        "--steps", type=int, help=f"tuning steps of each adapter method (default {default.steps})"
    )
    p.add_argument(
        "--full-steps", type=int, help=f"full fine-tuning steps (default {default.full_steps})"
    )
    p.add_argument("--batch-size", type=int, help=f"default {default.batch_size}")
    p.add_argument("--optimizer", choices=sorted(LEARNING_RATES), help="default adafactor")
    p.add_argument(
        "--lr",
        type=float,
        help="one learning rate for every method "
        "(default: per method family, see docs/demo/README.md)",
    )
    p.add_argument(
        "--output-dir",
        dest="out",
        type=Path,
        help=f"output directory, as mixlight tune's (default {default.out_dir})",
    )
    p.add_argument("--cache-dir", type=Path, help=f"pre-trained base cache ({default.cache_dir})")
    p.add_argument(
        "--model",
        type=Path,
        help="a Hugging Face T5 checkpoint directory to tune "
        "instead of the built-in tiny model (its tokenizer must be there)",
    )
    p.add_argument(
        "--data",
        type=Path,
        help="your .jsonl (inputs, targets, answer_choices...): "
        "train on every row, evaluate on rows with answer_choices",
    )
    p.add_argument(
        "--eval-data",
        type=Path,
        action="append",
        help="also score these prompts (.jsonl rows with answer_choices) as table D; "
        "repeat for more files (tables E, F, ...)",
    )
    p.add_argument(
        "--select",
        action="store_true",
        help="pick each method's learning rate on held-in validation items (writes "
        "selection.md) instead of running the comparison",
    )
    p.add_argument(
        "--build-base",
        type=Path,
        metavar="DIR",
        help="regenerate the built-in base model into DIR from its seed and exit (torch)",
    )
    p.add_argument(
        "--base-size",
        choices=BASE_SIZES,
        help="the built-in base's size (default small: 0.33M parameters; medium 0.72M and "
        "large 1.26M are the scaling run's, docs/demo/scaling)",
    )
    p.add_argument(
        "--mixture",
        choices=MIXTURES,
        help=f"the built-in training mixture (default {DEFAULT_MIXTURE}: ten task families, "
        "five prompts each; prompts: ten prompts each; formats: five two-way yes/no and "
        "pick-of-two families added; wide: both; docs/demo/mixtures has the ablation)",
    )
    p.add_argument("--backend", choices=BACKENDS, help="default torch")
    p.add_argument(
        "--threads",
        type=int,
        help=f"CPU threads (default {default.threads}; --quick {QUICK.threads}; "
        "use 1 on a busy machine)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


_OVERRIDES = {
    "seeds": "seeds",
    "steps": "steps",
    "full_steps": "full_steps",
    "batch_size": "batch_size",
    "optimizer": "optimizer",
    "lr": "lr",
    "out": "out_dir",
    "cache_dir": "cache_dir",
    "model": "model_path",
    "data": "data_path",
    "backend": "backend",
    "mixture": "mixture",
    "threads": "threads",
}


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """The preset (``--quick`` or default) with every given flag applied."""
    changes = {f: getattr(args, a) for a, f in _OVERRIDES.items() if getattr(args, a) is not None}
    changes["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    changes["progress"] = not args.no_progress
    if args.eval_data:
        changes["eval_data_paths"] = tuple(args.eval_data)
    if args.base_size is not None:
        changes["base"] = BASE_SIZES[args.base_size]
    return dataclasses.replace(QUICK if args.quick else DemoConfig(), **changes)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; 0 on success, 2 on bad input, 130 when interrupted."""
    args = _parser().parse_args(argv)
    if args.base_size is not None and args.model is not None:
        print(
            "mixlight demo: error: --model and --base-size both pick the base: give --model "
            "(your checkpoint) or --base-size (a built-in base), not both",
            file=sys.stderr,
        )
        return 2
    cfg = config_from_args(args)
    try:
        if args.build_base is not None:
            from .frameworks.torch_steps import build_base

            print(f"built {build_base(cfg, args.build_base)}")
        elif args.select:
            select(cfg)
        else:
            run(cfg)
    except (DemoError, AdapterFileError, OSError) as err:
        print(f"mixlight demo: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = (
            f"{args.build_base} is unchanged"
            if args.build_base is not None
            else f"results of the finished runs are in {cfg.out_dir}"
        )
        print(f"\nmixlight demo: interrupted; {kept}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
