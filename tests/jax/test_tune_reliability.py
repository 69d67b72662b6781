"""``mixlight tune`` with ``backend = "jax"``: a model that cannot load and targets that match
nothing are one-line errors (exit 2), as in torch, not tracebacks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")
pytest.importorskip("sentencepiece")

from mixlight.cli import main  # noqa: E402
from mixlight_tune import experiment  # noqa: E402
from tests.tune_case import write_case  # noqa: E402


def _one_line_error(config: Path, capsys) -> str:
    assert main(["tune", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixlight tune: error: ") and err.count("\n") == 1, err
    return err


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
    shutil.copytree(experiment.SHIPPED_BASE, tmp_path / "t5")
    BROKEN_MODELS[case](tmp_path / "t5")
    err = _one_line_error(write_case(tmp_path, "jax", model="t5"), capsys)
    assert f"model = {tmp_path / 't5'}: could not load the checkpoint (" in err


def test_targets_that_match_nothing_are_one_line(tmp_path, capsys):
    adapter = {"preset": "mov", "num_experts": 2, "targets": ["nothing_here"]}
    err = _one_line_error(write_case(tmp_path, "jax", adapter=adapter), capsys)
    assert "adapter MoV-2 does not fit this model" in err and "nothing_here" in err
