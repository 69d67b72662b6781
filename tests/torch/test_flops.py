"""``mixlight_tune.flops`` counts a forward pass as torch's own FLOP counter does on the HF
model of the same config (T5 with cross-attention; a GQA Llama), and the run's metrics carry
the model TFLOP/s (MFU stays ``None`` on a CPU)."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from mixlight_tune.flops import forward_flops, row_flops, utilisation  # noqa: E402


def counted(model, **inputs) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    return counter.get_total_flops()


@pytest.mark.parametrize("gated", [True, False])
def test_t5_forward_flops_are_torchs_count(gated):
    config = transformers.T5Config(
        vocab_size=96, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2,
        num_decoder_layers=3, feed_forward_proj="gated-gelu" if gated else "relu",
        attn_implementation="eager",
    )  # fmt: skip
    model = transformers.T5ForConditionalGeneration(config).eval()
    source, target = 11, 5
    want = counted(
        model,
        input_ids=torch.ones(1, source, dtype=torch.long),
        decoder_input_ids=torch.ones(1, target, dtype=torch.long),
    )
    assert forward_flops(config.to_dict(), source, target) == pytest.approx(want, rel=1e-6)


def test_a_decoder_only_forward_is_torchs_count():
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager",
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    want = counted(model, input_ids=torch.ones(1, 13, dtype=torch.long))
    assert forward_flops(config.to_dict(), 9, 4) == pytest.approx(want, rel=1e-6)


def test_training_counts_input_gradients_and_full_tuning_weight_gradients():
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    ).to_dict()  # fmt: skip
    forward = forward_flops(config, 9, 4)
    assert row_flops(config, full=False)(9, 4) == 2 * forward
    assert row_flops(config, full=True)(9, 4) == 3 * forward


def test_mfu_needs_a_known_device():
    assert utilisation(1e12, None, "bf16", 1) is None
    assert utilisation(1e12, "Some CPU", "bf16", 1) is None
    assert utilisation(98.9e12, "NVIDIA H100 80GB HBM3", "bf16", 2) == pytest.approx(0.05)
