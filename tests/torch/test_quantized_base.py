"""Adapters on a quantized base model (CPU): torchao int8 weight-only and bitsandbytes 8-bit /
4-bit Llamas take a MoV (float32 adapters, frozen quantized weights), train, save and load.
Skipped unless torchao / bitsandbytes are installed (neither is a mixlight dependency)."""

import numpy as np
import pytest

import mixlight as ml
from tests.torch.decoder_models import FAMILIES, logits, tiny, tokens, torch, transformers


def train(model, steps=3):
    """A few AdamW steps on the adapter; the losses, after checking every adapter parameter
    (and only those) gets a gradient."""
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(p.dtype == torch.float32 for p in params)
    optimiser = torch.optim.AdamW(params, lr=5e-2)
    ids, losses = tokens(), []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        optimiser.step()
        optimiser.zero_grad()
        losses.append(loss.item())
    return losses


def test_a_torchao_int8_llama_trains_saves_and_loads_a_mov(tmp_path):
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    def quantized():
        model = tiny("llama")
        quantize_(model, Int8WeightOnlyConfig())
        return model

    model = ml.inject(quantized(), ml.MoV(4), seed=0)
    down = model.model.layers[0].mlp.down_proj
    assert type(down.base.weight).__module__.startswith("torchao")  # still quantized
    assert down.spec.d_in == 64 and down.spec.site.tensor == "input"
    losses = train(model)
    assert losses[-1] < losses[0]
    ml.save_adapter(model, tmp_path / "a")
    back = ml.load_adapter(quantized(), tmp_path / "a")
    np.testing.assert_allclose(logits(back), logits(model), atol=1e-6)
    with pytest.raises(ValueError, match=r"base weight is quantized \(Int8Tensor\)"):
        ml.merge_and_unload(model)


@pytest.mark.parametrize("bits", [8, 4])
def test_a_bitsandbytes_llama_trains_saves_and_loads_a_mov(tmp_path, bits):
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("accelerate")
    config_class, model_class, kwargs = FAMILIES["llama"]
    # 128 wide: bitsandbytes' CPU 4-bit kernels need a layer at least one block (64) wide.
    tiny("llama", hidden_size=128, intermediate_size=256).save_pretrained(tmp_path / "base")
    quantization = transformers.BitsAndBytesConfig(**{f"load_in_{bits}bit": True})

    def quantized():
        return getattr(transformers, model_class).from_pretrained(
            tmp_path / "base", quantization_config=quantization, device_map="cpu"
        )

    model = ml.inject(quantized(), ml.MoV(4), seed=0)
    losses = train(model)
    assert losses[-1] < losses[0]
    ml.save_adapter(model, tmp_path / "a")
    back = ml.load_adapter(quantized(), tmp_path / "a")
    np.testing.assert_allclose(logits(back), logits(model), atol=1e-5)
