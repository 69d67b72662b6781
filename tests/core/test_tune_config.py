"""The ``mixlight tune`` config schema: defaults, both file formats, the adapter forms, and a
clear error naming the key and the fix for each bad value. No framework is imported."""

import json

import pytest

import mixlight as ml
from mixlight_tune.tune_cli import load_data, settings
from mixlight_tune.tune_config import TuneConfig, TuneConfigError, parse, read_config


def test_defaults_are_the_documented_ones():
    cfg = parse({})
    assert cfg == TuneConfig(output_dir=cfg.output_dir)
    assert (cfg.backend, cfg.optimizer, cfg.model, cfg.data) == ("torch", "adafactor", None, None)
    assert cfg.adapter == ml.MoV(10)


def test_toml_and_json_give_the_same_config(tmp_path):
    (tmp_path / "a.toml").write_text(
        'backend = "jax"\nsteps = 5\nlr = 0.01\n[adapter]\npreset = "molora"\n'
        "num_experts = 3\nrank = 2\n"
    )
    (tmp_path / "a.json").write_text(
        json.dumps(
            {
                "backend": "jax",
                "steps": 5,
                "lr": 0.01,
                "adapter": {"preset": "molora", "num_experts": 3, "rank": 2},
            }
        )
    )
    from_toml, from_json = read_config(tmp_path / "a.toml"), read_config(tmp_path / "a.json")
    assert from_toml == from_json
    assert from_toml.adapter == ml.MoLoRA(3, rank=2)
    assert from_toml.output_dir == tmp_path / "runs/tune"  # relative to the config's folder


def test_only_backend_differs_between_backends():
    torch_cfg, jax_cfg = parse({"seed": 3}), parse({"seed": 3, "backend": "jax"})
    a, b = torch_cfg.resolved(), jax_cfg.resolved()
    assert {k for k in a if a[k] != b[k]} == {"backend"}
    assert settings(torch_cfg) != settings(jax_cfg)  # labels name the backend
    assert settings(torch_cfg).seed == settings(jax_cfg).seed == 3


def test_adapter_forms():
    assert parse({"adapter": "ia3"}).adapter == ml.IA3()
    full = ml.MoV(4, routing="sequence").to_dict()
    assert parse({"adapter": {"config": full}}).adapter == ml.MoV(4, routing="sequence")
    resolved = parse({"adapter": {"preset": "lora", "rank": 2}}).resolved()
    assert parse({"adapter": resolved["adapter"]}).adapter == ml.LoRA(rank=2)


