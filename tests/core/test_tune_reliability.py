"""``mixlight tune`` and ``mixlight demo`` never overwrite or delete what they did not write,
and every bad input is a one-line ``error:`` with exit 2, not a traceback. No framework is
imported: each case is refused before a backend or a model loads (the tests make loading one
an AssertionError)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mixlight.cli import main
from mixlight_tune import cli as demo_cli
from mixlight_tune import experiment, tune_cli
from mixlight_tune.tune_config import read_config
from tests.tune_case import write_case


@pytest.fixture
def nothing_loads(monkeypatch):
    """Loading a backend (and so a model) fails the test."""

    def no_backend(name):
        raise AssertionError(f"the {name} backend should not load")

    monkeypatch.setattr(tune_cli, "load_steps", no_backend)
    monkeypatch.setattr(experiment, "load_steps", no_backend)


def _fake_t5(folder: Path) -> Path:
    """A folder that passes the T5 checkpoint check (config.json, a tokenizer)."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    (folder / "spiece.model").write_bytes(b"tokenizer")
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _tune_error(args: list[str], capsys) -> str:
    assert main(["tune", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixlight tune: error: ") and "Traceback" not in err, err
    assert err.count("\n") == 1, err  # one line
    return err


# --- output folders: refused before anything loads, never overwritten -----------------------


@pytest.mark.parametrize("dry_run", [False, True])
def test_output_dir_equal_to_the_model_folder_is_refused(tmp_path, capsys, nothing_loads, dry_run):
    model = _fake_t5(tmp_path / "t5")
    before = _snapshot(model)
    config = write_case(tmp_path, "torch", model="t5", output_dir="t5")
    err = _tune_error([str(config), *(["--dry-run"] if dry_run else [])], capsys)
    assert f"output_dir {model} is the model folder" in err and "choose another" in err
    assert _snapshot(model) == before


def test_output_dir_holding_other_files_is_refused_naming_them(tmp_path, capsys, nothing_loads):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "notes.txt").write_text("keep me")
    config = write_case(tmp_path, "torch", output_dir="mine")
    err = _tune_error([str(config)], capsys)
    assert f"output_dir {out} holds files mixlight tune did not write" in err
    assert "(config.json, notes.txt)" in err and "choose an empty folder" in err
    assert _snapshot(out) == {"config.json": b"{}", "notes.txt": b"keep me"}


def test_output_dir_that_is_a_file_is_refused(tmp_path, capsys, nothing_loads):
    config = write_case(tmp_path, "torch", output_dir="train.jsonl")
    err = _tune_error([str(config)], capsys)
    assert "is a file, not a folder" in err


def test_an_unwritable_output_dir_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    class NoModel:
        def prepare(self, cfg):
            raise AssertionError("the model should not load")

    monkeypatch.setattr(tune_cli, "load_steps", lambda name: NoModel())
    config = write_case(tmp_path, "torch", output_dir="train.jsonl/out")
    err = _tune_error([str(config)], capsys)
    assert "output_dir" in err and "is not writable" in err


def test_own_run_folders_are_accepted_and_no_other(tmp_path):
    kind = tune_cli.TUNE_OUTPUT
    marked = tmp_path / "marked"
    kind.claim(marked, "output_dir")
    (marked / "extra.txt").write_text("written by the user after the run")
    kind.check(marked, "output_dir")  # claimed: the user's later files are theirs to keep
    unmarked = tmp_path / "unmarked"  # tune's names, but no marker: not tune's
    unmarked.mkdir()
    for name in ("checkpoint.safetensors", "config.json", "metrics.json"):
        (unmarked / name).write_text("x")
    with pytest.raises(tune_cli.DemoError, match=r"did not write \(checkpoint.safetensors"):
        kind.check(unmarked, "output_dir")
    demo_marked = tmp_path / "demo"
    experiment.DEMO_OUTPUT.claim(demo_marked, "--output-dir")
    (demo_marked / "results.json").write_text("{}")
    with pytest.raises(tune_cli.DemoError, match="holds files mixlight tune did not write"):
        kind.check(demo_marked, "output_dir")


def test_demo_out_holding_other_files_is_refused_before_anything_loads(
    tmp_path, capsys, nothing_loads
):
    out = tmp_path / "home"
    out.mkdir()
    (out / "config.json").write_text("mine")
    assert demo_cli.main(["--output-dir", str(out), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixlight demo: error: --output-dir ")
    assert "holds files mixlight demo did not write (config.json)" in err
    assert _snapshot(out) == {"config.json": b"mine"}


def test_a_demo_out_folder_without_the_marker_is_refused(tmp_path):
    out = tmp_path / "runs-demo"  # the demo's names, but no marker: a user's copy, say
    out.mkdir()
    for name in ("results.json", "results.md", "config.json", "routing_mov.png"):
        (out / name).write_text("x")
    with pytest.raises(tune_cli.DemoError, match="holds files mixlight demo did not write"):
        experiment.DEMO_OUTPUT.check(out, "--output-dir")


def test_demo_os_errors_are_one_line(tmp_path, capsys, monkeypatch):
    def full_disk(cfg):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(demo_cli, "run", full_disk)
    assert demo_cli.main(["--output-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == "mixlight demo: error: [Errno 28] No space left on device\n"


# --- tracebacks that are now one-line errors ---------------------------------------------------


def _deep_json_config(root: Path) -> Path:
    path = root / "deep.json"
    path.write_text('{"adapter": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return path


def _deep_toml_config(root: Path) -> Path:
    path = root / "deep.toml"
    path.write_text("adapter = " + "[" * 100_000 + "]" * 100_000 + "\n")
    return path


def _deep_data_row(root: Path) -> Path:
    config = write_case(root, "torch")
    lines = (root / "train.jsonl").read_text().splitlines()
    lines[1] = '{"inputs": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return config


TRACEBACKS = {
    "config JSON nested 100000 deep": (
        _deep_json_config,
        "deep.json: its JSON is nested too deeply",
    ),
    "config TOML nested 100000 deep": (
        _deep_toml_config,
        "deep.toml: its TOML is nested too deeply",
    ),
    "data row nested 100000 deep": (_deep_data_row, "train.jsonl:2: JSON nested too deeply"),
    "adapter preset a list": (
        lambda root: write_case(root, "torch", adapter={"preset": ["mov"]}),
        "adapter.preset is ['mov']; valid: mov, molora, ia3, lora",
    ),
    "lr an integer beyond float": (
        lambda root: write_case(root, "torch", lr=10**400),
        "lr must be a positive finite number, got 1000000000",
    ),
    "seed beyond the RNGs": (
        lambda root: write_case(root, "torch", seed=10**30),
        "seed must be an integer from 0 to 4294967295, got 10000000000",
    ),
}


@pytest.mark.parametrize("case", list(TRACEBACKS))
def test_was_a_traceback_now_one_line(case, tmp_path, capsys, nothing_loads):
    make, message = TRACEBACKS[case]
    err = _tune_error([str(make(tmp_path)), "--dry-run"], capsys)
    assert message in err


ALREADY_CLEAR = {
    "adapter a number": ({"adapter": 5}, "adapter must be a preset name or a table, got 5; e.g."),
    "adapter a list": ({"adapter": ["mov"]}, "adapter must be a preset name or a table"),
    "num_experts a string": (
        {"adapter": {"preset": "mov", "num_experts": "x"}},
        "num_experts='x': must be an integer >= 1",
    ),
    "targets not a regex": (
        {"adapter": {"preset": "mov", "num_experts": 2, "targets": ["(("]}},
        "'((' is not a valid regular expression",
    ),
}


@pytest.mark.parametrize("case", list(ALREADY_CLEAR))
def test_bad_adapter_values_stay_one_line(case, tmp_path, capsys, nothing_loads):
    overrides, message = ALREADY_CLEAR[case]
    err = _tune_error([str(write_case(tmp_path, "torch", **overrides)), "--dry-run"], capsys)
    assert message in err


def _bad_file(root: Path, name: str, data: bytes) -> Path:
    path = root / name
    path.write_bytes(data)
    return path


BAD_FILES = {
    "config not UTF-8": ("c.json", b'{"steps": "\xff"}', "c.json is not valid JSON"),
    "TOML syntax error": ("c.toml", b"steps = [1,", "c.toml is not valid TOML"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_config_files_stay_one_line(case, tmp_path, capsys, nothing_loads):
    name, data, message = BAD_FILES[case]
    err = _tune_error([str(_bad_file(tmp_path, name, data))], capsys)
    assert message in err and "; fix the file" in err


def test_a_data_row_of_wrong_types_stays_one_line(tmp_path, capsys, nothing_loads):
    config = write_case(tmp_path, "torch")
    (tmp_path / "train.jsonl").write_text(json.dumps({"inputs": 5, "targets": "x"}) + "\n")
    err = _tune_error([str(config)], capsys)
    assert "train.jsonl:1: field 'inputs' must be a string, got int" in err


def test_interrupted_tune_exits_130_with_how_to_resume(tmp_path, capsys, monkeypatch):
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(tune_cli, "run", interrupted)
    assert main(["tune", str(write_case(tmp_path, "torch"))]) == 130
    err = capsys.readouterr().err
    assert "interrupted; the same command resumes the run from its last checkpoint" in err


# --- the saved config reruns the experiment from anywhere -------------------------------------


def test_relative_paths_are_taken_from_the_config_file_and_saved_absolute(tmp_path, monkeypatch):
    (tmp_path / "case").mkdir()
    write_case(tmp_path / "case", "torch")
    monkeypatch.chdir(tmp_path)
    cfg = read_config("case/torch.json")  # a relative path to the config
    (source,) = cfg.data
    assert source.path == tmp_path / "case/train.jsonl" and source.path.is_absolute()
    assert cfg.output_dir == tmp_path / "case/out-torch"
    saved = tmp_path / "case/out-torch/config.json"
    saved.parent.mkdir()
    saved.write_text(json.dumps(cfg.resolved()))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert read_config(saved) == cfg
    assert read_config("../case/out-torch/config.json") == cfg


# --- the data fingerprint -------------------------------------------------------------------


def test_sha256_of_a_file_is_sha256sum_and_of_a_folder_covers_names_and_bytes(tmp_path):
    import hashlib

    from mixlight_tune._files import sha256_of

    (tmp_path / "a.jsonl").write_bytes(b"row\n")
    assert sha256_of(tmp_path / "a.jsonl") == hashlib.sha256(b"row\n").hexdigest()
    folder = tmp_path / "ds"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "data.arrow").write_bytes(b"1")
    first = sha256_of(folder)
    (folder / "train" / "data.arrow").write_bytes(b"2")
    second = sha256_of(folder)
    shutil.move(folder / "train" / "data.arrow", folder / "train" / "other.arrow")
    assert len({first, second, sha256_of(folder)}) == 3


def test_a_marker_is_written_before_any_other_file(tmp_path):
    from mixlight_tune.output_dirs import MARKER

    kind = tune_cli.TUNE_OUTPUT
    kind.claim(tmp_path / "new" / "run", "output_dir")
    assert [p.name for p in (tmp_path / "new" / "run").iterdir()] == [MARKER]
