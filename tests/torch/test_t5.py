"""mixlight on HF T5 (v1.0 and v1.1): identity at init, generation with cache, save/load,
PEFT oracles, torch.compile, bf16 autocast, state_dict round trips."""

import copy

import pytest
import torch

import mixlight as ml
from tests.torch.conftest import batch, perturb, tiny_t5, tiny_t5_config

VERSIONS = ["1.0", "1.1"]


def logits(model, ids, mask, dec):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "make", [lambda: ml.MoV(10), lambda: ml.MoLoRA(4, 2), lambda: ml.MoV(4, router=ml.TopK(2))]
)
def test_fresh_adapter_leaves_logits_unchanged(version, make):
    model = tiny_t5(version)
    ids, mask, dec = batch()
    want = logits(model, ids, mask, dec)
    ml.inject(model, make())
    # Merged vectors are sum(p) = 1 up to float32 rounding at each of 16 sites: float32-level
    # relative error on logits of size ~10 is allowed, nothing more.
    torch.testing.assert_close(logits(model, ids, mask, dec), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("version", VERSIONS)
def test_hook_points_match_the_paper(version):
    model = ml.inject(tiny_t5(version), ml.MoV(10))
    paths = set(
        ml.read_adapter
        if False
        else model.mixlight_state.specs and (s.path for s in model.mixlight_state.specs)
    )
    assert "encoder.block.0.layer.0.SelfAttention.k" in paths
    assert "decoder.block.1.layer.1.EncDecAttention.v" in paths
    assert "decoder.block.1.layer.2.DenseReluDense.act" in paths
    assert len(paths) == 2 * 3 + 2 * 5
    spec = next(s for s in model.mixlight_state.specs if s.path.endswith("SelfAttention.k"))
    assert spec.heads == 4 and spec.param_specs()["router"].shape == (8, 10)
    molora = ml.inject(tiny_t5(version), ml.MoLoRA(10))
    ffn = {s.path.rsplit(".", 1)[1] for s in molora.mixlight_state.specs if "Dense" in s.path}
    assert ffn == ({"wi_0", "wo"} if version == "1.1" else {"wi", "wo"})


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("make", [lambda: ml.MoV(10), lambda: ml.MoLoRA(4, 2)])
def test_greedy_generation_with_cache_equals_recomputation(version, make):
    model = perturb(ml.inject(tiny_t5(version), make()), scale=0.5)
    ids, mask, _ = batch()
    cached = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=8,
        do_sample=False,
        num_beams=1,
        use_cache=True,
    )
    dec = torch.full((ids.shape[0], 1), model.config.decoder_start_token_id)
    for _ in range(cached.shape[1] - 1):
        step = logits(model, ids, mask, dec)[:, -1].argmax(-1, keepdim=True)
        dec = torch.cat([dec, step], 1)
    done = (dec == model.config.eos_token_id).cumsum(1) > 0
    shifted = torch.cat([torch.zeros_like(done[:, :1]), done[:, :-1]], 1)
    dec = dec.masked_fill(shifted, model.config.pad_token_id)  # generate pads after eos
    torch.testing.assert_close(cached, dec[:, : cached.shape[1]])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "make", [lambda: ml.MoV(6), lambda: ml.MoLoRA(3, 2), lambda: ml.IA3(), lambda: ml.LoRA(4)]
)
def test_save_load_gives_identical_logits(tmp_path, version, make):
    model = perturb(ml.inject(tiny_t5(version), make()))
    ids, mask, dec = batch()
    want = logits(model, ids, mask, dec)
    ml.save_adapter(model, tmp_path / "a")
    fresh = tiny_t5(version)  # same seed: same base weights
    ml.load_adapter(fresh, tmp_path / "a")
    torch.testing.assert_close(logits(fresh, ids, mask, dec), want, rtol=0, atol=0)
    assert ml.trainable_parameters(fresh).trainable == ml.trainable_parameters(model).trainable


def test_load_refuses_other_model_and_other_config(tmp_path):
    model = ml.inject(tiny_t5("1.1"), ml.MoV(4))
    ml.save_adapter(model, tmp_path)
    bigger = tiny_t5("1.1", d_ff=96)
    with pytest.raises(ml.AdapterFileError, match=r"different base model .*DenseReluDense.act"):
        ml.load_adapter(bigger, tmp_path)
    other = ml.inject(tiny_t5("1.1"), ml.MoV(6))
    with pytest.raises(ValueError, match="already carries a different adapter"):
        ml.load_adapter(other, tmp_path)


def test_disable_adapters_runs_the_base_model():
    base = tiny_t5("1.1")
    ids, mask, dec = batch()
    want = logits(base, ids, mask, dec)
    model = perturb(ml.inject(base, ml.MoV(4)))
    assert (logits(model, ids, mask, dec) - want).abs().max() > 1e-3
    with ml.disable_adapters(model):
        torch.testing.assert_close(logits(model, ids, mask, dec), want)
    assert (logits(model, ids, mask, dec) - want).abs().max() > 1e-3


def test_remove_adapters_restores_modules():
    from mixlight_torch import remove_adapters

    base = tiny_t5("1.1")
    names = [n for n, _ in base.named_modules()]
    model = remove_adapters(ml.inject(base, ml.MoLoRA(2, 2)))
    assert [n for n, _ in model.named_modules()] == names
    ml.inject(model, ml.MoV(2))  # and it can take a new adapter


