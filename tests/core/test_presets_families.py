"""Presets by model family (no framework needed): family defaults resolved from a model type,
sites that adapt a module's input, and per-head counts of grouped-query projections."""

import attrs
import pytest

import mixlight as ml
import mixlight.extend as mlx
from mixlight import presets
from mixlight.site_planning import ModuleRecord, plan_sites, record_module, shape_for

LLAMA_PATHS = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.self_attn.k_proj",
    "model.layers.0.self_attn.v_proj",
    "model.layers.0.self_attn.o_proj",
    "model.layers.0.mlp.gate_proj",
    "model.layers.0.mlp.up_proj",
    "model.layers.0.mlp.down_proj",
    "model.layers.0.mlp.act_fn",
]


def test_a_preset_without_targets_carries_family_defaults_and_the_t5_layout():
    auto, t5 = ml.MoV(4), ml.MoV(4, targets="t5")
    assert auto.family_defaults and not t5.family_defaults
    assert auto.sites == t5.sites and auto == t5  # not compared: MoV() equals its T5 config
    assert auto.to_dict() == {**t5.to_dict(), "family_defaults": True}
    assert "family_defaults" not in t5.to_dict()  # explicit and resolved configs: as before
    back = ml.AdapterConfig.from_dict(auto.to_dict())
    assert back.family_defaults and back.to_dict() == auto.to_dict()
    for preset in (ml.MoLoRA(), ml.IA3(), ml.LoRA()):
        assert preset.family_defaults
    assert not ml.IA3(targets=[r".*\.k"]).family_defaults


@pytest.mark.parametrize("model_type", ["t5", "mt5", "umt5", None])
def test_t5_model_types_and_models_without_a_type_resolve_to_the_t5_sites(model_type):
    for preset in (ml.MoV(3), ml.MoLoRA(3), ml.IA3(), ml.LoRA(2)):
        resolved = presets.resolve_targets(preset, model_type)
        assert not resolved.family_defaults
        assert resolved.to_dict() == attrs.evolve(preset, family_defaults=False).to_dict()


@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"])
def test_llama_style_model_types_resolve_to_keys_values_and_the_down_projection_input(name):
    resolved = presets.resolve_targets(ml.MoV(4), name)
    assert resolved == ml.MoV(4, targets=name) == ml.MoV(4, targets="llama")
    kv, ffn = resolved.sites
    assert kv.heads == "auto" and kv.tensor == "output" and ffn.tensor == "input"
    specs = plan_sites(resolved, {p: ModuleRecord("Linear", 32, 16, 2, True) for p in LLAMA_PATHS},
                       input_sites=True)  # fmt: skip
    by_name = {s.path.rsplit(".", 1)[1]: s for s in specs}
    assert sorted(by_name) == ["down_proj", "k_proj", "v_proj"]
    down = by_name["down_proj"]
    assert down.d_in == down.d_out == 32 and down.heads is None and by_name["k_proj"].heads == 2
    lora = presets.resolve_targets(ml.MoLoRA(2, rank=2), name)
    specs = plan_sites(lora, {p: ModuleRecord("Linear", 32, 16, 2, True) for p in LLAMA_PATHS})
    assert len(specs) == 7  # every linear of the attention and the MLP, not act_fn


def test_a_site_added_to_a_preset_is_kept_when_the_family_is_resolved():
    extra = ml.Site(r".*lm_head", mlx.Vectors())
    config = attrs.evolve(ml.MoV(2), sites=[*ml.MoV(2).sites, extra])
    resolved = presets.resolve_targets(config, "gpt2")
    assert resolved.sites[-1] == extra
    assert resolved.sites[:2] == ml.MoV(2, targets="gpt2").sites


def test_an_unknown_model_type_is_refused_with_the_fix_and_a_sample_of_paths():
    paths = [f"decoder.layers.{i}.self_attn.{n}" for i in range(30) for n in ("k_proj", "q_proj")]
    with pytest.raises(ValueError) as err:
        presets.resolve_targets(ml.MoLoRA(2), "opt", paths)
    message = str(err.value)
    assert "model_type 'opt'" in message and "targets=" in message and "'llama'" in message
    assert "decoder.layers.0.self_attn.k_proj" in message
    assert "decoder.layers.29" not in message  # a sample, not every path


