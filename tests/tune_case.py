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
        # off, as the cross-framework and resume equalities need (the default is the
        # paper's 0.1; tests/torch/test_tune_scale.py trains with it)
        "dropout": 0.0,
    } | overrides
    path = root / f"{backend}.json"
    path.write_text(json.dumps(config))
    return path


def interrupted_then_resumed(root: Path, backend: str, monkeypatch, **overrides):
    """Run the case whole (``root/whole``) and, in ``root/split``, stopped by an exception
    after its 5th step (its last checkpoint is step 4), then restarted with the same config.
    Returns the metrics of ``(whole, resumed)``."""
    import importlib

    from mixlight_tune.tune_cli import run
    from mixlight_tune.tune_config import read_config

    case = {"steps": 7, "checkpoint_every": 2, "eval_data": None} | overrides
    configs = {}
    for name in ("whole", "split"):
        (root / name).mkdir()
        configs[name] = read_config(write_case(root / name, backend, **case))
    whole = run(configs["whole"], lambda _: None)
    steps = importlib.import_module(f"mixlight_tune.frameworks.{backend}_steps")
    check = steps.check_finite_loss

    def killed_after_step_5(loss, step, settings):
        check(loss, step, settings)
        if step == 4:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(steps, "check_finite_loss", killed_after_step_5)
    try:
        run(configs["split"], lambda _: None)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the run was not interrupted")
    monkeypatch.undo()
    assert not (root / "split" / f"out-{backend}" / "metrics.json").exists()
    log: list[str] = []
    resumed = run(configs["split"], log.append)
    assert any("from step 4 of 7" in line for line in log), log
    return whole, resumed
