"""The adapter file format: round trips, atomic writes, and every refusal."""

import json
import os
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import mixlight as ml
import mixlight.extend as mlx
from mixlight import adapter_file
from mixlight._base_identity import BaseIdentity
from mixlight.adapter_file import fingerprint

PATHS = ["enc.0.attn.k", "enc.0.attn.v", "enc.0.mlp.act", "enc.0.mlp.wo"]


SHAPES = {p: mlx.ModuleShape(8, 8, 2) if "attn" in p else mlx.ModuleShape(8, 16) for p in PATHS}


def make(config, seed=0):
    specs = mlx.plan_sites(config, SHAPES)
    rng = np.random.default_rng(seed)
    arrays = {
        s.canonical_name(n): a + rng.standard_normal(a.shape).astype(np.float32)
        for s in specs
        for n, a in s.init_params(rng).items()
    }
    return specs, arrays


MOV = ml.AdapterConfig([ml.Site(r".*attn\.(k|v)", mlx.Vectors(), heads="auto")], 4, method="MoV-4")


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
    mlx.write_adapter(out, config, specs, arrays)
    back = ml.read_adapter(out)
    assert back.config == config
    assert back.specs == specs
    assert set(back.arrays) == set(arrays)
    for name, arr in arrays.items():
        assert back.arrays[name].dtype == np.float32
        np.testing.assert_array_equal(back.arrays[name], arr)
    meta = json.loads((out / "mixlight_config.json").read_text())
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
    mlx.write_adapter(tmp_path, MOV, specs, arrays)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    _, other = make(MOV, seed=1)
    with pytest.raises(OSError, match="disk full"):
        mlx.write_adapter(tmp_path, MOV, specs, other)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    ml.read_adapter(tmp_path)


def forge(out, config, specs, arrays, changes=None):
    """A directory whose weights file holds ``arrays`` and the metadata a save writes, with
    ``changes``, both sha256s recomputed: what another tool (or a forger) could write."""
    mlx.write_adapter(out, config, specs, {n: np.zeros_like(a) for n, a in arrays.items()})
    arrays = {n: np.ascontiguousarray(a, np.float32) for n, a in arrays.items()}
    data = (out / "mixlight_adapter.safetensors").read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    meta = {**json.loads(header["__metadata__"]["mixlight.adapter"]), **(changes or {})}
    meta["arrays_sha256"] = adapter_file._arrays_sha256(arrays)
    meta["metadata_sha256"] = adapter_file._metadata_sha256(meta)
    save_file(
        arrays,
        out / "mixlight_adapter.safetensors",
        metadata={"mixlight.adapter": json.dumps(meta)},
    )


def test_weights_file_is_the_commit_point(tmp_path):
    """A save killed between its two renames leaves new weights beside the old readable copy:
    the directory loads as the new adapter."""
    specs, arrays = make(MOV)
    mlx.write_adapter(tmp_path, MOV, specs, arrays)
    config_text = (tmp_path / "mixlight_config.json").read_text()
    _, other = make(MOV, seed=1)
    mlx.write_adapter(tmp_path, MOV, specs, other)
    (tmp_path / "mixlight_config.json").write_text(config_text)  # old config, new weights
    back = ml.read_adapter(tmp_path)
    for name, arr in other.items():
        np.testing.assert_array_equal(back.arrays[name], arr)
    (tmp_path / "mixlight_config.json").unlink()  # the weights file alone is the adapter
    assert set(ml.read_adapter(tmp_path).arrays) == set(other)


def test_file_modes_follow_the_umask(tmp_path):
    specs, arrays = make(MOV)
    previous = os.umask(0o022)
    try:
        mlx.write_adapter(tmp_path / "shared", MOV, specs, arrays)
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "shared").iterdir()}
    assert modes == {
        "mixlight_adapter.safetensors": 0o644,
        "mixlight_config.json": 0o644,
        "README.md": 0o644,
    }
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o755


def test_non_finite_arrays_are_refused_on_save_and_load(tmp_path):
    specs, arrays = make(MOV)
    bad = dict(arrays, **{"enc.0.attn.k.vectors": np.full((4, 8), np.nan, np.float32)})
    with pytest.raises(ml.AdapterFileError, match=r"NaN/inf\) in enc.0.attn.k.vectors"):
        mlx.write_adapter(tmp_path, MOV, specs, bad)
    assert not any(tmp_path.iterdir())
    forge(tmp_path, MOV, specs, bad)  # a file written by another tool
    with pytest.raises(ml.AdapterFileError, match="non-finite .* diverged run"):
        ml.read_adapter(tmp_path)


