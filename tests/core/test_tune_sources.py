"""``mixlight tune``'s data sources, Hub ids, P3 layouts, evaluation suites and results table,
without a framework: sources parse from the config and read into examples (JSONL, ``datasets``
folders, Hub datasets from a cache built here, offline), P3's subset names give task and
template, ``_score_eval`` rows group into examples, bad input is one line naming the source
and the fix, and runs join into the paper's table."""

import json

import pytest

from mixlight_tune import hub, p3
from mixlight_tune.data_files import load_examples
from mixlight_tune.report import eval_scores, score_table
from mixlight_tune.results import main as report_main
from mixlight_tune.results import markdown, run_row
from mixlight_tune.schema import Example
from mixlight_tune.sources import DataSource
from mixlight_tune.suites import P3_ID, P3_REVISION, SUITES
from mixlight_tune.tune_cli import _check_model, eval_columns, load_data
from mixlight_tune.tune_config import TuneConfigError, parse
from tests.p3_fixtures import (
    COMMIT,
    ITEMS,
    choices_rows,
    hub_dataset,
    hub_model,
    save_dataset,
    score_eval_rows,
    write_jsonl,
)

RTE = "super_glue_rte_GPT_3_style"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hub cache (and datasets cache) under ``tmp_path``, offline."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


# --- P3's naming rule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "task", "template"),
    [
        ("super_glue_rte_GPT_3_style", "rte", "GPT_3_style"),
        ("super_glue_rte_GPT_3_style_score_eval", "rte", "GPT_3_style"),
        ("anli_can_we_infer_r2_score_eval", "anli_r2", "can_we_infer"),
        ("hellaswag_Predict_ending_with_hint", "hellaswag", "Predict_ending_with_hint"),
        ("winogrande_winogrande_xl_fill_in_the_blank", "winogrande", "fill_in_the_blank"),
        ("story_cloze_2016_Choose_Story_Ending", "story_cloze", "Choose_Story_Ending"),
        ("super_glue_wsc.fixed_GPT_3_Style", "wsc", "GPT_3_Style"),
        ("super_glue_copa__why_C1_or_C2", "copa", "_why_C1_or_C2"),
        ("glue_mrpc_equivalent", "mrpc", "equivalent"),  # not taken for super_glue_...
        ("cos_e_v1.11_rationale", "cos_e", "rationale"),
        ("super_glue_rte", "rte", None),
        ("my_data", "my_data", None),  # no known prefix: the name is the task
    ],
)
def test_p3_subset_names_split_into_task_and_template(name, task, template):
    assert p3.split_name(name) == (task, template)


def test_task_and_template_come_from_config_then_columns_then_the_name(tmp_path):
    rows = choices_rows(ITEMS[:2])
    rows[1] |= {"task": "mine", "template": "t9"}
    path = write_jsonl(tmp_path / f"{RTE}.jsonl", rows)
    named = load_examples(path)
    assert [(e.task, e.template) for e in named] == [("rte", "GPT_3_style"), ("mine", "t9")]
    cfg = parse({"data": [{"path": path.name, "task": "x", "template": "y"}]}, base_dir=tmp_path)
    assert {(e.task, e.template) for e in load_data(cfg)[0]} == {("x", "y")}
    plain = load_examples(write_jsonl(tmp_path / "plain.jsonl", rows[:1]))
    assert (plain[0].task, plain[0].template) == ("plain", "default")


# --- _score_eval rows are the examples they describe -----------------------------------------


def test_score_eval_rows_group_into_the_answer_choices_examples(tmp_path):
    pytest.importorskip("datasets")
    choices = load_examples(save_dataset(tmp_path / RTE, choices_rows()))
    scored = load_examples(save_dataset(tmp_path / f"{RTE}_score_eval", score_eval_rows()))
    assert len(scored) == len(ITEMS) and scored == choices  # same task, template, choices
    assert scored[0] == Example("rte", "GPT_3_style", ITEMS[0][0], "yes", ("yes", "no"), 0)
    from_jsonl = load_examples(write_jsonl(tmp_path / "se.jsonl", score_eval_rows(seed=3)))
    assert [e.choices for e in from_jsonl] == [e.choices for e in choices]


