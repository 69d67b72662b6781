"""``mixlight tune`` with ``backend = "jax"`` loads a Hub model id from a cache built here
(offline) and scores P3's ``_score_eval`` layout as the examples it describes; the adapter
names the Hub id."""

import json

import pytest

import mixlight as ml
from mixlight.cli import main
from mixlight_tune.experiment import SHIPPED_BASE
from tests.p3_fixtures import ITEMS, hub_model, save_dataset, score_eval_rows
from tests.tune_case import write_case

pytest.importorskip("jax")
pytest.importorskip("transformers")
pytest.importorskip("datasets")

MODEL = "mixlight/tiny-t5"


def test_a_hub_model_and_score_eval_rows_in_jax(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_model(tmp_path / "hub", MODEL, SHIPPED_BASE)
    save_dataset(tmp_path / "super_glue_rte_GPT_3_style_score_eval", score_eval_rows())
    evals = "super_glue_rte_GPT_3_style_score_eval"
    config = write_case(tmp_path, "jax", model=MODEL, eval_data=evals, steps=0)
    assert main(["tune", str(config)]) == 0
    out = tmp_path / "out-jax"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["tasks"]["rte"]["n"] == len(ITEMS)
    assert ml.read_adapter(out / "adapter").base_identity.name == MODEL
