"""PEFT's directory format in numpy: patterns that name exactly PEFT's modules, what is
written for each one-expert kind, round trips through a framework-free model, upcycling, and
what is refused (naming the key or field)."""

import json
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

import mixlight as ml
import mixlight.extend as mlx
from mixlight._peft import exact_pattern
from tests.core.dict_backend import dict_backend, t5_like

PATHS = [
    f"encoder.block.{i}.layer.{j}.SelfAttention.{m}"
    for i in range(12)
    for j in range(3)
    for m in "kv"
]


@given(st.sets(st.sampled_from(PATHS), min_size=1))
def test_exact_pattern_matches_exactly_its_paths(chosen):
    regex = re.compile(exact_pattern(sorted(chosen)))
    assert {p for p in PATHS if regex.fullmatch(p)} == chosen


def test_exact_pattern_is_compact_for_whole_grids():
    paths = [f"encoder.block.{i}.layer.0.SelfAttention.k" for i in range(3)]
    assert exact_pattern(paths) == r"encoder\.block\.(?:0|1|2)\.layer\.0\.SelfAttention\.k"


def state(model):
    return mlx.load_backend("dict").adapter_state(model)


def randomise(model, seed=0):
    backend = mlx.load_backend("dict")
    _, _, arrays = backend.adapter_state(model)
    rng = np.random.default_rng(seed)
    backend.load_adapter_state(
        model, {n: a + rng.normal(0, 0.3, a.shape).astype(np.float32) for n, a in arrays.items()}
    )
    return model


def test_ia3_export_writes_peft_keys_and_reads_back(tmp_path):
    with dict_backend():
        model = randomise(ml.inject(t5_like(), ml.IA3(), seed=0))
        out = ml.save_peft_adapter(model, tmp_path / "peft")
        config = json.loads((out / "adapter_config.json").read_text())
        tensors = load_file(out / "adapter_model.safetensors")
        wo = "encoder.block.0.layer.1.DenseReluDense.wo"
        assert config["peft_type"] == "IA3" and wo in config["feedforward_modules"]
        assert set(config["feedforward_modules"]) <= set(config["target_modules"])
        assert tensors[f"base_model.model.{wo}.ia3_l"].shape == (1, 16)  # wo's input
        assert tensors["base_model.model.encoder.block.0.layer.0.SelfAttention.k.ia3_l"].shape == (
            8,
            1,
        )
        _, _, arrays = state(model)
        np.testing.assert_array_equal(
            tensors[f"base_model.model.{wo}.ia3_l"][0],
            arrays["encoder.block.0.layer.1.DenseReluDense.act.vectors"][0],
        )
        back = ml.load_peft_adapter(t5_like(), out)
        _, _, again = state(back)
        assert again.keys() == arrays.keys()
        for name, value in arrays.items():
            np.testing.assert_array_equal(again[name], value)


def test_lora_of_two_ranks_round_trips_with_rank_and_alpha_patterns(tmp_path):
    config = ml.AdapterConfig(
        [ml.Site(r".*\.(?:q|v)", mlx.LowRank(4, 8.0)), ml.Site(r".*\.wo", mlx.LowRank(2, 3.0))],
        1,
        method="LoRA-mixed",
    )
    with dict_backend():
        model = randomise(ml.inject(t5_like(), config, seed=0))
        out = ml.save_peft_adapter(model, tmp_path / "peft")
        written = json.loads((out / "adapter_config.json").read_text())
        assert written["r"] == 4 and written["lora_alpha"] == 8
        assert set(written["rank_pattern"].values()) == {2} and len(written["rank_pattern"]) == 2
        back = ml.load_peft_adapter(t5_like(), out)
        _, specs, again = state(back)
        _, _, arrays = state(model)
        scales = {s.path: s.expert.scale for s in specs}
        assert scales["encoder.block.0.layer.1.DenseReluDense.wo"] == 1.5
        for name, value in arrays.items():
            np.testing.assert_allclose(again[name], value, rtol=1e-6)


