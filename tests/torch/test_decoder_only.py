"""Decoder-only (and encoder-only) Hugging Face families in torch: the presets find each
family's sites from ``config.model_type``, grouped-query attention routes per key/value head,
the FFN site scales the down projection's input, and cached generation equals uncached."""

import json
import re

import numpy as np
import pytest

import mixlight as ml
import mixlight.extend as mlx
from tests.torch.conftest import perturb, tiny_t5
from tests.torch.decoder_models import FAMILIES, logits, tiny, tokens, torch

TORCH = mlx.load_backend("torch")

# What each family's MoV (keys/values + FFN input) and MoLoRA (every attention and MLP linear)
# adapt in one layer: {module name: tensor}.
MOV_SITES = {
    "llama": {"k_proj": "output", "v_proj": "output", "down_proj": "input"},
    "phi3": {"qkv_proj": "output", "down_proj": "input"},
    "gpt2": {"attn.c_attn": "output", "mlp.c_proj": "input"},
    "gpt_neox": {"query_key_value": "output", "dense_4h_to_h": "input"},
    "bert": {"self.key": "output", "self.value": "output", "layer.0.output.dense": "input"},
}
MOLORA_SITES = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
    "gpt2": {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"},
    "gpt_neox": {"query_key_value", "attention.dense", "dense_h_to_4h", "dense_4h_to_h"},
    "bert": {"query", "key", "value", "attention.output.dense", "intermediate.dense",
             "layer.0.output.dense"},
}  # fmt: skip
LAYOUT = {
    f: {"phi3": "phi3", "gpt2": "gpt2", "gpt_neox": "gpt_neox"}.get(f, "llama") for f in FAMILIES
}
LAYOUT.update(bert="bert", roberta="bert")


def first_layer(specs):
    """{path: spec} of the sites in the first block (``.0.``)."""
    return {s.path: s for s in specs if re.search(r"\.0\.", s.path)}


def names_in(paths, names):
    """Each of ``names`` that ends exactly one of ``paths``."""
    return {n for n in names if sum(p.endswith("." + n) for p in paths) == 1}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_presets_take_the_sites_of_the_models_family(tmp_path, family):
    layout = LAYOUT[family]
    model = ml.inject(tiny(family), ml.MoV(3), seed=0)
    config, specs = TORCH.adapter_specs(model)
    assert not config.family_defaults and config == ml.MoV(3, targets=family)
    sites = first_layer(specs)
    expected = MOV_SITES[layout]
    assert names_in(sites, expected) == set(expected), sorted(sites)
    for name, tensor in expected.items():
        spec = next(s for p, s in sites.items() if p.endswith("." + name))
        assert spec.site.tensor == tensor
        if tensor == "input":  # the down projection's input width, not its output's
            assert spec.d_in == spec.d_out == 64 and spec.heads is None
        else:
            assert spec.heads is not None  # per-head routers on the keys and values
    lora = ml.inject(tiny(family), ml.MoLoRA(2, rank=2), seed=0)
    lora_sites = first_layer(TORCH.adapter_specs(lora)[1])
    assert names_in(lora_sites, MOLORA_SITES[layout]) == MOLORA_SITES[layout]
    assert len(lora_sites) == len(MOLORA_SITES[layout])

    # The saved file holds the concrete sites and loads into a fresh model of the family.
    perturb(model)
    ml.save_adapter(model, tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "mixlight_config.json").read_text())
    saved = meta["config"]
    assert "family_defaults" not in saved
    assert {s["pattern"] for s in saved["sites"]} == {s.pattern for s in config.sites}
    back = ml.load_adapter(tiny(family), tmp_path / "a")
    np.testing.assert_allclose(logits(back), logits(model), atol=1e-5)
    with ml.disable_adapters(model):
        assert np.abs(logits(model) - logits(back)).max() > 1e-4  # the adapter does something


def test_t5_is_unchanged_by_family_defaults(tmp_path):
    auto, explicit = ml.MoV(4), ml.MoV(4, targets="t5")
    assert auto.family_defaults and not explicit.family_defaults
    assert auto == explicit and auto.sites == explicit.sites  # the T5 layout, as before
    for i, cfg in enumerate((auto, explicit)):
        ml.save_adapter(ml.inject(tiny_t5(), cfg, seed=0), tmp_path / str(i))
    files = [(tmp_path / str(i) / "mixlight_config.json").read_bytes() for i in range(2)]
    assert files[0] == files[1]  # byte for byte
    lora = ml.inject(tiny_t5(), ml.LoRA(2), seed=0)
    assert TORCH.adapter_specs(lora)[0].to_dict() == ml.LoRA(2, targets="t5").to_dict()


def test_an_unknown_family_is_refused_with_its_paths_and_the_fix():
    config = transformers_config("OPTConfig", hidden_size=32, ffn_dim=64, word_embed_proj_dim=32)
    model = __import__("transformers").OPTForCausalLM(config)
    with pytest.raises(ValueError, match=r"model_type 'opt'") as err:
        ml.inject(model, ml.MoV(2))
    message = str(err.value)
    assert "targets=" in message and "decoder.layers.0.self_attn.k_proj" in message
    assert "mixlight_state" not in model.__dict__
    fixed = ml.inject(model, ml.MoV(2, targets=[r".*self_attn\.(k_proj|v_proj)"]), seed=0)
    assert len(TORCH.adapter_specs(fixed)[1]) == 4


def transformers_config(name, **kwargs):
    base = dict(vocab_size=128, num_hidden_layers=2, num_attention_heads=4)
    return getattr(__import__("transformers"), name)(**{**base, **kwargs})