def _peft_ia3(model):
    from peft import IA3Config, get_peft_model

    cfg = IA3Config(
        target_modules=["k", "v", "wo"], feedforward_modules=["wo"], init_ia3_weights=False
    )
    return get_peft_model(model, cfg)


@pytest.mark.parametrize("version", VERSIONS)
def test_one_expert_mov_equals_peft_ia3(version):
    pytest.importorskip("peft")
    ids, mask, dec = batch()
    peft_model = _peft_ia3(tiny_t5(version)).eval()
    ours = ml.inject(tiny_t5(version), ml.MoV(1))
    layers = {p: m for p, m in ours.named_modules() if hasattr(m, "adapter")}
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if not hasattr(module, "ia3_l"):
                continue
            path = name.removeprefix("base_model.model.")
            vec = module.ia3_l["default"].detach().reshape(-1)
            if path.endswith("wo"):
                path = path[: -len("wo")] + "act"
            layers[path].adapter["vectors"].copy_(vec[None])
    torch.testing.assert_close(
        logits(ours, ids, mask, dec), logits(peft_model, ids, mask, dec), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_one_expert_molora_equals_peft_lora(version):
    peft = pytest.importorskip("peft")
    ids, mask, dec = batch()
    targets = ["q", "k", "v", "o", "wi_0" if version == "1.1" else "wi", "wo"]
    torch.manual_seed(3)
    peft_model = peft.get_peft_model(
        tiny_t5(version),
        peft.LoraConfig(
            r=4, lora_alpha=16, target_modules=targets, lora_dropout=0.0, init_lora_weights=False
        ),
    ).eval()
    ours = ml.inject(tiny_t5(version), ml.MoLoRA(1, rank=4, alpha=16))
    base = logits(tiny_t5(version), ids, mask, dec)
    layers = {p: m for p, m in ours.named_modules() if hasattr(m, "adapter")}
    copied = 0
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                module.lora_B["default"].weight.mul_(0.2)  # a trained-size delta, not O(logits)
                layer = layers[name.removeprefix("base_model.model.")]
                layer.adapter["lora_A"].copy_(module.lora_A["default"].weight.T[None])
                layer.adapter["lora_B"].copy_(module.lora_B["default"].weight.T[None])
                copied += 1
    assert copied == len(layers)
    want = logits(peft_model, ids, mask, dec)
    assert (want - base).abs().max() > 0.1  # the adapter really changes the model
    torch.testing.assert_close(logits(ours, ids, mask, dec), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["MoV", "MoLoRA"])
def test_torch_compile_fullgraph_on_injected_t5(method: str):
    config = ml.MoV(4) if method == "MoV" else ml.MoLoRA(4, 2)
    model = perturb(ml.inject(tiny_t5("1.1"), config))
    ids, mask, dec = batch()
    want = logits(model, ids, mask, dec)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        got = compiled(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_training_step_keeps_router_float32():
    model = perturb(ml.inject(tiny_t5("1.1"), ml.MoLoRA(4, 2)))
    ids, mask, dec = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, labels=dec)
    out.loss.backward()
    layer = model.encoder.block[0].layer[0].SelfAttention.q
    assert layer.last_logits.dtype == torch.float32
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_bf16_model_keeps_its_dtype():
    model = ml.inject(tiny_t5("1.1").to(torch.bfloat16), ml.MoV(4))
    ids, mask, dec = batch()
    out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert out.dtype == torch.bfloat16
    assert model.encoder.block[0].layer[0].SelfAttention.k.last_probs.dtype == torch.float32


def test_state_dict_round_trip():
    model = perturb(ml.inject(tiny_t5("1.1"), ml.MoV(3)))
    ids, mask, dec = batch()
    other = ml.inject(tiny_t5("1.1", seed=5), ml.MoV(3))
    other.load_state_dict(copy.deepcopy(model.state_dict()))
    torch.testing.assert_close(logits(other, ids, mask, dec), logits(model, ids, mask, dec))


def test_aux_losses_and_stats_are_per_model():
    router = ml.TopK(2, load_balance_weight=0.01, z_loss_weight=0.001)
    a = ml.inject(tiny_t5("1.1"), ml.MoV(4, router=router))
    b = ml.inject(tiny_t5("1.1"), ml.MoV(4))
    ids, mask, dec = batch()
    a(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
    loss = ml.aux_losses(a)
    assert loss.requires_grad and loss.item() > 0
    loss.backward()
    assert ml.routing_stats(b) == {}  # b has not run
    assert float(ml.aux_losses(b)) == 0.0
    stats = ml.routing_stats(a)
    assert len(stats) == 16 and all(abs(s["mean_prob"].sum() - 1) < 1e-5 for s in stats.values())


def test_sequence_routing_uses_the_attention_mask():
    model = perturb(ml.inject(tiny_t5("1.1"), ml.MoV(4, routing="sequence")))
    ids, mask, dec = batch()
    short = logits(model, ids[:1, :5], mask[:1, :5], dec[:1])
    padded_ids = ids[:1].clone()
    padded_ids[0, 5:] = 7  # content under padding must not change anything
    full = logits(model, padded_ids, mask[:1], dec[:1])
    torch.testing.assert_close(full, short, rtol=1e-5, atol=1e-5)


def test_encoder_only_t5():
    from transformers import T5EncoderModel

    torch.manual_seed(0)
    model = T5EncoderModel(tiny_t5_config("1.1")).eval()
    ids, mask, _ = batch()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
    ml.inject(model, ml.MoV(4))
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert len(model.mixlight_state.specs) == 2 * 3