def _bad_rows(kind):
    rows = score_eval_rows(ITEMS[:2], seed=1)
    first = [r for r in rows if r["idx"][0] == 0]
    if kind == "no is_correct":
        del rows[0]["is_correct"]
    elif kind == "two correct":
        for r in first:
            r["is_correct"] = True
    elif kind == "none correct":
        for r in first:
            r["is_correct"] = False
    elif kind == "missing choice":
        rows.remove(first[0] if first[0]["idx"][1] == 0 else first[1])
    elif kind == "bad idx":
        rows[0]["idx"] = [0]
    elif kind == "other prompt":
        first[1]["inputs_pretokenized"] = "another prompt"
    elif kind == "repeated":
        rows.append(dict(first[0]))
    return rows


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("no is_correct", r"row without 'is_correct'"),
        ("two correct", r"example 0 has 2 correct choices"),
        ("none correct", r"example 0 has no correct choice"),
        ("missing choice", r"example 0 lacks choice\(s\) \[0\]"),
        ("bad idx", r"needs idx = \[example, choice\]"),
        ("other prompt", r"example 0's rows have different inputs"),
        ("repeated", r"idx \[0, \d\] is repeated"),
    ],
)
def test_bad_score_eval_sets_are_one_line_naming_source_and_fix(tmp_path, kind, message):
    path = write_jsonl(tmp_path / "rte_score_eval.jsonl", _bad_rows(kind))
    cfg = parse({"eval_data": path.name}, base_dir=tmp_path)
    with pytest.raises(TuneConfigError, match=message) as err:
        load_data(cfg)
    text = str(err.value)
    assert text.startswith("eval_data: ") and str(path) in text and "\n" not in text
    assert "idx = [example, choice]" in text or "idx" in text


def test_an_eval_set_without_choices_is_refused_naming_it(tmp_path):
    write_jsonl(tmp_path / "gen.jsonl", [{"inputs": "Say hi.", "targets": "hi"}])
    write_jsonl(tmp_path / "ok.jsonl", choices_rows(ITEMS[:1]))
    cfg = parse({"eval_data": ["ok.jsonl", "gen.jsonl"]}, base_dir=tmp_path)
    with pytest.raises(TuneConfigError, match=r"^eval_data = .*gen.jsonl: no rows with answer"):
        load_data(cfg)


# --- sources in the config ----------------------------------------------------------------


def test_sources_parse_as_strings_tables_or_lists_and_read_back(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", choices_rows(ITEMS[:2]))
    raw = {
        "data": ["a.jsonl", {"path": "a.jsonl", "task": "t"}, "owner/dataset"],
        "eval_data": {"path": "owner/p3", "name": RTE, "split": "validation", "revision": "v1"},
    }
    cfg = parse(raw, base_dir=tmp_path)
    assert cfg.data == (
        DataSource(tmp_path / "a.jsonl"),
        DataSource(tmp_path / "a.jsonl", task="t"),
        DataSource("owner/dataset"),
    )
    assert cfg.eval_data == (DataSource("owner/p3", "validation", RTE, "v1"),)
    assert parse(json.loads(json.dumps(cfg.resolved())), base_dir=tmp_path / "x") == cfg
    one = parse({"data": "a.jsonl"}, base_dir=tmp_path)
    assert one.resolved()["data"] == str(tmp_path / "a.jsonl")  # as before: a plain path


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"data": []}, r"data is an empty list"),
        ({"data": 3}, r"data must be a path or Hub id"),
        ({"data": [{"split": "train"}]}, r"data\[0\]: no path"),
        ({"data": [{"path": "a.jsonl", "splt": "x"}]}, r"data\[0\]: unknown key\(s\) splt"),
        ({"data": [{"path": "a.jsonl", "split": "train"}]}, r"data\[0\]\.split applies to a"),
        ({"data": [{"path": "a.jsonl", "revision": "v1"}]}, r"revision applies to a Hub"),
        ({"data": "no/such/file.jsonl"}, r"data = 'no/such/file.jsonl': nothing at"),
        ({"eval_suite": "t0"}, r"eval_suite name must be one of t0_held_out"),
        ({"revision": "v1"}, r"revision applies to a Hub model id"),
        ({"eval_every": 2}, r"eval_every needs eval_data or eval_suite"),
    ],
)
def test_bad_sources_name_the_key_and_the_fix(tmp_path, raw, message):
    write_jsonl(tmp_path / "a.jsonl", choices_rows(ITEMS[:1]))
    with pytest.raises(TuneConfigError, match=message):
        parse(raw, base_dir=tmp_path)