def test_an_unknown_family_name_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"targets='opt'.*'llama'"):
        ml.MoV(targets="opt")
    with pytest.raises(ValueError, match="no mixlight preset family 'opt'"):
        presets.family("opt")


def test_input_sites_need_a_width_preserving_expert_and_serialise_only_when_set():
    site = ml.Site(r".*down_proj", mlx.Vectors(), tensor="input")
    assert site.to_dict()["tensor"] == "input"
    assert ml.Site.from_dict(site.to_dict()) == site
    assert "tensor" not in ml.Site(r".*k", mlx.Vectors()).to_dict()
    with pytest.raises(ValueError, match=r"tensor='input'.*'low_rank' is not width-preserving"):
        ml.Site(r".*down_proj", mlx.LowRank(2), tensor="input")
    with pytest.raises(ValueError, match=r"Site.tensor='weights': allowed values"):
        ml.Site(r".*down_proj", mlx.Vectors(), tensor="weights")


def test_an_input_site_is_sized_by_the_modules_input_and_refused_where_unknown():
    site = ml.Site(r".*down_proj", mlx.Vectors(), tensor="input")
    assert shape_for("m.down_proj", site, ModuleRecord("Linear", 64, 32, None, True)) == (
        mlx.ModuleShape(64, 64)
    )
    with pytest.raises(TypeError, match=r"tensor='input'.*GELU, whose input width"):
        shape_for("m.act", site, ModuleRecord("GELU"))


def test_a_backend_that_does_not_apply_input_sites_refuses_them():
    config = ml.AdapterConfig([ml.Site(r".*down_proj", mlx.Vectors(), tensor="input")], 1)
    records = {"m.down_proj": ModuleRecord("Linear", 64, 32, None, True)}
    with pytest.raises(TypeError, match=r"adapts its module's input .*this backend"):
        plan_sites(config, records)
    assert plan_sites(config, records, input_sites=True)[0].d_in == 64


class _Linear:
    def __init__(self, d_in, d_out):
        self.d_in, self.d_out = d_in, d_out


def _width(module, which):
    if not isinstance(module, _Linear):
        return None
    return module.d_in if which == "in" else module.d_out


class _Attention:
    def __init__(self, **attributes):
        self.__dict__.update(attributes)


@pytest.mark.parametrize(
    "attention, d_out, heads",
    [
        (_Attention(head_dim=8), 16, 2),  # Llama GQA k_proj: kv heads * head_dim
        (_Attention(head_dim=8), 32, 4),  # its q_proj
        (_Attention(head_dim=16), 32, 2),  # Qwen3/Gemma: head_dim not hidden / heads
        (_Attention(num_heads=4, head_dim=8), 96, 12),  # GPT-2 fused c_attn: q, k, v heads
        (_Attention(n_heads=4, key_value_proj_dim=8), 32, 4),  # T5, as before
        (_Attention(n_heads=6, key_value_proj_dim=64), 500, 6),  # no whole head: the count
        (_Attention(num_attention_heads=4, attention_head_size=8), 32, 4),  # BERT
    ],
)
def test_a_projections_heads_are_its_output_width_over_the_head_width(attention, d_out, heads):
    record = record_module(_Linear(32, d_out), attention, _width, lambda m: True)
    assert record.heads == heads


def test_per_head_with_custom_targets_is_honoured():
    """``per_head`` used to be ignored for a list of targets: True routes each matched module
    per head, the default (None) routes on the whole width, and families route per head
    unless it is False."""
    assert [s.heads for s in ml.MoV(2, targets=[r".*\.k"], per_head=True).sites] == ["auto"]
    assert [s.heads for s in ml.MoV(2, targets=[r".*\.k"]).sites] == [None]
    assert ml.MoV(2, targets="llama").sites[0].heads == "auto"
    assert ml.MoV(2, targets="llama", per_head=False).sites[0].heads is None
