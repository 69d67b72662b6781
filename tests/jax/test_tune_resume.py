"""A killed ``mixlight tune`` run (JAX) restarted with the same config continues from its
last checkpoint (weights and optax state) and ends with the adapter of an uninterrupted run."""

import numpy as np
import pytest

import mixlight as ml
from tests.tune_case import interrupted_then_resumed

pytest.importorskip("jax")
pytest.importorskip("optax")


@pytest.mark.parametrize("optimizer", ["adafactor", "adamw"])
def test_resumed_run_ends_with_the_uninterrupted_adapter(tmp_path, monkeypatch, optimizer):
    whole, resumed = interrupted_then_resumed(tmp_path, "jax", monkeypatch, optimizer=optimizer)
    assert resumed["losses"] == whole["losses"] and len(whole["losses"]) == 7
    a = ml.read_adapter(tmp_path / "whole/out-jax/adapter").arrays
    b = ml.read_adapter(tmp_path / "split/out-jax/adapter").arrays
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not all((v == 1).all() for k, v in a.items() if k.endswith(".vectors"))