def test_missing_split_lists_the_splits_there_are(tmp_path):
    pytest.importorskip("datasets")
    save_dataset(tmp_path / RTE, choices_rows())
    cfg = parse({"eval_data": {"path": RTE, "split": "test"}}, base_dir=tmp_path)
    with pytest.raises(TuneConfigError, match=r"no split 'test'; it has \['validation'\]"):
        load_data(cfg)


# --- Hub ids, from a cache, offline ---------------------------------------------------------


def test_a_cached_hub_dataset_reads_offline_by_id(tmp_path, hub_cache):
    pytest.importorskip("datasets")
    hub_dataset(hub_cache, "owner/p3mini", {f"{RTE}_score_eval": {"validation": score_eval_rows()}})
    cfg = parse(
        {"eval_data": {"path": "owner/p3mini", "name": f"{RTE}_score_eval", "split": "validation"}},
        base_dir=tmp_path,
    )
    _, evals = load_data(cfg)
    assert evals == load_examples(write_jsonl(tmp_path / f"{RTE}.jsonl", choices_rows()))
    assert cfg.eval_data[0].digest() == f"hub:{COMMIT}"
    bad = parse({"eval_data": {"path": "owner/p3mini", "name": f"{RTE}_score_eval",
                               "split": "test"}}, base_dir=tmp_path)  # fmt: skip
    with pytest.raises(TuneConfigError, match=r"has no split 'test'; it has \['validation'\]"):
        load_data(bad)


def test_an_uncached_hub_dataset_offline_is_one_line_naming_id_and_fix(tmp_path, hub_cache):
    pytest.importorskip("datasets")
    cfg = parse({"eval_data": {"path": "owner/absent", "split": "validation"}}, base_dir=tmp_path)
    with pytest.raises(TuneConfigError) as err:
        load_data(cfg)
    text = str(err.value)
    assert "owner/absent" in text and "HF_HUB_OFFLINE" in text and "hf download" in text
    assert "\n" not in text


def test_a_hub_model_resolves_from_the_cache_and_an_uncached_one_is_refused(tmp_path, hub_cache):
    pytest.importorskip("huggingface_hub")
    source = tmp_path / "t5"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (source / "spiece.model").write_bytes(b"x")
    (source / "model.safetensors").write_bytes(b"x")
    folder = hub_model(hub_cache, "owner/tiny-t5", source)
    cfg = parse({"model": "owner/tiny-t5"}, base_dir=tmp_path)
    assert cfg.model == "owner/tiny-t5" and cfg.resolved()["model"] == "owner/tiny-t5"
    snapshot = hub.resolve_model("owner/tiny-t5", None)
    assert (snapshot.folder, snapshot.commit) == (folder, COMMIT)
    _check_model(cfg)  # a complete T5 folder
    absent = parse({"model": "owner/absent", "revision": "v2"}, base_dir=tmp_path)
    with pytest.raises(TuneConfigError, match=r"model 'owner/absent' at revision 'v2' is not in "
                       r"the Hub cache .* HF_HUB_OFFLINE is set: download it .*hf download "
                       r"owner/absent.* or pass a local folder"):  # fmt: skip
        _check_model(absent)


def test_hub_ids_are_told_from_paths():
    assert hub.is_hub_id("google/t5-xl-lm-adapt") and hub.is_hub_id("t5-small")
    assert not any(map(hub.is_hub_id, ["a/b/c", "train.jsonl", "../x", "./x", "/abs"]))


# --- the T0 held-out suite ------------------------------------------------------------------


