"""A killed ``mixlight tune`` run (torch) restarted with the same config continues from its
last checkpoint and ends with the adapter of an uninterrupted run; a changed config is
refused, naming the field."""

import json

import numpy as np
import pytest

import mixlight as ml
from mixlight.cli import main
from mixlight_tune.tune_cli import TUNE_OUTPUT
from tests.tune_case import interrupted_then_resumed, write_case

pytest.importorskip("transformers")


@pytest.mark.parametrize("optimizer", ["adafactor", "adamw"])
def test_resumed_run_ends_with_the_uninterrupted_adapter(tmp_path, monkeypatch, optimizer):
    whole, resumed = interrupted_then_resumed(tmp_path, "torch", monkeypatch, optimizer=optimizer)
    assert resumed["losses"] == whole["losses"] and len(whole["losses"]) == 7
    a = ml.read_adapter(tmp_path / "whole/out-torch/adapter").arrays
    b = ml.read_adapter(tmp_path / "split/out-torch/adapter").arrays
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not all((v == 1).all() for k, v in a.items() if k.endswith(".vectors"))


def test_a_changed_config_is_refused_naming_the_field(tmp_path, capsys):
    config = write_case(tmp_path, "torch", steps=3, checkpoint_every=1, eval_data=None)
    assert main(["tune", str(config)]) == 0
    checkpoint = tmp_path / "out-torch/checkpoint.safetensors"
    assert checkpoint.is_file()
    raw = json.loads(config.read_text())
    config.write_text(json.dumps(raw | {"lr": 0.02}))
    capsys.readouterr()
    assert main(["tune", str(config)]) == 2
    err = capsys.readouterr().err
    assert "lr: checkpoint 0.01, config 0.02" in err and "output_dir" in err
    # what a run may change without losing its place: the progress bars
    config.write_text(json.dumps(raw | {"progress": False, "steps": 3}))
    assert main(["tune", str(config)]) == 0


def test_a_changed_adapter_is_named_by_its_field(tmp_path, capsys):
    config = write_case(tmp_path, "torch", steps=1, checkpoint_every=1, eval_data=None)
    assert main(["tune", str(config)]) == 0
    raw = json.loads(config.read_text())
    config.write_text(json.dumps(raw | {"adapter": {"preset": "mov", "num_experts": 4}}))
    capsys.readouterr()
    assert main(["tune", str(config)]) == 2
    assert "adapter.config.num_experts: checkpoint 3, config 4" in capsys.readouterr().err


def test_a_damaged_checkpoint_is_refused_with_the_fix(tmp_path, capsys):
    config = write_case(tmp_path, "torch", steps=1, checkpoint_every=1, eval_data=None)
    checkpoint = tmp_path / "out-torch/checkpoint.safetensors"
    TUNE_OUTPUT.claim(checkpoint.parent, "output_dir")  # a run folder whose checkpoint broke
    checkpoint.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    assert main(["tune", str(config)]) == 2
    err = capsys.readouterr().err
    assert "is not a readable checkpoint" in err and "delete it to start over" in err
