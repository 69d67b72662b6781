"""``mixlight tune`` with ``backend = "jax"``, against the same config with ``backend =
"torch"``: the initial adapter files hold the same bytes, and a few steps give the same
losses (within float tolerance), the same scores and the same metrics file layout."""

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
pytest.importorskip("torch")
pytest.importorskip("transformers")


def _both(tmp_path, **overrides):
    """Metrics of the torch run (in process) and the JAX run (through the command line)."""
    torch_metrics = run(read_config(write_case(tmp_path, "torch", **overrides)), lambda _: None)
    assert main(["tune", str(write_case(tmp_path, "jax", **overrides))]) == 0
    return torch_metrics, json.loads((tmp_path / "out-jax/metrics.json").read_text())


def _split(path):
    """``(header, tensor bytes)`` of a safetensors file. The header is compared parsed:
    safetensors writes its metadata map in hash order, which differs between writes."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + size]), raw[8 + size :]


def test_same_config_same_initial_adapter_bytes(tmp_path):
    _both(tmp_path, steps=0, eval_data=None)
    (torch_header, torch_data), (jax_header, jax_data) = (
        _split(tmp_path / f"out-{b}/adapter/mixlight_adapter.safetensors") for b in ("torch", "jax")
    )
    assert torch_data == jax_data  # the arrays, byte for byte
    assert torch_header == jax_header  # layout, config and base identity (name, samples)


def test_same_config_same_losses_and_metrics(tmp_path):
    torch_metrics, jax_metrics = _both(tmp_path)
    losses = jax_metrics["losses"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    np.testing.assert_allclose(torch_metrics["losses"], losses, rtol=1e-4)
    assert torch_metrics.keys() == jax_metrics.keys()
    assert torch_metrics["eval"] == jax_metrics["eval"]
    np.testing.assert_allclose(
        torch_metrics["trainable_percent"], jax_metrics["trainable_percent"], rtol=1e-6
    )
    torch_cfg, jax_cfg = torch_metrics["config"], jax_metrics["config"]
    assert {k for k in torch_cfg if torch_cfg[k] != jax_cfg[k]} == {"backend", "output_dir"}
    adapter = ml.read_adapter(tmp_path / "out-jax/adapter")
    assert adapter.config == ml.MoV(3)
    assert not all((a == 1).all() for k, a in adapter.arrays.items() if k.endswith(".vectors"))
