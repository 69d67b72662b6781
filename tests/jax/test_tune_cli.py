"""``mixlight tune`` with ``backend = "jax"``, and the same config in both backends: with
only ``backend`` changed, the initial adapter files hold the same bytes and a few steps give
the same losses (within float tolerance) and the same metrics file layout."""

import json

import numpy as np
import pytest

import mixlight as ml
from mixlight.cli import main
from mixlight_tune.tune_cli import run
from mixlight_tune.tune_config import read_config
from tests.tune_case import write_case

pytest.importorskip("jax")
pytest.importorskip("optax")


def test_a_few_steps_in_jax(tmp_path):
    assert main(["tune", str(write_case(tmp_path, "jax"))]) == 0
    metrics = json.loads((tmp_path / "out-jax/metrics.json").read_text())
    assert len(metrics["losses"]) == 3 and metrics["losses"][-1] < metrics["losses"][0]
    assert metrics["config"]["backend"] == "jax"
    assert ml.read_adapter(tmp_path / "out-jax/adapter").config == ml.MoV(3)


def _both(tmp_path, **overrides):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return {
        backend: run(read_config(write_case(tmp_path, backend, **overrides)), log=lambda _: None)
        for backend in ("torch", "jax")
    }


def test_same_config_same_initial_adapter_bytes(tmp_path):
    _both(tmp_path, steps=0, eval_data=None)
    torch_file, jax_file = (
        (tmp_path / f"out-{b}/adapter/adapter.safetensors").read_bytes() for b in ("torch", "jax")
    )
    assert torch_file == jax_file  # arrays, config and base identity (name, weight samples)


def test_same_config_same_losses_and_metrics(tmp_path):
    metrics = _both(tmp_path)
    np.testing.assert_allclose(metrics["torch"]["losses"], metrics["jax"]["losses"], rtol=1e-4)
    assert metrics["torch"].keys() == metrics["jax"].keys()
    assert metrics["torch"]["eval"] == metrics["jax"]["eval"]
    np.testing.assert_allclose(
        metrics["torch"]["trainable_percent"], metrics["jax"]["trainable_percent"], rtol=1e-6
    )
    torch_cfg, jax_cfg = metrics["torch"]["config"], metrics["jax"]["config"]
    assert {k for k in torch_cfg if torch_cfg[k] != jax_cfg[k]} == {"backend", "output_dir"}
