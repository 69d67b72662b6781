"""PEFT interop on decoder-only (and encoder-only) families, against the installed peft: a
PEFT feed-forward module's (IA)³ input scaling is the mixlight site that adapts that module's
input (``Site(tensor="input")``), both ways, with PEFT's logits on tiny random Llama, Qwen2,
Gemma, Phi-3, GPT-2 (``Conv1D`` layers), GPT-NeoX and BERT."""

import json

import numpy as np
import pytest

import mixlight as ml
import mixlight.extend as mlx
from tests.torch.conftest import perturb, tiny_t5
from tests.torch.decoder_models import logits, tiny, torch

peft = pytest.importorskip("peft")

TORCH = mlx.load_backend("torch")
ATOL = 2e-5
FAMILIES = ["llama", "qwen2", "gemma", "phi3", "gpt2", "gpt_neox", "bert"]
# PEFT has no default (IA)³ or LoRA modules for Phi-3 (fused qkv_proj and gate_up_proj).
PEFT_IA3 = {
    "phi3": dict(target_modules=["qkv_proj", "down_proj"], feedforward_modules=["down_proj"])
}
PEFT_LORA = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "v_proj", "down_proj"],
    "gemma": ["k_proj", "o_proj", "up_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "bert": ["query", "value", "dense"],
}  # fmt: skip


def randomise_peft(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ia3_l" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def peft_dir(tmp_path, family, config, name="peft"):
    """A PEFT adapter saved by PEFT itself on the family's tiny model, and its logits."""
    model = randomise_peft(peft.get_peft_model(tiny(family), config)).eval()
    model.save_pretrained(tmp_path / name)
    return tmp_path / name, logits(model)


@pytest.mark.filterwarnings("ignore::UserWarning")  # PEFT's fan_in_fan_out note for Conv1D
@pytest.mark.parametrize("family", FAMILIES)
def test_ia3_import_and_export_give_peft_logits(tmp_path, family):
    # PEFT's own (IA)³ layout for the family (its default modules where it has them).
    directory, expected = peft_dir(tmp_path, family, peft.IA3Config(**PEFT_IA3.get(family, {})))
    model = ml.load_peft_adapter(tiny(family), directory)
    np.testing.assert_allclose(logits(model), expected, atol=ATOL)
    peft_config = json.loads((directory / "adapter_config.json").read_text())
    feedforward = set(peft_config["feedforward_modules"])
    _, specs = TORCH.adapter_specs(model)
    inputs = {s.path.rsplit(".", 1)[-1] for s in specs if s.site.tensor == "input"}
    assert inputs and {p.rsplit(".", 1)[-1] for p in feedforward} >= inputs

    # mixlight's (IA)³ preset for the family, exported, is loaded by PEFT with its logits.
    mine = perturb(ml.inject(tiny(family), ml.IA3(), seed=0))
    out = ml.save_peft_adapter(mine, tmp_path / "export")
    exported = json.loads((out / "adapter_config.json").read_text())
    assert exported["feedforward_modules"]  # the FFN site is PEFT's feed-forward input
    loaded = peft.PeftModel.from_pretrained(tiny(family), out).eval()
    np.testing.assert_allclose(logits(loaded), logits(mine), atol=ATOL)
    back = ml.load_peft_adapter(tiny(family), out)
    np.testing.assert_allclose(logits(back), logits(mine), atol=ATOL)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("family", FAMILIES)
def test_lora_import_and_export_give_peft_logits(tmp_path, family):
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=PEFT_LORA[family])
    directory, expected = peft_dir(tmp_path, family, config)
    model = ml.load_peft_adapter(tiny(family), directory)
    np.testing.assert_allclose(logits(model), expected, atol=ATOL)

    mine = perturb(ml.inject(tiny(family), ml.LoRA(2), seed=0))
    out = ml.save_peft_adapter(mine, tmp_path / "export")
    loaded = peft.PeftModel.from_pretrained(tiny(family), out).eval()
    np.testing.assert_allclose(logits(loaded), logits(mine), atol=ATOL)


def test_a_peft_ia3_upcycles_into_the_familys_mov(tmp_path):
    directory, expected = peft_dir(tmp_path, "llama", peft.IA3Config())  # k, v, down_proj
    model = ml.load_peft_adapter(tiny("llama"), directory, upcycle=ml.MoV(4), seed=0)
    config, specs = TORCH.adapter_specs(model)
    assert config == ml.MoV(4, targets="llama") and not config.family_defaults
    np.testing.assert_allclose(logits(model), expected, atol=ATOL)  # every expert = PEFT's


def test_upcycling_an_input_scaling_into_an_output_site_is_refused(tmp_path):
    directory, _ = peft_dir(tmp_path, "llama", peft.IA3Config())
    wrong = ml.MoV(4, targets=[r".*self_attn\.(k_proj|v_proj)", r".*mlp\.down_proj"])
    fresh = tiny("llama")
    with pytest.raises(ml.AdapterFileError, match=r"down_proj scales its module's input .*"):
        ml.load_peft_adapter(fresh, directory, upcycle=wrong)
    assert not TORCH.is_injected(fresh)


def test_a_t5_feedforward_module_other_than_wo_imports_as_an_input_site(tmp_path):
    config = peft.IA3Config(target_modules=["k", "wi_0"], feedforward_modules=["wi_0"])
    model = randomise_peft(peft.get_peft_model(tiny_t5("1.1", vocab_size=128), config)).eval()
    model.save_pretrained(tmp_path / "p")
    ids = torch.randint(2, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    dec = ids[:, :4]

    def t5_logits(m):
        with torch.no_grad():
            return m(input_ids=ids, decoder_input_ids=dec).logits.numpy()

    back = ml.load_peft_adapter(tiny_t5("1.1", vocab_size=128), tmp_path / "p")
    _, specs = TORCH.adapter_specs(back)
    assert {s.site.tensor for s in specs if s.path.endswith("wi_0")} == {"input"}
    np.testing.assert_allclose(t5_logits(back), t5_logits(model), atol=ATOL)