@pytest.mark.parametrize(
    "family, kv_heads, head_dim", [("llama", 2, 8), ("qwen3", 2, 16), ("gemma", 1, 16)]
)
def test_grouped_query_keys_and_values_route_per_key_value_head(family, kv_heads, head_dim):
    model = ml.inject(tiny(family), ml.MoV(3), seed=0)
    k = model.model.layers[0].self_attn.k_proj
    assert k.spec.heads == kv_heads and k.spec.d_out == kv_heads * head_dim
    assert tuple(k.adapter["router"].shape) == (head_dim, 3)  # one router shared by the heads
    assert tuple(k.adapter["vectors"].shape) == (3, kv_heads * head_dim)  # flat, head-major
    model(input_ids=tokens())
    assert tuple(k.last_probs.shape) == (2, 7, kv_heads, 3)


def test_the_ffn_site_scales_the_down_projections_input():
    model = ml.inject(tiny("llama"), ml.IA3(), seed=0)
    layer = model.model.layers[0].mlp.down_proj
    scale = torch.linspace(0.5, 1.5, 64)
    with torch.no_grad():
        layer.adapter["vectors"].copy_(scale[None])
    seen = {}
    handle = layer.base.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    mlp = model.model.layers[0].mlp
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        out = mlp(x)
        expected = mlp.down_proj.base(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x) * scale)
    handle.remove()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(seen["x"], (mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)) * scale)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_input_sites_merge_into_the_weights(family):
    model = perturb(ml.inject(tiny(family), ml.IA3(), seed=0))
    expected = logits(model)
    plain = ml.merge_and_unload(model)
    assert "mixlight_state" not in plain.__dict__
    np.testing.assert_allclose(logits(plain), expected, atol=1e-5)


def test_a_mixed_batch_runs_each_examples_input_site():
    model = ml.inject(tiny("llama"), ml.MoV(3), seed=0, adapter_name="a")
    ml.inject(model, ml.MoV(3), seed=1, adapter_name="b")
    for name in ("a", "b"):
        ml.set_adapter(model, name)
        perturb(model, seed=len(name) + ord(name))
    ids = tokens(batch_size=3)
    rows = {}
    for name in ("a", "b"):
        ml.set_adapter(model, name)
        rows[name] = logits(model, ids)
    with ml.disable_adapters(model):
        rows["__base__"] = logits(model, ids)
    names = ["b", "__base__", "a"]
    with ml.adapter_per_example(model, names):
        mixed = logits(model, ids)
    for i, name in enumerate(names):
        np.testing.assert_allclose(mixed[i], rows[name][i], atol=1e-5)


def randomise(model, seed=5):
    """Nonzero, non-identity adapter values everywhere (vectors around 1, routers and LoRA
    matrices large enough that routing changes the output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                base = 1.0 if name.endswith("vectors") else 0.0
                p.copy_(base + 0.5 * torch.randn(p.shape, generator=g))
    return model


def generate(model, ids, use_cache):
    with torch.no_grad():
        return model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=6,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=0,
        )


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("preset", ["mov", "molora"])
def test_cached_generation_equals_uncached_under_token_routing(family, preset):
    config = ml.MoV(4) if preset == "mov" else ml.MoLoRA(4, rank=2)
    model = randomise(ml.inject(tiny(family), config, seed=0))
    ids = tokens(length=5)
    cached, uncached = generate(model, ids, True), generate(model, ids, False)
    assert cached.shape == (2, 11)
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)
    # Per-token routing: the last step's logits from the cache equal the full pass's.
    with torch.no_grad():
        full = model(input_ids=cached).logits[:, -1]
        prefix = model(input_ids=cached[:, :-1], use_cache=True)
        step = model(input_ids=cached[:, -1:], cache=prefix.cache).logits[:, -1]
        with ml.disable_adapters(model):
            base = model(input_ids=cached).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)
    assert (full - base).abs().max() > 1e-2  # the routed adapter changes the logits


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sequence_routing_under_a_cache_is_refused(family):
    model = randomise(ml.inject(tiny(family), ml.MoV(4, routing="sequence"), seed=0))
    ids = tokens(length=5)
    with pytest.raises(ValueError, match=r"sequence routing .* key/value cache .*use_cache=False"):
        generate(model, ids, True)
    out = generate(model, ids, False)  # uncached decoding routes each step on the whole prefix
    assert out.shape == (2, 11)


def test_the_presets_page_runs_as_written(tmp_path):
    from tests.docs_pages import run_page

    ns = run_page("docs/presets.md", tmp_path)
    config = ml.read_adapter(tmp_path / "out/mov-llama").config
    assert config == ml.MoV(4, targets="llama") and ns["ffn"].tensor == "input"


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_sequence_routing_pools_over_the_real_tokens_only(family):
    """BERT's ``get_encoder()`` is its layer stack, called inside the model with a 4-D mask:
    it must not take the call's padding mask away from the sequence-routed sites."""
    model = randomise(ml.inject(tiny(family), ml.MoV(4, routing="sequence"), seed=0))
    ids = tokens(length=6)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    other = ids.clone()
    other[0, -2:] = 5  # other padding tokens: the real tokens must route as before
    probs, outs = [], []
    for batch in (ids, other):
        with torch.no_grad():
            outs.append(model(input_ids=batch, attention_mask=mask).logits[0, :4])
        probs.append({p: s["mean_prob"] for p, s in ml.routing_stats(model).items()})
    for path in probs[0]:
        np.testing.assert_allclose(probs[1][path], probs[0][path], atol=1e-6, err_msg=path)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
