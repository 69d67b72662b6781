"""PEFT import and export on tiny torch T5s, with the installed peft as the oracle: bf16 /
f16 / f64 adapters import with PEFT's logits; a load refused after injection (a weight of
another base model's shape) leaves the model exactly as it was, other named adapters and
trainable flags included, and the next correct load works; two sites that would share one
PEFT key are refused on export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import mixlight as ml
import mixlight.extend as mlx
from tests.torch.conftest import perturb, tiny_t5
from tests.torch.test_peft_interop import ATOL, ia3_config, logits, lora_config, peft_dir

peft = pytest.importorskip("peft")

OTHER_D_FF = 48  # a base model of another feed-forward width than tiny_t5's 64


def fresh():
    return tiny_t5("1.1", vocab_size=128)


def snapshot(model):
    """Everything a refused load must leave as it was: the module tree, each parameter's
    values and requires_grad, and the mixlight adapters (names and values)."""
    backend = mlx.load_backend("torch")
    names = backend.adapter_names(model) if backend.is_injected(model) else []
    return {
        "modules": [(name, type(m).__name__) for name, m in model.named_modules()],
        "params": {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()},
        "adapters": {n: backend.adapter_state(model, n)[2] for n in names},
        "names": names,
    }


def assert_same(before, after):
    assert after["modules"] == before["modules"]
    assert after["names"] == before["names"]
    assert after["params"].keys() == before["params"].keys()
    for name, (value, trainable) in before["params"].items():
        assert after["params"][name][1] == trainable, name
        assert torch.equal(after["params"][name][0], value), name
    for name, arrays in before["adapters"].items():
        for key, value in arrays.items():
            np.testing.assert_array_equal(after["adapters"][name][key], value)


@pytest.fixture
def other_base_peft(tmp_path):
    """A PEFT (IA)³ adapter trained on a T5 of another d_ff: its wo input scaling does not
    fit tiny_t5's (found only once the model's sites are known, after injection)."""
    peft_model = peft.get_peft_model(tiny_t5("1.1", vocab_size=128, d_ff=OTHER_D_FF), ia3_config())
    peft_model.save_pretrained(tmp_path / "other")
    return tmp_path / "other"


WRONG_SHAPE = r"DenseReluDense\.wo: its vectors has shape \(48,\), the model's .* needs \(64,\)"


@pytest.mark.parametrize("upcycle", [None, ml.MoV(3)], ids=["one-expert", "upcycled"])
def test_a_refused_load_leaves_a_fresh_model_as_it_was(tmp_path, other_base_peft, upcycle):
    model = fresh()
    before = snapshot(model)
    with pytest.raises(ml.AdapterFileError, match=WRONG_SHAPE):
        ml.load_peft_adapter(model, other_base_peft, upcycle=upcycle, seed=0)
    assert not mlx.load_backend("torch").is_injected(model)
    assert_same(before, snapshot(model))  # not injected, base not frozen
    assert all(p.requires_grad for p in model.parameters())
    right, expected = peft_dir(tmp_path, "1.1", ia3_config(), "right")
    ml.load_peft_adapter(model, right)  # the next, correct load is not refused
    np.testing.assert_allclose(logits(model), expected, atol=ATOL)


def test_a_refused_named_load_keeps_the_other_adapters(tmp_path, other_base_peft):
    model = perturb(ml.inject(fresh(), ml.LoRA(rank=2), seed=0, adapter_name="mine"))
    lora_dir, _ = peft_dir(tmp_path, "1.1", lora_config("1.1"), "lora")
    ml.load_peft_adapter(model, lora_dir, adapter_name="theirs")
    model.shared.weight.requires_grad_(True)  # trainable flags the user chose: the base's
    next(p for n, p in model.named_parameters() if "lora_A" in n).requires_grad_(False)
    expected = logits(model)
    before = snapshot(model)
    for name in ("new", "theirs", None):
        with pytest.raises(ValueError):
            ml.load_peft_adapter(model, other_base_peft, adapter_name=name)
        assert_same(before, snapshot(model))
    np.testing.assert_allclose(logits(model), expected, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("make", [ia3_config, lambda: lora_config("1.1")], ids=["IA3", "LoRA"])
def test_a_low_or_high_precision_peft_adapter_imports_with_pefts_logits(tmp_path, dtype, make):
    directory, _ = peft_dir(tmp_path, "1.1", make())
    weights = directory / "adapter_model.safetensors"
    tensors = {n: t.to(dtype) for n, t in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    expected = logits(peft.PeftModel.from_pretrained(fresh(), directory).eval())
    model = ml.load_peft_adapter(fresh(), directory)
    np.testing.assert_allclose(logits(model), expected, atol=ATOL)


def test_an_activation_and_the_linear_it_feeds_are_not_exported_onto_one_key(tmp_path):
    """T5's DenseReluDense.act site scales wo's input, a wo site scales wo's output: PEFT has
    one (IA)³ vector for wo, scaling one side, and no single vector computes both."""
    both = ml.AdapterConfig(
        [ml.Site(r".*DenseReluDense\.(?:act|wo)", mlx.Vectors())], 1, method="IA3-act-and-wo"
    )
    model = perturb(ml.inject(tiny_t5("1.0", vocab_size=128), both, seed=0), 0.1)
    with pytest.raises(
        ml.AdapterFileError,
        match=r"sites decoder\.block\.0\.layer\.2\.DenseReluDense\.act and "
        r"decoder\.block\.0\.layer\.2\.DenseReluDense\.wo both export to PEFT's \(IA\)³ "
        r"vector of decoder\.block\.0\.layer\.2\.DenseReluDense\.wo.*only one of these sites",
    ):
        ml.save_peft_adapter(model, tmp_path / "both")
    assert not (tmp_path / "both").exists()


@pytest.mark.parametrize("site", ["act", "wo"])
def test_each_of_the_two_exports_alone_with_pefts_logits(tmp_path, site):
    """The two sites map to different sides of wo's PEFT vector: PEFT computes each."""
    config = ml.AdapterConfig(
        [ml.Site(rf".*DenseReluDense\.{site}", mlx.Vectors())], 1, method=f"IA3-{site}"
    )
    model = perturb(ml.inject(tiny_t5("1.0", vocab_size=128), config, seed=0), 0.3)
    out = ml.save_peft_adapter(model, tmp_path / site)
    loaded = peft.PeftModel.from_pretrained(tiny_t5("1.0", vocab_size=128), out).eval()
    np.testing.assert_allclose(logits(loaded), logits(model), atol=ATOL)
