"""``mixlight tune`` and ``mixlight demo`` (torch): the saved config reruns from any folder,
a resumed run refuses changed data, ``--build-base`` and the base cache never delete the
user's folders, and a model or adapter that cannot run is a one-line error, not a
traceback."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from mixlight.cli import main  # noqa: E402
from mixlight_tune import cli as demo_cli  # noqa: E402
from mixlight_tune import experiment  # noqa: E402
from mixlight_tune.frameworks import torch_steps  # noqa: E402
from tests.tune_case import write_case  # noqa: E402

MICRO_BASE = experiment.BaseSpec(
    d_model=16,
    d_kv=4,
    num_heads=4,
    d_ff=32,
    num_layers=1,
    vocab_size=128,
    corpus_sentences=200,
    chunk_tokens=24,
    pretrain_steps=2,
    pretrain_batch_size=4,
)
MICRO = dataclasses.replace(experiment.QUICK, base=MICRO_BASE, progress=False)


def _error(command: str, args: list[str], capsys, code: int = 2) -> str:
    run = main if command == "tune" else demo_cli.main
    assert run(["tune", *args] if command == "tune" else args) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]  # (transformers may log a load report above it)
    assert last.startswith(f"mixlight {command}: error: ") or code != 2, err
    return last


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _no_pretraining(monkeypatch) -> None:
    def no_work(*args):
        raise AssertionError("nothing should be pre-trained")

    monkeypatch.setattr(torch_steps, "_pretrain", no_work)


# --- the saved config, and resuming ----------------------------------------------------------


def test_the_saved_config_reruns_from_another_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "case").mkdir()
    write_case(tmp_path / "case", "torch", checkpoint_every=1, eval_data=None)
    monkeypatch.chdir(tmp_path)
    assert main(["tune", "case/torch.json"]) == 0
    saved = tmp_path / "case/out-torch/config.json"
    first = json.loads((saved.parent / "metrics.json").read_text())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["tune", str(saved)]) == 0, capsys.readouterr().err
    again = json.loads((saved.parent / "metrics.json").read_text())
    assert again["losses"] == first["losses"] and again["config"] == first["config"]


def test_a_resumed_run_refuses_changed_data(tmp_path, capsys):
    config = write_case(tmp_path, "torch", checkpoint_every=1, eval_data=None)
    assert main(["tune", str(config)]) == 0
    data = tmp_path / "train.jsonl"
    original = data.read_bytes()
    data.write_bytes(original.replace(b'"yes"', b'"no"', 1))
    capsys.readouterr()
    err = _error("tune", [str(config)], capsys)
    assert f"the data changed since the run in {tmp_path / 'out-torch'} started ({data}: " in err
    assert "restore that data to resume, or choose a fresh output_dir" in err
    data.write_bytes(original)
    assert main(["tune", str(config)]) == 0


def test_a_run_resumed_without_a_data_record_records_one(tmp_path):
    config = write_case(tmp_path, "torch", checkpoint_every=1, eval_data=None)
    assert main(["tune", str(config)]) == 0
    record = tmp_path / "out-torch/data_sha256.json"
    digests = json.loads(record.read_text())
    assert list(digests) == [str(tmp_path / "train.jsonl")]
    record.unlink()  # as a run from before the record existed
    assert main(["tune", str(config)]) == 0
    assert json.loads(record.read_text()) == digests


# --- what cannot run: one line, exit 2 --------------------------------------------------------


def _base_copy(root: Path, damage) -> str:
    model = root / "t5"
    shutil.copytree(experiment.SHIPPED_BASE, model)
    damage(model)
    return "t5"


def _other_shapes(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"d_model": 32}))


BROKEN_MODELS = {
    "weights not safetensors": lambda m: (m / "model.safetensors").write_bytes(b"junk"),
    "config of other shapes": _other_shapes,
    "tokenizer damaged": lambda m: (m / "spiece.model").write_bytes(b"junk"),
}


@pytest.mark.parametrize("case", list(BROKEN_MODELS))
def test_a_model_that_cannot_load_is_one_line(case, tmp_path, capsys):
    model = _base_copy(tmp_path, BROKEN_MODELS[case])
    config = write_case(tmp_path, "torch", model=model)
    err = _error("tune", [str(config), "--dry-run"], capsys)
    assert f"model = {tmp_path / 't5'}: could not load the checkpoint (" in err
    assert "pass a complete Hugging Face model folder" in err


def test_the_demo_names_a_model_that_cannot_load(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo_cli, "QUICK", MICRO)
    model = tmp_path / _base_copy(tmp_path, BROKEN_MODELS["weights not safetensors"])
    args = ["--quick", "--methods", "ia3", "--model", str(model)]
    args += ["--output-dir", str(tmp_path / "o")]
    err = _error("demo", [*args, "--cache-dir", str(tmp_path / "cache")], capsys)
    assert f"--model {model}: could not load the checkpoint (" in err


def test_targets_that_match_nothing_are_one_line(tmp_path, capsys):
    adapter = {"preset": "mov", "num_experts": 2, "targets": ["nothing_here"]}
    config = write_case(tmp_path, "torch", adapter=adapter)
    err = _error("tune", [str(config), "--dry-run"], capsys)
    assert "adapter MoV-2 does not fit this model" in err and "nothing_here" in err
    assert "change the adapter's targets (or sites) to fit the model" in err


def test_a_diverged_run_is_one_line_and_saves_nothing(tmp_path, capsys):
    config = write_case(tmp_path, "torch", steps=1, lr=1e308, eval_data=None)
    err = _error("tune", [str(config)], capsys)
    assert "non-finite values (NaN/inf)" in err and "lower the learning rate" in err
    assert not (tmp_path / "out-torch/adapter/mixlight_adapter.safetensors").exists()


def test_a_diverged_demo_run_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo_cli, "QUICK", dataclasses.replace(MICRO, steps=1))
    args = ["--quick", "--methods", "ia3", "--optimizer", "adamw", "--lr", "1e308"]
    args += ["--output-dir", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache")]
    err = _error("demo", args, capsys)
    assert "non-finite values (NaN/inf)" in err and "lower the learning rate" in err


# --- the base: built in a staging folder, never over the user's files -----------------------


def test_build_base_refuses_a_folder_of_other_files_before_any_work(tmp_path, capsys, monkeypatch):
    _no_pretraining(monkeypatch)
    for name, files in {
        "notes": {"notes.txt": b"keep me"},
        "a-model": {"config.json": b"{}", "model.safetensors": b"weights"},
    }.items():
        folder = tmp_path / name
        folder.mkdir()
        for file, data in files.items():
            (folder / file).write_bytes(data)
        err = _error("demo", ["--build-base", str(folder)], capsys)
        assert err.startswith(f"mixlight demo: error: base folder {folder} holds files ")
        assert "mixlight demo --build-base did not write" in err and "choose an empty" in err
        assert _tree(folder) == files


def test_build_base_under_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    _no_pretraining(monkeypatch)
    (tmp_path / "file").write_text("x")
    err = _error("demo", ["--build-base", str(tmp_path / "file" / "base")], capsys)
    assert "its parent folder is not writable" in err


def test_build_base_builds_then_replaces_its_own_base(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo_cli, "QUICK", MICRO)
    base = tmp_path / "base"
    assert demo_cli.main(["--quick", "--build-base", str(base)]) == 0
    info = json.loads((base / "pretraining.json").read_text())
    assert info["key"] == experiment.base_key(MICRO)
    mask = os.umask(0)
    os.umask(mask)
    assert base.stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's 0o700
    built = _tree(base)
    (base / "pretraining.json").write_text(json.dumps(info | {"final_loss": 99.0}))
    assert demo_cli.main(["--quick", "--build-base", str(base)]) == 0  # regenerated
    assert json.loads((base / "pretraining.json").read_text())["final_loss"] != 99.0
    assert sorted(_tree(base)) == sorted(built)
    assert [p.name for p in tmp_path.iterdir()] == ["base"]  # no staging left behind

    def killed(*args):
        raise KeyboardInterrupt

    before = _tree(base)
    monkeypatch.setattr(torch_steps, "_pretrain", killed)
    capsys.readouterr()
    assert demo_cli.main(["--quick", "--build-base", str(base)]) == 130
    assert f"{base} is unchanged" in capsys.readouterr().err
    assert _tree(base) == before and [p.name for p in tmp_path.iterdir()] == ["base"]


def test_the_base_cache_never_deletes_a_folder_of_other_files(tmp_path, monkeypatch):
    _no_pretraining(monkeypatch)
    cfg = dataclasses.replace(MICRO, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out")
    cached = experiment.base_checkpoint(cfg)
    cached.mkdir(parents=True)
    (cached / "notes.txt").write_text("keep me")
    with pytest.raises(experiment.DemoError, match="holds files .* did not write"):
        torch_steps.prepare(cfg)
    assert _tree(cached) == {"notes.txt": b"keep me"}
