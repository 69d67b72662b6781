"""The adapter file format: round trips, atomic writes, and every refusal."""

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mixlight as ml
from mixlight import adapter_file
from mixlight.site_spec import fingerprint

PATHS = ["enc.0.attn.k", "enc.0.attn.v", "enc.0.mlp.act", "enc.0.mlp.wo"]


def shapes(path, site):
    return ml.ModuleShape(8, 8, heads=2) if "attn" in path else ml.ModuleShape(8, 16)


def make(config, seed=0):
    specs = ml.plan_sites(config, PATHS, shapes)
    rng = np.random.default_rng(seed)
    arrays = {
        s.canonical_name(n): a + rng.standard_normal(a.shape).astype(np.float32)
        for s in specs
        for n, a in s.init_params(rng).items()
    }
    return specs, arrays


MOV = ml.AdapterConfig([ml.Site(r".*attn\.(k|v)", ml.Vectors(), heads="auto")], 4, method="MoV-4")


@settings(max_examples=10)
@given(
    st.sampled_from(
        [
            MOV,
            ml.IA3(targets=[".*act"]),
            ml.MoLoRA(3, 2, targets=[".*wo"]),
            ml.LoRA(4, targets=[".*wo"]),
        ]
    ),
    st.integers(0, 100),
)
def test_round_trip_is_bit_exact(tmp_path_factory, config, seed):
    out = tmp_path_factory.mktemp("adapter")
    specs, arrays = make(config, seed)
    ml.write_adapter(out, config, specs, arrays)
    back = ml.read_adapter(out)
    assert back.config == config
    assert back.specs == specs
    assert set(back.arrays) == set(arrays)
    for name, arr in arrays.items():
        assert back.arrays[name].dtype == np.float32
        np.testing.assert_array_equal(back.arrays[name], arr)
    meta = json.loads((out / "adapter_config.json").read_text())
    assert meta["format"] == "mixlight.adapter" and meta["format_version"] == "1.0"
    assert meta["base_model"]["fingerprint"] == fingerprint(specs)[1]


def test_canonical_names_and_shapes(tmp_path):
    specs, arrays = make(MOV)
    assert arrays["enc.0.attn.k.router"].shape == (4, 4)  # per head: [d_head, E]
    assert arrays["enc.0.attn.k.vectors"].shape == (4, 8)
    specs, arrays = make(ml.MoLoRA(3, 2, targets=[".*wo"]))
    assert arrays["enc.0.mlp.wo.lora_A"].shape == (3, 8, 2)
    assert arrays["enc.0.mlp.wo.lora_B"].shape == (3, 2, 16)
    assert arrays["enc.0.mlp.wo.router"].shape == (8, 3)
    specs, arrays = make(ml.IA3(targets=[".*act"]))
    assert set(arrays) == {"enc.0.mlp.act.vectors"}


def test_failed_write_leaves_old_adapter_intact(tmp_path, monkeypatch):
    specs, arrays = make(MOV)
    ml.write_adapter(tmp_path, MOV, specs, arrays)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    _, other = make(MOV, seed=1)
    with pytest.raises(OSError, match="disk full"):
        ml.write_adapter(tmp_path, MOV, specs, other)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    ml.read_adapter(tmp_path)


def test_interrupted_rename_is_detected(tmp_path):
    specs, arrays = make(MOV)
    ml.write_adapter(tmp_path, MOV, specs, arrays)
    config_text = (tmp_path / "adapter_config.json").read_text()
    _, other = make(MOV, seed=1)
    ml.write_adapter(tmp_path, MOV, specs, other)
    (tmp_path / "adapter_config.json").write_text(config_text)  # old config, new weights
    with pytest.raises(ml.AdapterFileError, match="does not match the checksum"):
        ml.read_adapter(tmp_path)


def test_refusals(tmp_path):
    specs, arrays = make(MOV)
    with pytest.raises(ml.AdapterFileError, match="missing enc.0.attn.v.router"):
        ml.write_adapter(
            tmp_path / "a",
            MOV,
            specs,
            {n: a for n, a in arrays.items() if n != "enc.0.attn.v.router"},
        )
    bad = dict(arrays, **{"enc.0.attn.k.vectors": np.ones((4, 9), np.float32)})
    with pytest.raises(
        ml.AdapterFileError, match=r"enc.0.attn.k.vectors: shape \(4, 9\), expected \(4, 8\)"
    ):
        ml.write_adapter(tmp_path / "a", MOV, specs, bad)
    with pytest.raises(ml.AdapterFileError, match="does not exist"):
        ml.read_adapter(tmp_path / "nowhere")

    out = tmp_path / "ok"
    ml.write_adapter(out, MOV, specs, arrays)
    weights = out / "adapter.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ml.AdapterFileError, match="checksum"):
        ml.read_adapter(out)
    weights.write_bytes(data)

    meta = json.loads((out / "adapter_config.json").read_text())
    for change, message in [
        ({"format_version": "2.0"}, "format version 2.0 is not readable"),
        ({"format": "peft"}, "is not a mixlight adapter"),
    ]:
        (out / "adapter_config.json").write_text(json.dumps({**meta, **change}))
        with pytest.raises(ml.AdapterFileError, match=message):
            ml.read_adapter(out)
    newer = {**meta, "format_version": "1.7", "config": {**meta["config"], "jitter": 0.1}}
    (out / "adapter_config.json").write_text(json.dumps(newer))
    with pytest.warns(UserWarning, match="jitter"):
        assert ml.read_adapter(out).config == MOV
    (out / "adapter_config.json").write_text("{not json")
    with pytest.raises(ml.AdapterFileError, match="not valid JSON"):
        ml.read_adapter(out)
    (out / "adapter_config.json").unlink()
    with pytest.raises(ml.AdapterFileError, match="adapter_config.json is missing"):
        ml.read_adapter(out)


def test_fingerprint_mismatch_lists_differences(tmp_path):
    specs, arrays = make(MOV)
    ml.write_adapter(tmp_path, MOV, specs, arrays)
    loaded = ml.read_adapter(tmp_path)
    other = ml.plan_sites(MOV, PATHS, lambda p, s: ml.ModuleShape(12, 12, heads=2))
    with pytest.raises(
        ml.AdapterFileError, match=r"different base model .*enc.0.attn.k: adapter has"
    ):
        adapter_file.check_fits(loaded, other, "dir")
    adapter_file.check_fits(loaded, specs, "dir")