def test_upcycling_copies_the_peft_values_into_every_expert(tmp_path):
    with dict_backend():
        ia3 = randomise(ml.inject(t5_like(), ml.IA3(), seed=0))
        out = ml.save_peft_adapter(ia3, tmp_path / "peft")
        mov = ml.load_peft_adapter(t5_like(), out, upcycle=ml.MoV(3), seed=1)
        _, _, arrays = state(mov)
        _, _, one = state(ia3)
        for name, value in one.items():
            assert arrays[name].shape[0] == 3
            np.testing.assert_array_equal(arrays[name], np.repeat(value, 3, axis=0))
        assert any(n.endswith(".router") for n in arrays)


def peft_files(tmp_path, config, tensors):
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    return tmp_path


K = "base_model.model.encoder.block.0.layer.0.SelfAttention.k"


@pytest.mark.parametrize(
    "config, tensors, problem",
    [
        (
            {"peft_type": "PREFIX_TUNING"},
            {"x": np.ones(2, np.float32)},
            "PREFIX_TUNING' has no mixlight",
        ),
        (
            {"peft_type": "IA3"},
            {
                f"{K}.ia3_l": np.ones((8, 1), np.float32),
                "base_model.model.lm_head.modules_to_save.default.weight": np.ones(
                    (2, 2), np.float32
                ),
            },
            "modules_to_save.default.weight' is not part of a plain",
        ),
        (
            {"peft_type": "LORA", "r": 2},
            {f"{K}.lora_A.weight": np.ones((2, 8), np.float32)},
            r"k\.lora_B\.weight is missing",
        ),
        (
            {"peft_type": "LORA", "use_dora": True},
            {f"{K}.lora_A.weight": np.ones((2, 8), np.float32)},
            "use_dora=True",
        ),
        (
            {"peft_type": "IA3"},
            {f"{K}.ia3_l": np.ones((1, 8), np.float32)},
            r"shape \(1, 8\).*\[d_out, 1\]",
        ),
        (
            {"peft_type": "IA3"},
            {"k.ia3_l": np.ones((8, 1), np.float32)},
            "not of the form 'base_model.model.",
        ),
    ],
    ids=["prefix-tuning", "modules-to-save", "half-lora", "dora", "ia3-shape", "prefix"],
)
def test_unrepresentable_peft_adapters_are_refused(tmp_path, config, tensors, problem):
    with dict_backend():
        model = t5_like()
        with pytest.raises(ml.AdapterFileError, match=problem):
            ml.load_peft_adapter(model, peft_files(tmp_path, config, tensors))
        assert model.state is None


def test_a_pickled_peft_adapter_is_refused_with_the_fix(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with (
        dict_backend(),
        pytest.raises(ml.AdapterFileError, match=r"pickle.*safe_serialization=True"),
    ):
        ml.load_peft_adapter(t5_like(), tmp_path)
    with pytest.raises(
        ml.AdapterFileError,
        match=r"PEFT adapter directory \(adapter_config.json with peft_type 'IA3'\)",
    ):
        ml.read_adapter(tmp_path)


def test_a_mixlight_directory_given_as_peft_names_the_function_that_loads_it(tmp_path):
    with dict_backend():
        model = ml.inject(t5_like(), ml.IA3())
        ml.save_adapter(model, tmp_path)
        with pytest.raises(
            ml.AdapterFileError,
            match="is a mixlight adapter directory .*load it with mixlight.load_adapter",
        ):
            ml.load_peft_adapter(t5_like(), tmp_path)


def test_mixlight_inspect_describes_a_peft_directory(tmp_path, capsys):
    from mixlight.cli import main

    peft_files(
        tmp_path,
        {"peft_type": "IA3", "feedforward_modules": ["wo"], "base_model_name_or_path": "t5-small"},
        {
            f"{K}.ia3_l": np.ones((8, 1), np.float32),
            "base_model.model.x.DenseReluDense.wo.ia3_l": np.ones((1, 16), np.float32),
        },
    )
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "a PEFT IA3 adapter" in out and "base model: t5-small" in out
    assert "x.DenseReluDense.act  vectors(16,)" in out and "ml.load_peft_adapter(model" in out
