"""Configs: presets lay out the paper's hook points, JSON round trips, bad values fail."""

import json
import re

import pytest
from hypothesis import given

import mixlight as ml
import mixlight.extend as mlx
from mixlight.testing import adapter_configs

T5_PATHS = [
    f"{stack}.block.{i}.layer.{j}.{mod}"
    for stack in ("encoder", "decoder")
    for i in range(2)
    for j, mods in (
        [(0, ["SelfAttention.q", "SelfAttention.k", "SelfAttention.v", "SelfAttention.o"])]
        + (
            [
                (
                    1,
                    [
                        "EncDecAttention.q",
                        "EncDecAttention.k",
                        "EncDecAttention.v",
                        "EncDecAttention.o",
                    ],
                )
            ]
            if stack == "decoder"
            else []
        )
        + [
            (
                1 if stack == "encoder" else 2,
                [
                    "DenseReluDense.wi_0",
                    "DenseReluDense.wi_1",
                    "DenseReluDense.wo",
                    "DenseReluDense.act",
                ],
            )
        ]
    )
    for mod in mods
]


def matched(config):
    return sorted(p for p in T5_PATHS if any(re.fullmatch(s.pattern, p) for s in config.sites))


def test_mov_t5_targets_k_v_and_ffn_activation():
    got = matched(ml.MoV())
    assert all(p.endswith((".k", ".v", "DenseReluDense.act")) for p in got)
    # 2 encoder layers x 3 + 2 decoder layers x 5 (self k/v, cross k/v, ffn)
    assert len(got) == 2 * 3 + 2 * 5
    heads = {s.pattern: s.heads for s in ml.MoV().sites}
    assert list(heads.values()) == ["auto", None]


def test_molora_t5_targets_q_k_v_o_wi0_wo_not_wi1():
    got = matched(ml.MoLoRA())
    assert not any(p.endswith(("wi_1", "act")) for p in got)
    assert len(got) == 2 * 6 + 2 * 10
    assert re.fullmatch(ml.MoLoRA().sites[1].pattern, "encoder.block.0.layer.1.DenseReluDense.wi")


def test_presets_defaults_and_one_expert_cases():
    assert ml.MoV().num_experts == 10 and ml.MoLoRA().num_experts == 10
    lowrank = ml.MoLoRA().sites[0].expert
    assert (lowrank.rank, lowrank.alpha, lowrank.scale) == (4, 16.0, 4.0)
    assert ml.IA3().num_experts == 1 and not ml.IA3().has_router
    assert ml.LoRA(8).sites[0].expert == mlx.LowRank(8, 16.0)
    assert ml.MoV(targets=["h\\.\\d+\\.mlp\\.act"]).sites[0].heads is None


@given(adapter_configs())
def test_config_json_round_trip(config):
    text = json.dumps(config.to_dict())
    assert ml.AdapterConfig.from_dict(json.loads(text)) == config


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ml.MoV(0), r"num_experts=0: must be an integer >= 1"),
        (lambda: mlx.LowRank(0), r"LowRank.rank=0: must be an integer >= 1"),
        (lambda: ml.MoLoRA(4, rank=-1), r"rank=-1"),
        (lambda: ml.MoV(4, router=ml.TopK(5)), r"TopK.k=5 exceeds .*num_experts=4"),
        (lambda: ml.TopK(0), r"TopK.k=0"),
        (lambda: ml.SoftMerge(load_balance_weight=-1), r"load_balance_weight=-1: must be"),
        (lambda: ml.TopK(1, z_loss_weight=-0.1), r"z_loss_weight=-0.1"),
        (lambda: ml.Site("(", mlx.Vectors()), r"not a valid regular expression"),
        (lambda: ml.Site("a", "vectors"), r"Site.expert='vectors': expected an expert kind"),
        (lambda: ml.Site("a", mlx.LowRank(2), heads=2), r"does not support per-head routing"),
        (lambda: ml.Site("a", mlx.Vectors(), router_input="middle"), r"allowed values"),
        (lambda: ml.AdapterConfig([], 2), r"non-empty sequence of mixlight.Site"),
        (lambda: ml.MoV(routing="batch"), r"routing='batch': allowed values"),
        (lambda: ml.MoV(targets="gpt3"), r"use 't5' or a non-empty list"),
        (
            lambda: ml.AdapterConfig.from_dict({**ml.MoV().to_dict(), "router": {"kind": "x"}}),
            r"unknown router kind 'x'",
        ),
        (
            lambda: ml.AdapterConfig.from_dict(
                {**ml.MoV().to_dict(), "sites": [{"pattern": "a", "expert": {"kind": "nope"}}]}
            ),
            r"unknown expert kind 'nope'; registered kinds",
        ),
        (
            lambda: ml.AdapterConfig.from_dict({**ml.MoV().to_dict(), "colour": 1}),
            r"unknown AdapterConfig keys \['colour'\]",
        ),
    ],
)
def test_bad_values_fail_with_named_field(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_unknown_keys_warn_when_allowed():
    with pytest.warns(UserWarning, match="colour"):
        cfg = ml.AdapterConfig.from_dict({**ml.MoV().to_dict(), "colour": 1}, allow_unknown=True)
    assert cfg == ml.MoV()


def test_plan_sites_errors():
    cfg = ml.MoV(2, targets=["x\\.k"])
    with pytest.raises(ValueError, match=r"matched no module .*Sample of this model's module"):
        mlx.plan_sites(cfg, {"a.q": mlx.ModuleShape(4, 4), "a.v": mlx.ModuleShape(4, 4)})
    two = ml.AdapterConfig([ml.Site("a.*", mlx.Vectors()), ml.Site(".*k", mlx.Vectors())], 2)
    with pytest.raises(ValueError, match="matches two sites"):
        mlx.plan_sites(two, {"a.k": mlx.ModuleShape(4, 4)})
    auto = ml.MoV(2)
    with pytest.raises(ValueError, match="heads='auto'.*give heads=<int>"):
        mlx.plan_sites(auto, {p: mlx.ModuleShape(4, 4) for p in T5_PATHS})
    with pytest.raises(ValueError, match="not divisible by heads=3"):
        mlx.plan_sites(auto, {p: mlx.ModuleShape(4, 4, heads=3) for p in T5_PATHS})
