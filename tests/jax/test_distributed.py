"""Data- and model-parallel JAX on 8 forced CPU devices: examples/distributed_jax.py trains the
same adapter on a (data=4, model=2) mesh as on one device and reloads it; the raw adapter
gradients on the mesh equal one device's and torch's (mesh_gradients.py), for MoV and MoLoRA."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
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
    assert (tmp_path / "adapter/mixlight_adapter.safetensors").is_file()


def test_batch_not_divisible_by_data_axis_is_refused(tmp_path):
    out = run(tmp_path, "--batch", "6", "--steps", "1")
    assert out.returncode != 0
    assert "--batch 6 is not divisible by the data axis (4 devices)" in out.stderr
    assert not (tmp_path / "adapter").exists()  # nothing half-written


# --- raw gradients on a mesh, against one device and against torch ------------------------------

MESH_HELPER = pathlib.Path(__file__).with_name("mesh_gradients.py")


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory):
    """``(checkpoint, out)``: a tiny HF T5 checkpoint and what ``mesh_gradients.py`` wrote."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("mesh")
    torch.manual_seed(0)
    config = transformers.T5Config(
        d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, vocab_size=100,
        decoder_start_token_id=0, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        dropout_rate=0.0,
    )  # fmt: skip
    transformers.T5ForConditionalGeneration(config).save_pretrained(root / "hf-t5")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(MESH_HELPER.parents[2]), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, str(MESH_HELPER), str(root / "hf-t5"), str(root)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "hf-t5", root


def _torch_gradients(checkpoint, adapter):
    """The same loss's adapter gradients in torch (HF T5 + mixlight_torch): an independent
    computation of what every JAX layout must give."""
    import torch
    import transformers

    import mixlight as ml
    from mixlight_torch.model import adapter_parameters

    ids, dec, labels = (torch.from_numpy(a).long() for a in _mesh_batch())
    model = ml.load_adapter(
        transformers.T5ForConditionalGeneration.from_pretrained(checkpoint), adapter
    )
    logits = model(input_ids=ids, decoder_input_ids=dec).logits
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()
    return {n: p.grad.numpy() for n, p in adapter_parameters(model)}


def _mesh_batch():
    sys.path.insert(0, str(MESH_HELPER.parent))
    try:
        from mesh_gradients import batch
    finally:
        sys.path.pop(0)
    return batch()


def _assert_same(got, want, what, rtol):
    assert got.keys() == want.keys(), what
    for name, w in want.items():
        scale = np.abs(w).max()
        np.testing.assert_allclose(
            got[name], w, rtol=rtol, atol=rtol * scale, err_msg=f"{what}: {name}"
        )


@pytest.mark.parametrize("kind", ["mov", "molora"])
def test_mesh_gradients_equal_one_device_and_torch(mesh_runs, kind):
    """Raw gradients (not Adam steps, which hide a constant scale): the (data=4, model=2) mesh
    equals one device, both equal torch's on the same checkpoint and adapter, and plain SGD
    steps on the mesh equal those on one device."""
    checkpoint, root = mesh_runs
    with np.load(root / f"{kind}.npz") as saved:
        arrays = dict(saved)

    def part(prefix):
        return {k.split("/", 2)[2]: v for k, v in arrays.items() if k.startswith(prefix)}

    want = _torch_gradients(checkpoint, root / kind)
    assert all(np.abs(g).max() > 1e-6 for g in want.values())  # every parameter is trained
    _assert_same(part("grad/one/"), want, "one device vs torch", 1e-3)
    _assert_same(part("grad/mesh/"), part("grad/one/"), "mesh vs one device", 1e-4)
    _assert_same(part("sgd/mesh/"), part("sgd/one/"), "SGD steps, mesh vs one device", 1e-3)
