"""``mixlight tune`` with ``backend = "torch"``: a few steps on the shipped base write the
adapter, the metrics and the resolved config; ``--dry-run`` trains and writes nothing; a bad
config exits 2 with the key at fault."""

import json

import pytest

import mixlight as ml
from mixlight.cli import main
from tests.tune_case import ROWS, write_case

pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_a_few_steps_write_adapter_metrics_and_config(tmp_path, capsys):
    config = write_case(tmp_path, "torch")
    assert main(["tune", str(config)]) == 0
    out = tmp_path / "out-torch"
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["losses"]) == 3 and metrics["losses"][-1] < metrics["losses"][0]
    assert metrics["eval"]["tasks"]["parity"]["n"] == len(ROWS)
    assert 0 < metrics["trainable_percent"] < 100
    assert metrics["config"]["backend"] == "torch"
    adapter = ml.read_adapter(out / "adapter")
    assert adapter.config == ml.MoV(3)
    assert not all((a == 1).all() for k, a in adapter.arrays.items() if k.endswith(".vectors"))
    assert json.loads((out / "config.json").read_text()) == metrics["config"]
    assert "final loss" in capsys.readouterr().out


def test_dry_run_prints_the_resolved_config_and_writes_nothing(tmp_path, capsys):
    config = write_case(tmp_path, "torch")
    assert main(["tune", str(config), "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["adapter"] == {"config": ml.MoV(3).to_dict()}
    assert printed["steps"] == 3 and printed["backend"] == "torch"
    assert 0 < printed["trainable_percent"] < 100
    assert not (tmp_path / "out-torch").exists()


def test_bad_config_exits_2_naming_the_key(tmp_path, capsys):
    config = write_case(tmp_path, "torch", optimizer="lion")
    assert main(["tune", str(config)]) == 2
    assert 'optimizer must be "adafactor" or "adamw" or "sgd"' in capsys.readouterr().err


def test_full_fine_tuning_is_adapter_full(tmp_path):
    """``adapter = "full"``: every weight trains (the paper's baseline row), the run reports
    100% trainable and its evaluation, saves no adapter, and its resolved config reads back
    as the same config; FSDP2 is refused before loading."""
    from mixlight_tune.results import run_row
    from mixlight_tune.tune_cli import run
    from mixlight_tune.tune_config import TuneConfigError, read_config

    cfg = read_config(write_case(tmp_path, "torch", adapter="full"))
    assert cfg.adapter is None and cfg.resolved()["adapter"] == "full"
    metrics = run(cfg, lambda _: None)
    assert metrics["trainable_percent"] == 100.0 and metrics["adapter"] is None
    assert len(metrics["losses"]) == 3 and metrics["eval"]["average"] >= 0
    saved = json.loads((tmp_path / "out-torch" / "config.json").read_text())
    assert saved["adapter"] == "full" and read_config(tmp_path / "out-torch" / "config.json")
    assert run_row(metrics, "full")["method"] == "Full FT"
    with pytest.raises(TuneConfigError, match='adapter = "full" with distributed = "fsdp"'):
        read_config(write_case(tmp_path, "torch", adapter="full", distributed="fsdp"))
