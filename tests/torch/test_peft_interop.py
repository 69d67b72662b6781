"""PEFT interop against the installed peft: imported (IA)³ / LoRA adapters, upcycled mixtures
and exported adapters give PEFT's logits on tiny random T5s (gated v1.1 and relu v1.0)."""

import json

import numpy as np
import pytest
import torch

import mixlight as ml
import mixlight.extend as mlx
from tests.torch.conftest import batch, perturb, tiny_t5

peft = pytest.importorskip("peft")

VERSIONS = ["1.1", "1.0"]
ATOL = 2e-5  # float32, a different summation order over 4 adapted T5 layers


def logits(model):
    ids, mask, dec = batch()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits.numpy()


def randomise_peft(model, seed=3):
    """Non-zero, non-identity values in every PEFT adapter tensor (as a few training steps
    would leave them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ia3_l" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def peft_dir(tmp_path, version, config, name="peft"):
    """A PEFT adapter saved by PEFT itself, and its logits."""
    model = randomise_peft(peft.get_peft_model(tiny_t5(version, vocab_size=128), config)).eval()
    out = tmp_path / name
    model.save_pretrained(out)
    return out, logits(model)


def ia3_config():
    return peft.IA3Config(target_modules=["k", "v", "wo"], feedforward_modules=["wo"])


def lora_config(version, **kwargs):
    ffn = ["wi_0", "wo"] if version == "1.1" else ["wi", "wo"]
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q", "k", "v", "o", *ffn], **kwargs)


@pytest.mark.parametrize("version", VERSIONS)
def test_ia3_import_gives_peft_logits(tmp_path, version):
    directory, expected = peft_dir(tmp_path, version, ia3_config())
    model = ml.load_peft_adapter(tiny_t5(version, vocab_size=128), directory)
    config, specs = mlx.load_backend("torch").adapter_specs(model)
    assert config.num_experts == 1 and {s.expert.kind for s in specs} == {"vectors"}
    ffn = [s.path for s in specs if s.path.endswith("DenseReluDense.act")]
    assert len(ffn) == 4 and len(specs) == 16  # PEFT's wo input scaling -> the act site
    np.testing.assert_allclose(logits(model), expected, atol=ATOL)
    with ml.disable_adapters(model):
        assert np.abs(logits(model) - expected).max() > 1e-3  # the adapter does something


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "extra",
    [{}, {"use_rslora": True}, {"rank_pattern": {"wo": 2}, "alpha_pattern": {"q": 3}}],
    ids=["plain", "rslora", "patterns"],
)
def test_lora_import_gives_peft_logits(tmp_path, version, extra):
    directory, expected = peft_dir(tmp_path, version, lora_config(version, **extra))
    model = ml.load_peft_adapter(tiny_t5(version, vocab_size=128), directory)
    np.testing.assert_allclose(logits(model), expected, atol=ATOL)
    config, specs = mlx.load_backend("torch").adapter_specs(model)
    ranks = {s.path.rsplit(".", 1)[-1]: s.expert.rank for s in specs}
    assert ranks["wo"] == (2 if extra.get("rank_pattern") else 4) and ranks["q"] == 4


@pytest.mark.parametrize("version", VERSIONS)
def test_upcycled_mov_starts_as_the_peft_ia3(tmp_path, version):
    directory, expected = peft_dir(tmp_path, version, ia3_config())
    model = ml.load_peft_adapter(
        tiny_t5(version, vocab_size=128), directory, upcycle=ml.MoV(4), seed=0
    )
    _, specs, arrays = mlx.load_backend("torch").adapter_state(model)
    vectors = arrays[f"{specs[0].path}.vectors"]
    assert vectors.shape[0] == 4 and np.ptp(vectors, axis=0).max() == 0  # every expert alike
    assert np.abs(vectors - 1).max() > 0.1
    assert np.abs(arrays[f"{specs[0].path}.router"]).max() > 0  # routers initialised as usual
    np.testing.assert_allclose(logits(model), expected, atol=ATOL)
    perturb(model)  # the experts can now diverge: a real mixture
    assert np.abs(logits(model) - expected).max() > 1e-3


@pytest.mark.parametrize("version", VERSIONS)
def test_upcycled_molora_starts_as_the_peft_lora(tmp_path, version):
    directory, expected = peft_dir(tmp_path, version, lora_config(version))
    # alpha 16 / rank 4 = 4, PEFT's scale is 8/4 = 2: folded into lora_B
    model = ml.load_peft_adapter(
        tiny_t5(version, vocab_size=128), directory, upcycle=ml.MoLoRA(3, rank=4, alpha=16)
    )
    np.testing.assert_allclose(logits(model), expected, atol=ATOL)


def test_upcycling_refuses_what_it_would_lose(tmp_path):
    directory, _ = peft_dir(tmp_path, "1.1", lora_config("1.1"))
    fresh = tiny_t5("1.1", vocab_size=128)
    with pytest.raises(ml.AdapterFileError, match=r"LoRA.*holds 'vectors' experts.*ml\.MoLoRA"):
        ml.load_peft_adapter(fresh, directory, upcycle=ml.MoV(4))
    with pytest.raises(ml.AdapterFileError, match=r"has rank 4 .*rank=4"):
        ml.load_peft_adapter(fresh, directory, upcycle=ml.MoLoRA(3, rank=2))
    with pytest.raises(ml.AdapterFileError, match=r"SelfAttention\.\w+ .*matches no site"):
        ml.load_peft_adapter(fresh, directory, upcycle=ml.MoLoRA(3, 4, targets=[r".*\.wo"]))
    assert not mlx.load_backend("torch").is_injected(fresh), "refused before the model is touched"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "make",
    [ml.IA3, lambda: ml.MoV(1), lambda: ml.LoRA(rank=4, alpha=8), lambda: ml.MoLoRA(1, 2, 6.0)],
    ids=["IA3", "MoV-1", "LoRA", "MoLoRA-1"],
)
def test_export_loads_in_peft_with_the_same_logits(tmp_path, version, make):
    model = perturb(ml.inject(tiny_t5(version, vocab_size=128), make(), seed=0), 0.1)
    expected = logits(model)
    out = ml.save_peft_adapter(model, tmp_path / "export", task_type="SEQ_2_SEQ_LM")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] in ("IA3", "LORA")
    loaded = peft.PeftModel.from_pretrained(tiny_t5(version, vocab_size=128), out).eval()
    np.testing.assert_allclose(logits(loaded), expected, atol=ATOL)
    back = ml.load_peft_adapter(tiny_t5(version, vocab_size=128), out)  # and round trip
    np.testing.assert_allclose(logits(back), expected, atol=ATOL)


def test_a_mixture_is_not_exported(tmp_path):
    model = ml.inject(tiny_t5(vocab_size=128), ml.MoV(4), seed=0)
    with pytest.raises(ml.AdapterFileError, match="routes between 4 experts.*one-expert"):
        ml.save_peft_adapter(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "config, problem",
    [
        (lambda: lora_config("1.1", use_dora=True), "use_dora=True"),
        (lambda: lora_config("1.1", bias="lora_only"), "bias='lora_only'"),
        (lambda: peft.LoraConfig(r=2, target_modules=["shared"]), "embedding"),
    ],
    ids=["dora", "bias", "embedding"],
)
def test_what_peft_computes_but_mixlight_cannot_is_refused(tmp_path, config, problem):
    directory, _ = peft_dir(tmp_path, "1.1", config())
    fresh = tiny_t5("1.1", vocab_size=128)
    with pytest.raises(ml.AdapterFileError, match=problem):
        ml.load_peft_adapter(fresh, directory)
    assert not mlx.load_backend("torch").is_injected(fresh)


def test_each_library_recognises_the_others_directory(tmp_path):
    from transformers.utils import find_adapter_config_file

    model = perturb(ml.inject(tiny_t5(vocab_size=128), ml.IA3(), seed=0))
    mine = ml.save_adapter(model, tmp_path / "mine")
    assert find_adapter_config_file(str(mine)) is None  # transformers no longer takes it
    with pytest.raises(ValueError, match="adapter_config.json"):
        peft.PeftModel.from_pretrained(tiny_t5(vocab_size=128), str(mine))
    theirs, _ = peft_dir(tmp_path, "1.1", ia3_config())
    with pytest.raises(ml.AdapterFileError, match=r"PEFT adapter directory.*load_peft_adapter"):
        ml.load_adapter(tiny_t5(vocab_size=128), theirs)


def test_the_pages_peft_section_runs_and_computes_what_it_says(tmp_path, monkeypatch):
    """docs/huggingface.md, section "PEFT interop, files, model cards, the Hub": its python
    blocks run in order (``py`` blocks need a network and are shown, not run)."""
    from tests.docs_pages import ROOT, run_page

    text = (ROOT / "docs/huggingface.md").read_text()
    section = text.split("\n## PEFT interop, files, model cards, the Hub\n", 1)[1]
    page = tmp_path / "section.md"
    page.write_text(section.split("\n## ", 1)[0])
    (tmp_path / "work").mkdir()
    ns = run_page(page, tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")  # where the page's "t5-tiny" checkpoint is
    logits = ns["logits"]
    for ours, theirs in (("model", "ia3"), ("mov", "ia3"), ("in_peft", "lora")):
        diff = (logits(ns[ours]) - logits(ns[theirs])).abs().max().item()
        assert diff < ATOL, (ours, theirs, diff)
    assert (logits(ns["lora"]) - logits(ns["base"]())).abs().max() > 1e-3
    out = tmp_path / "work/out/mov"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "mixlight_adapter.safetensors",
        "mixlight_config.json",
    ]
    assert "## Routing (last forward pass before the save)" in (out / "README.md").read_text()


def test_peft_adapters_load_and_export_by_name(tmp_path):
    ia3_dir, ia3_logits = peft_dir(tmp_path, "1.1", ia3_config(), "ia3")
    lora_dir, lora_logits = peft_dir(tmp_path, "1.1", lora_config("1.1"), "lora")
    model = ml.load_peft_adapter(tiny_t5(vocab_size=128), ia3_dir, adapter_name="ia3")
    ml.load_peft_adapter(model, lora_dir, adapter_name="lora")
    assert ml.adapter_names(model) == ["ia3", "lora"]  # the active one first
    np.testing.assert_allclose(logits(model), ia3_logits, atol=ATOL)
    ml.set_adapter(model, "lora")
    np.testing.assert_allclose(logits(model), lora_logits, atol=ATOL)
    out = ml.save_peft_adapter(model, tmp_path / "ia3-again", adapter_name="ia3")
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "IA3"


def test_the_peft_upcycle_example(tmp_path, monkeypatch):
    import runpy

    from tests.docs_pages import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "examples"))

    example = runpy.run_path(str(ROOT / "examples/peft_upcycle.py"))
    result = example["main"](["--out", str(tmp_path), "--steps", "6", "--experts", "3"])
    assert result["import_gap"] < ATOL and result["upcycle_gap"] < ATOL
    assert result["round_trip_gap"] < ATOL
    assert result["peft_last_loss"] < result["peft_first_loss"]  # PEFT trained
    assert result["mov_first_loss"] < result["peft_first_loss"]  # the MoV starts from it
    assert (tmp_path / "mov" / "README.md").is_file()
