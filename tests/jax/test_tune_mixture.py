"""One ``[[mixture]]`` config trained with ``backend = "torch"`` and ``backend = "jax"``: the
same draws (the plan is framework-free) and the same losses, step by step. The JAX trainer
scans every drawn pair's length once (its padding limits): the mixture's lazy pairs serve
that as well as the torch trainer's batches."""

import numpy as np
import pytest

from mixlight_tune.tune_cli import run
from mixlight_tune.tune_config import read_config
from tests.p3_fixtures import write_jsonl
from tests.tune_case import ROWS, write_case

pytest.importorskip("jax")
pytest.importorskip("optax")
pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_a_mixture_trains_alike_in_both_backends(tmp_path):
    write_jsonl(tmp_path / "parity.jsonl", ROWS)
    numbers = [{"inputs": f"Write {n} backwards.", "targets": str(n)[::-1]} for n in range(300)]
    write_jsonl(tmp_path / "numbers.jsonl", numbers)
    mixture = [{"path": "parity.jsonl", "rate": 2}, {"path": "numbers.jsonl", "cap": 12}]
    case = {"optimizer": "sgd", "lr": 0.1, "steps": 5, "data": None, "mixture": mixture}
    configs = {
        b: read_config(write_case(tmp_path, b, eval_data=None, **case)) for b in ("torch", "jax")
    }
    metrics = {b: run(cfg, lambda _: None) for b, cfg in configs.items()}
    assert metrics["torch"]["mixture"] == metrics["jax"]["mixture"]
    assert [m["probability"] for m in metrics["jax"]["mixture"]] == [2 / 14, 12 / 14]
    np.testing.assert_allclose(metrics["torch"]["losses"], metrics["jax"]["losses"], rtol=1e-5)