def test_modified_arrays_fail_their_checksum(tmp_path):
    specs, arrays = make(MOV)
    mlx.write_adapter(tmp_path, MOV, specs, arrays)
    data = bytearray((tmp_path / "mixlight_adapter.safetensors").read_bytes())
    data[-3] ^= 0x40  # one bit of the last array
    (tmp_path / "mixlight_adapter.safetensors").write_bytes(bytes(data))
    with pytest.raises(ml.AdapterFileError, match="do not match the sha256"):
        ml.read_adapter(tmp_path)


def test_base_identity_mismatch_warns_but_shapes_still_error(tmp_path):
    specs, arrays = make(MOV)
    saved = BaseIdentity("t5-small", "abc", np.array([0.5, -0.25], np.float32), "float32")
    mlx.write_adapter(tmp_path, MOV, specs, arrays, base=saved)
    loaded = ml.read_adapter(tmp_path)
    assert loaded.base_identity == saved
    np.testing.assert_array_equal(loaded.base_identity.samples, saved.samples)
    same_in_bf16 = BaseIdentity("t5-small", None, np.array([0.5, -0.2502], np.float32), "bfloat16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adapter_file.warn_other_base(loaded, same_in_bf16, "dir")
    other = BaseIdentity("t5-small", "abc", np.array([0.5, -0.2502], np.float32), "float32")
    with pytest.warns(UserWarning, match="weights differ .*load that checkpoint, or retrain"):
        adapter_file.warn_other_base(loaded, other, "dir")
    with pytest.warns(UserWarning, match="name was 't5-small', this model's is 't5-base'"):
        adapter_file.warn_other_base(loaded, BaseIdentity("t5-base"), "dir")


def test_fingerprint_mismatch_lists_differences(tmp_path):
    specs, arrays = make(MOV)
    mlx.write_adapter(tmp_path, MOV, specs, arrays)
    loaded = ml.read_adapter(tmp_path)
    other = mlx.plan_sites(MOV, {p: mlx.ModuleShape(12, 12, heads=2) for p in PATHS})
    with pytest.raises(
        ml.AdapterFileError, match=r"different base model .*enc.0.attn.k: adapter has"
    ):
        adapter_file.check_fits(loaded, other, "dir")
    adapter_file.check_fits(loaded, specs, "dir")


def test_the_same_adapter_gives_the_same_bytes_in_every_process(tmp_path):
    """No hash-ordered metadata: two processes saving one adapter write identical files."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from tests.core.test_adapter_file import MOV, make\n"
        "import mixlight.extend as mlx\n"
        "specs, arrays = make(MOV, 3)\n"
        "mlx.write_adapter(sys.argv[1], MOV, specs, arrays)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for i, seed in enumerate(("1", "2", "3")):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / str(i))], check=True, env=env, cwd=root
        )
    files = [(tmp_path / str(i) / "mixlight_adapter.safetensors").read_bytes() for i in range(3)]
    assert files[0] == files[1] == files[2]


def test_the_format_is_1_0_and_other_majors_are_refused_naming_both(tmp_path):
    specs, arrays = make(MOV)
    mlx.write_adapter(tmp_path / "ours", MOV, specs, arrays)
    assert ml.read_adapter(tmp_path / "ours").format_version == adapter_file.FORMAT_VERSION == "1.0"
    for version in ("0.9", "2.1"):
        forge(tmp_path / version, MOV, specs, arrays, {"format_version": version})
        with pytest.raises(
            ml.AdapterFileError,
            match=rf"adapter format {version} \(written by mixlight {ml.__version__}\) is not "
            rf"readable by this mixlight {ml.__version__}, which reads format 1\.x",
        ):
            ml.read_adapter(tmp_path / version)


def test_a_newer_minor_version_loads_without_the_keys_it_added(tmp_path):
    specs, arrays = make(MOV)
    newer = {**MOV.to_dict(), "colour": "blue"}
    forge(tmp_path, MOV, specs, arrays, {"format_version": "1.7", "config": newer})
    with pytest.warns(UserWarning, match=r"ignoring AdapterConfig keys \['colour'\]"):
        back = ml.read_adapter(tmp_path)
    assert back.format_version == "1.7" and back.config == MOV


def test_weights_without_mixlight_metadata_are_refused(tmp_path):
    specs, arrays = make(MOV)
    tmp_path.mkdir(exist_ok=True)
    save_file(arrays, tmp_path / "mixlight_adapter.safetensors")
    with pytest.raises(ml.AdapterFileError, match="carries no mixlight metadata.*save_adapter"):
        ml.read_adapter(tmp_path)


def test_a_peft_directory_is_named_as_such(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    with pytest.raises(ml.AdapterFileError, match="PEFT adapter directory"):
        ml.read_adapter(tmp_path)
