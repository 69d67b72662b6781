"""examples/distributed_jax.py on 8 forced CPU devices: a (data=4, model=2) mesh trains the
same adapter as one device, and the adapter saved from the mesh loads on one device."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("jax")
EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples/distributed_jax.py"


def run(tmp_path, *flags):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "--out", str(tmp_path / "adapter"), *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_mesh_training_equals_one_device_and_reloads(tmp_path):
    out = run(tmp_path, "--check")
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    assert report["base_kernel_spec"] == "P(None, 'model')"
    assert report["adapter_vectors_spec"] == "P('model',)"
    assert report["param_diff"] < 1e-4 and report["loss_diff"] < 1e-5
    assert report["reload_logit_diff"] < 1e-4
    assert (tmp_path / "adapter/adapter.safetensors").is_file()


def test_batch_not_divisible_by_data_axis_is_refused(tmp_path):
    out = run(tmp_path, "--batch", "6", "--steps", "1")
    assert out.returncode != 0
    assert "--batch 6 is not divisible by the data axis (4 devices)" in out.stderr
    assert not (tmp_path / "adapter").exists()  # nothing half-written