def test_resolved_config_reads_back(tmp_path):
    cfg = parse({"backend": "jax", "steps": 2, "adapter": "lora"}, base_dir=tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg.resolved()))
    again = read_config(tmp_path / "config.json")
    assert again.adapter == cfg.adapter and again.resolved() == cfg.resolved()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"backnd": "jax"}, r"unknown key\(s\) backnd; valid keys: .*backend"),
        ({"backend": "mlx"}, r'backend must be "torch" or "jax", got \'mlx\''),
        ({"optimizer": "lion"}, r'optimizer must be "adafactor" or "adamw" or "sgd"'),
        ({"steps": -1}, r"steps must be an integer >= 0, got -1"),
        ({"batch_size": 0}, r"batch_size must be an integer >= 1"),
        ({"steps": 2.5}, r"steps must be an integer"),
        ({"lr": 0}, r"lr must be a positive finite number, got 0"),
        ({"lr": "fast"}, r"lr must be a positive number, got 'fast'"),
        ({"progress": "yes"}, r"progress must be true or false"),
        ({"model": "no/such/dir"}, r"model = 'no/such/dir': nothing at .*checkpoint directory"),
        ({"data": "missing.jsonl"}, r"data = 'missing.jsonl': nothing at .*\.jsonl file"),
        ({"output_dir": ""}, r"output_dir must be a folder path"),
        ({"adapter": "moe"}, r"adapter.preset is 'moe'; valid: mov, molora, ia3, lora"),
        ({"adapter": 3}, r"adapter must be a preset name or a table"),
        ({"adapter": {"preset": "mov", "experts": 4}}, r"keyword arguments"),
        ({"adapter": {"preset": "mov", "num_experts": 0}}, r"adapter \(preset 'mov'\)"),
        ({"adapter": {"config": {"method": "x"}}}, r"adapter.config: "),
        ({"adapter": {"config": {}, "preset": "mov"}}, r"the only key of \[adapter\]"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(raw, message, tmp_path):
    with pytest.raises(TuneConfigError, match=message):
        parse(raw, base_dir=tmp_path)


def test_bad_files(tmp_path):
    with pytest.raises(TuneConfigError, match="no such file"):
        read_config(tmp_path / "nope.toml")
    (tmp_path / "c.yaml").write_text("steps: 1")
    with pytest.raises(TuneConfigError, match="expected a .toml or .json file"):
        read_config(tmp_path / "c.yaml")
    (tmp_path / "c.toml").write_text("steps = = 1")
    with pytest.raises(TuneConfigError, match="is not valid TOML"):
        read_config(tmp_path / "c.toml")
    (tmp_path / "c.json").write_text("[1]")
    with pytest.raises(TuneConfigError, match="the top level must be a table/object"):
        read_config(tmp_path / "c.json")


def test_data_files_and_the_builtin_mixture(tmp_path):
    rows = [{"inputs": "q", "targets": "yes", "answer_choices": ["yes", "no"]}, {}]
    (tmp_path / "bad.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(TuneConfigError, match=r"^data: .*bad.jsonl:2: missing field 'inputs'"):
        load_data(parse({"data": "bad.jsonl"}, base_dir=tmp_path))
    (tmp_path / "free.jsonl").write_text(json.dumps({"inputs": "q", "targets": "a"}))
    with pytest.raises(TuneConfigError, match="eval_data = .*no rows with answer_choices"):
        load_data(parse({"eval_data": "free.jsonl"}, base_dir=tmp_path))
    train, evals = load_data(parse({"builtin_per_task": 2, "data_seed": 1}))
    assert evals == [] and 0 < len(train) <= 40
    assert train == load_data(parse({"builtin_per_task": 2, "data_seed": 1}))[0]


def test_shipped_example_config_is_valid():
    import pathlib

    example = pathlib.Path(__file__).resolve().parents[2] / "examples/tune_mov.toml"
    cfg = read_config(example)
    assert cfg.adapter == ml.MoV(10) and cfg.backend == "torch"
    assert read_config(example, backend="jax").resolved().keys() == cfg.resolved().keys()


def test_model_directory_is_checked_before_anything_loads(tmp_path):
    from mixlight_tune.tune_cli import dry_run, run

    (tmp_path / "ckpt").mkdir()
    cfg = parse({"model": "ckpt"}, base_dir=tmp_path)
    for command in (run, dry_run):
        with pytest.raises(TuneConfigError, match=r"^model = .*ckpt: no config.json"):
            command(cfg)
    assert not (tmp_path / "runs").exists()


def test_set_overrides_keys_tables_and_paths(tmp_path, monkeypatch):
    """``--set KEY=VALUE``: TOML values, dotted keys into [adapter] (a preset name becomes
    its table), paths from the current folder; the resolved config records the result."""
    from mixlight_tune.tune_config import with_settings

    config = tmp_path / "c.toml"
    config.write_text('adapter = "mov"\nsteps = 100\n')
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "rows.jsonl").write_text('{"inputs": "a", "targets": "b"}\n')
    monkeypatch.chdir(tmp_path / "here")
    settings = ["steps=3", "lr=1e-3", "adapter.num_experts=2", "data=rows.jsonl", "seed = 7"]
    cfg = read_config(config, settings, progress=False)
    assert (cfg.steps, cfg.lr, cfg.seed) == (3, 1e-3, 7)
    assert cfg.adapter.num_experts == 2 and cfg.adapter.method.startswith("MoV")
    assert cfg.resolved()["data"] == str(tmp_path / "here" / "rows.jsonl")
    assert with_settings({}, ["adapter=full", "model=google/t5-xl-lm-adapt"]) == {
        "adapter": "full",
        "model": "google/t5-xl-lm-adapt",  # not a local path: a Hub id, kept as written
    }
    with pytest.raises(TuneConfigError, match="expected KEY=VALUE"):
        with_settings({}, ["steps"])
    with pytest.raises(TuneConfigError, match="unknown key"):
        read_config(config, ["stpes=3"])