def test_t0_held_out_expands_to_the_papers_datasets_and_splits(tmp_path):
    cfg = parse({"eval_suite": "t0_held_out"}, base_dir=tmp_path)
    sources = cfg.eval_suite.sources()
    counts = {}
    for s in sources:
        assert (s.path, s.split, s.revision) == (P3_ID, "validation", P3_REVISION)
        assert p3.is_score_eval(s.name)
        task, template = p3.split_name(s.name)
        assert template
        counts[task] = counts.get(task, 0) + 1
    nli = {"anli_r1": 15, "anli_r2": 15, "anli_r3": 15, "cb": 15, "rte": 10}
    rest = {"wsc": 10, "wic": 10, "copa": 12, "winogrande": 5, "hellaswag": 4}
    assert counts == nli | rest
    assert list(eval_columns(cfg)) == ["ANLI", "CB", "RTE", "WSC", "WiC", "COPA", "WNG", "HS"]
    assert cfg.resolved()["eval_suite"] == "t0_held_out"
    everything = SUITES["t0_held_out_all"]
    assert everything[-1].tasks == ("story_cloze",) and len(everything[-1].subsets) == 5


def test_a_suite_reads_from_a_local_folder_of_subsets(tmp_path):
    (tmp_path / "p3").mkdir()
    cfg = parse({"eval_suite": {"name": "t0_held_out", "path": "p3"}}, base_dir=tmp_path)
    first = cfg.eval_suite.sources()[0]
    assert first == DataSource(tmp_path / "p3" / "anli_GPT_3_style_r1_score_eval", "validation")
    assert parse(cfg.resolved(), base_dir=tmp_path / "elsewhere") == cfg


# --- scores and the results table -----------------------------------------------------------


def test_grouped_columns_average_their_tasks_medians():
    hits = [("anli_r1", "a", 1), ("anli_r1", "b", 0), ("anli_r2", "a", 0), ("rte", "a", 1)]
    table = score_table(hits, {"ANLI": ("anli_r1", "anli_r2", "anli_r3")})
    assert table["columns"] == {"ANLI": 0.25, "rte": 1.0} and table["average"] == 0.625
    assert score_table(hits)["average"] == pytest.approx((0.5 + 0 + 1) / 3)


def test_eval_scores_keep_each_sources_accuracy():
    examples = [Example("t", "a", "q", "y", ("y", "n"), 0, source=s) for s in "xxy"]
    table = eval_scores(examples, [1.0, 0.0, 1.0], {})
    assert table["sources"] == [
        {"source": "x", "n": 2, "accuracy": 0.5},
        {"source": "y", "n": 1, "accuracy": 1.0},
    ]


def _metrics(method, columns, percent):
    tasks = {c: {"median": v, "templates": {}, "n": 1} for c, v in columns.items()}
    average = sum(columns.values()) / len(columns)
    return {
        "config": {"backend": "torch", "adapter": {"config": {"method": method}}},
        "trainable_percent": percent,
        "eval": {"tasks": tasks, "columns": columns, "average": average},
    }


def test_report_joins_runs_into_the_papers_layout(tmp_path, capsys):
    for name, method, cols, pct in (
        ("mov", "MoV-10", {"ANLI": 0.4, "CB": 0.75}, 0.32),
        ("ia3", "IA3", {"ANLI": 0.3, "RTE": 0.6}, 0.018),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(_metrics(method, cols, pct)))
    runs = [str(tmp_path / "mov"), str(tmp_path / "ia3")]
    assert report_main(runs) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| Method | % params | ANLI | CB | RTE | Avg |"
    assert lines[4].startswith("| MoV-10 (") and lines[4].endswith(
        "| 0.32% | 40.0 | 75.0 | – | 57.5 |"
    )
    assert lines[5].endswith("| 0.018% | 30.0 | – | 60.0 | 45.0 |")
    assert report_main([*runs, "--out", str(tmp_path / "t.json")]) == 0
    joined = json.loads((tmp_path / "t.json").read_text())
    assert joined["columns"] == ["ANLI", "CB", "RTE"] and len(joined["rows"]) == 2
    assert report_main([str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err


def test_a_run_row_without_columns_uses_its_task_medians():
    metrics = _metrics("MoV-10", {"rte": 0.5}, 1.0)
    del metrics["eval"]["columns"]
    row = run_row(metrics, "r")
    assert row["columns"] == {"rte": 0.5} and "| 50.0 | 50.0 |" in markdown([row])
