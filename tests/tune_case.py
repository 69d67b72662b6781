"""A tiny ``mixlight tune`` experiment for the torch and JAX tests: 12 yes/no rows and a
config of a few steps on the shipped base, identical but for ``backend``."""

import json
from pathlib import Path

ROWS = [
    {
        "inputs": f"Is {n} an even number?",
        "targets": "yes" if n % 2 == 0 else "no",
        "answer_choices": ["yes", "no"],
        "task": "parity",
    }
    for n in range(12)
]


def write_case(root: Path, backend: str, **overrides) -> Path:
    """Write ``root/train.jsonl`` and ``root/<backend>.json``; return the config's path."""
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    config = {
        "backend": backend,
        "steps": 3,
        "batch_size": 4,
        "optimizer": "adamw",
        "lr": 1e-2,
        "seed": 7,
        "data": "train.jsonl",
        "eval_data": "train.jsonl",
        "output_dir": f"out-{backend}",
        "progress": False,
        "adapter": {"preset": "mov", "num_experts": 3},
    } | overrides
    path = root / f"{backend}.json"
    path.write_text(json.dumps(config))
    return path
