"""``mixlight tune`` (torch) on the shipped base given as a Hub id from a cache built here,
offline, with an evaluation list of the same items in P3's ``answer_choices`` and
``_score_eval`` layouts: both score the same accuracy, the adapter names the Hub id and
commit, and ``results.md``/``results.json`` and ``mixlight tune report`` give the paper's
table."""

import json

import pytest

import mixlight as ml
from mixlight.cli import main
from mixlight_tune.experiment import SHIPPED_BASE
from tests.p3_fixtures import COMMIT, ITEMS, choices_rows, hub_model, save_dataset, score_eval_rows
from tests.tune_case import write_case

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("datasets")

RTE = "super_glue_rte_GPT_3_style"
MODEL = "mixlight/tiny-t5"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_model(cache, MODEL, SHIPPED_BASE)
    return cache


def test_both_p3_layouts_score_alike_and_the_adapter_names_the_hub_model(tmp_path, hub_cache):
    save_dataset(tmp_path / RTE, choices_rows())
    save_dataset(tmp_path / f"{RTE}_score_eval", score_eval_rows())
    evals = [RTE, {"path": f"{RTE}_score_eval", "split": "validation"}]
    config = write_case(tmp_path, "torch", model=MODEL, eval_data=evals, steps=2)
    assert main(["tune", str(config)]) == 0
    out = tmp_path / "out-torch"
    metrics = json.loads((out / "metrics.json").read_text())
    first, second = metrics["eval"]["sources"]
    assert first["source"].endswith(RTE) and second["source"].endswith("_score_eval (validation)")
    assert first["n"] == second["n"] == len(ITEMS)  # grouped: not one example per row
    assert first["accuracy"] == second["accuracy"]
    rte = metrics["eval"]["tasks"]["rte"]
    assert rte["templates"] == {"GPT_3_style": first["accuracy"]} and rte["n"] == 2 * len(ITEMS)
    assert metrics["hub_model"]["id"] == MODEL and metrics["hub_model"]["commit"] == COMMIT
    assert metrics["config"]["model"] == MODEL
    adapter = ml.read_adapter(out / "adapter")
    assert (adapter.base_identity.name, adapter.base_identity.revision) == (MODEL, COMMIT)
    card = (out / "adapter" / "README.md").read_text()
    assert f"base_model: {MODEL}" in card and f"revision {COMMIT}" in card
    table = json.loads((out / "results.json").read_text())
    assert table["columns"] == ["rte"] and table["rows"][0]["method"] == "MoV-3"
    assert table["rows"][0]["average"] == metrics["eval"]["average"] == first["accuracy"]
    assert "| MoV-3 (out-torch) |" in (out / "results.md").read_text()


def test_report_joins_runs_and_an_uncached_model_stops_before_anything(tmp_path, hub_cache, capsys):
    save_dataset(tmp_path / RTE, choices_rows())
    runs = []
    for preset in ("mov", "ia3"):
        config = write_case(
            tmp_path, "torch", steps=0, eval_data=RTE, output_dir=preset, adapter=preset
        )
        assert main(["tune", str(config)]) == 0
        runs.append(str(tmp_path / preset))
    capsys.readouterr()
    assert main(["tune", "report", *runs, "--out", str(tmp_path / "table.md")]) == 0
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert lines[2] == "| Method | % params | rte | Avg |"
    assert lines[4].startswith(f"| MoV-10 ({runs[0]}) |")
    assert lines[5].startswith(f"| IA3 ({runs[1]}) |")
    config = write_case(tmp_path, "torch", model="mixlight/absent", output_dir="never")
    assert main(["tune", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixlight tune: error: model 'mixlight/absent' is not in the Hub cache")
    assert "\n" not in err and not (tmp_path / "never").exists()
