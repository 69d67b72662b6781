"""examples/llama_nnx.py (issue #25): MoV and MoLoRA trained on a scanned Llama-style NNX
model load into HF's torch ``LlamaForCausalLM`` with the same logits, and the file, saved
per layer under HF's paths, serves the unrolled NNX model too."""

from __future__ import annotations

import pathlib
import runpy
import warnings

import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import mixlight as ml  # noqa: E402

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples/llama_nnx.py"


@pytest.fixture(scope="module")
def example():
    return runpy.run_path(str(EXAMPLE), run_name="llama_nnx")


@pytest.fixture(scope="module")
def results(example, tmp_path_factory):
    return example["run"](tmp_path_factory.mktemp("llama"), steps=6)


@pytest.mark.parametrize("method", ["mov", "molora"])
def test_adapters_trained_in_jax_give_the_same_logits_in_torch(results, method):
    r = results[method]
    assert r["base_diff"] < 1e-4  # the NNX model is HF's Llama
    assert r["adapted_diff"] < 1e-4 and r["moved"] > 0.1  # ... and so is the adapter
    assert r["losses"][-1] < r["losses"][0]


def test_the_file_is_saved_per_layer_under_hf_paths(results):
    mov = ml.read_adapter(results["mov"]["directory"])
    assert {s.path for s in mov.specs} == {
        f"model.layers.{i}.{m}"
        for i in range(2)
        for m in ("self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj")
    }
    kv = next(s for s in mov.specs if s.path.endswith("k_proj"))
    assert kv.heads == 2 and kv.d_out == 2 * 8  # routed per key/value head (GQA)
    down = next(s for s in mov.specs if s.path.endswith("down_proj"))
    assert down.site.tensor == "input" and down.d_out == 64  # scales down_proj's input
    molora = ml.read_adapter(results["molora"]["directory"])
    assert len(molora.specs) == 2 * 7
    assert molora.arrays["model.layers.1.mlp.up_proj.lora_A"].shape == (4, 32, 4)


@pytest.mark.parametrize("method", ["mov", "molora"])
def test_the_unrolled_model_loads_the_scanned_models_file(example, results, method):
    new = example["LlamaForCausalLM"]
    scanned = new(example["LlamaConfig"](), rngs=nnx.Rngs(0))  # the base the file was made on
    unrolled = new(example["LlamaConfig"](scan_layers=False), rngs=nnx.Rngs(1))
    assert isinstance(unrolled.model.layers, nnx.List)
    stacked = nnx.state(scanned.model.layers, nnx.Param)
    for i, layer in enumerate(unrolled.model.layers):
        nnx.update(layer, jax.tree.map(lambda a, i=i: a[i], stacked))
    for name in ("embed_tokens", "norm"):
        nnx.update(getattr(unrolled.model, name), nnx.state(getattr(scanned.model, name)))
    nnx.update(unrolled.lm_head, nnx.state(scanned.lm_head))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same base weights, sampled per layer
        ml.load_adapter(unrolled, results[method]["directory"])
    got = np.asarray(unrolled(results[method]["ids"]))
    np.testing.assert_allclose(got, results[method]["logits"], atol=1e-5, rtol=1e-5)
