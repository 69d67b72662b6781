"""Injection into non-T5 torch models, layer equivalence with the numpy reference, custom
expert kinds, bad input."""

import importlib.util
import pathlib

import attrs
import numpy as np
import pytest
import torch
from hypothesis import given, settings

import mixlight as ml
import mixlight.extend as mlx
from mixlight.testing import check_site, site_cases
from mixlight_torch.layers import AdapterLayer, AdapterSwitch
from tests.torch.conftest import perturb, tiny_t5

ROOT = pathlib.Path(__file__).resolve().parents[2]


def to_torch(a):
    return torch.from_numpy(np.asarray(a))


def to_numpy(t):
    return t.detach().to(torch.float64).numpy()


def run_layer(spec, params, x, h, mask):
    """The torch AdapterLayer on a case: the base is a stand-in returning h."""

    class Given(torch.nn.Module):
        def forward(self, inp):
            return h

    switch = AdapterSwitch()
    if mask is not None:
        switch.masks = {spec.side: mask}
    layer = AdapterLayer(Given(), switch)
    layer.add("default", spec, {n: p.float().numpy() for n, p in params.items()})
    out = layer(x)
    return mlx.SiteResult(out, layer.last_probs, layer.last_logits)


@given(site_cases())
def test_generic_math_on_torch_equals_numpy(case):
    check_site(case, to_torch, to_numpy)


@given(site_cases())
def test_adapter_layer_equals_numpy(case):
    check_site(case, to_torch, to_numpy, run=run_layer)


@settings(max_examples=10)
@given(site_cases())
def test_adapter_layer_bf16_within_tolerance(case):
    """bf16 activations against the reference on the same, rounded, activations: rounding
    them only for the layer could move a top-k choice near a tie, a difference of inputs."""

    def bf16(a):
        t = torch.from_numpy(np.asarray(a))
        return t.to(torch.bfloat16) if t.dtype == torch.float32 and t.ndim == 3 else t

    def rounded(a):
        return bf16(a).float().numpy()

    case = attrs.evolve(case, x=rounded(case.x), h=rounded(case.h))
    check_site(case, bf16, to_numpy, run=run_layer, rtol=2e-2, atol=2e-2)


def test_gpt2_with_user_patterns(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        want = model(ids).logits
    config = ml.MoLoRA(
        4, rank=2, targets=[r"transformer\.h\.\d+\.attn\.c_attn", r"transformer\.h\.\d+\.mlp\.c_fc"]
    )
    ml.inject(model, config)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, want, rtol=0, atol=1e-5)
    perturb(model)
    model(ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    ml.save_adapter(model, tmp_path)
    with torch.no_grad():
        trained = model(ids).logits
    torch.manual_seed(0)
    fresh = transformers.GPT2LMHeadModel(cfg).eval()
    ml.load_adapter(fresh, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, trained, rtol=0, atol=0)
    mov = ml.inject(transformers.GPT2LMHeadModel(cfg), ml.MoV(3, targets=[r".*mlp\.act"]))
    assert mov.mixlight_state.specs[0].d_out == 4 * 32  # sized from the c_proj consumer


def test_bert_mov_on_attention_per_head():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=100,
    )
    model = transformers.BertModel(cfg).eval()
    site = ml.Site(r".*attention\.self\.(key|value)", mlx.Vectors(), heads="auto")
    ml.inject(model, ml.AdapterConfig([site], 4))
    spec = model.mixlight_state.specs[0]
    assert spec.heads == 4 and spec.d_route == 8
    model(torch.randint(0, 100, (2, 5)))
    assert model.encoder.layer[0].attention.self.key.last_probs.shape == (2, 5, 4, 4)


def test_no_match_lists_module_paths():
    with pytest.raises(ValueError, match=r"matched no module .*encoder\.block\.0"):
        ml.inject(tiny_t5(), ml.MoV(4, targets=[r"transformer\.h\.\d+"]))


def test_wrong_module_type_names_path_and_type():
    with pytest.raises(
        TypeError,
        match=r"matched encoder\.block\.0\.layer\.0 of type T5LayerSelfAttention; "
        r"expert kind .low_rank. adapts linear modules",
    ):
        ml.inject(tiny_t5(), ml.MoLoRA(2, targets=[r"encoder\.block\.0\.layer\.0"]))


def test_double_injection_is_refused():
    model = ml.inject(tiny_t5(), ml.MoV(2))
    with pytest.raises(ValueError, match="already carries a mixlight adapter"):
        ml.inject(model, ml.MoV(2))


def test_loading_a_corrupt_file_is_refused(tmp_path):
    model = ml.inject(tiny_t5(), ml.MoV(2))
    ml.save_adapter(model, tmp_path)
    data = (tmp_path / "mixlight_adapter.safetensors").read_bytes()
    (tmp_path / "mixlight_adapter.safetensors").write_bytes(data[:100])
    with pytest.raises(ml.AdapterFileError, match="truncated"):
        ml.load_adapter(tiny_t5(), tmp_path)


def test_wrong_shapes_in_file_are_refused(tmp_path):
    model = ml.inject(tiny_t5(), ml.MoV(2))
    config, specs, arrays = mlx.load_backend("torch").adapter_state(model)
    arrays["encoder.block.0.layer.0.SelfAttention.k.vectors"] = np.ones((2, 5), np.float32)
    with pytest.raises(ml.AdapterFileError, match=r"SelfAttention\.k\.vectors: shape \(2, 5\)"):
        mlx.write_adapter(tmp_path, config, specs, arrays)


def test_nan_inputs_are_reported_with_the_site_path():
    from mixlight_torch import check_finite

    model = ml.inject(tiny_t5(), ml.MoV(2))
    with torch.no_grad():
        model.encoder.block[0].layer[0].SelfAttention.k.base.weight[0, 0] = float("nan")
    ids = torch.randint(2, 100, (1, 4))
    with (
        check_finite(model),
        pytest.raises(FloatingPointError, match=r"encoder\.block\.0\.layer\.0\.SelfAttention\.k"),
    ):
        model(input_ids=ids, decoder_input_ids=ids)


def test_custom_expert_example_runs_in_torch(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "custom_expert", ROOT / "examples/custom_expert.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.chdir(tmp_path)
    example.main()
    saved = ml.read_adapter(tmp_path / "runs/custom_expert")
    assert saved.config.sites[0].expert == example.Biases()
    model = ml.inject(tiny_t5(), example.BiasMixture(3, [r".*DenseReluDense\.wo"]))
    ids = torch.randint(2, 100, (2, 5))
    with torch.no_grad():
        base = tiny_t5()(input_ids=ids, decoder_input_ids=ids).logits
        torch.testing.assert_close(model(input_ids=ids, decoder_input_ids=ids).logits, base)


def test_core_math_compiles_fullgraph_on_torch():
    from mixlight.math import mix_vectors, router_logits, router_probs

    mlx.load_backend("torch")

    def mov(h, w, v):
        return mix_vectors(h, router_probs(router_logits(h, w), 2), v)

    h, w, v = torch.randn(3, 5, 8), torch.randn(8, 4), torch.randn(4, 8)
    compiled = torch.compile(mov, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(h, w, v), mov(h, w, v))
