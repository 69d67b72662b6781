"""Tests for the framework-free demo parts: suite, span corruption, tokenizer, data files,
report math and plots."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import string
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixlight_tune.miniature import world
from mixlight_tune.miniature.corpus import pretraining_corpus
from mixlight_tune.data_files import load_examples
from mixlight_tune.miniature.held_out_tasks import HELD_OUT_TASKS
from mixlight_tune.report import aggregate_seeds, format_table, score_table, write_results
from mixlight_tune.schema import Example, Item
from mixlight_tune.miniature.suite import ALL_TASKS, build_suite, span_corruption
from mixlight_tune.miniature.train_tasks import TRAIN_TASKS

SENTINELS = list(range(3, 23))


@pytest.fixture(scope="module")
def suite():
    return build_suite(seed=0, train_per_task=60, eval_per_template=30)


@pytest.fixture(scope="module")
def corpus():
    return pretraining_corpus(seed=0, n_sentences=3000)


# --- imports -------------------------------------------------------------------------------


def _suite_digest() -> str:
    return hashlib.sha256(repr(build_suite(5, 5, 2)).encode()).hexdigest()


def test_light_imports_and_same_data_in_another_process():
    """Importing the demo pulls in no framework, and data does not depend on hash seeds."""
    code = (
        "import sys, mixlight\n"
        "before = set(sys.modules)\n"
        "import mixlight_tune, mixlight_tune.miniature.suite, mixlight_tune.tokenizer\n"
        "import mixlight_tune.data_files, mixlight_tune.report, mixlight_tune.plots\n"
        "heavy = ('torch', 'jax', 'matplotlib', 'sentencepiece', 'datasets')\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in heavy))\n"
        "import hashlib\n"
        "print(hashlib.sha256(repr(mixlight_tune.build_suite(5, 5, 2)).encode()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["[]", _suite_digest()]


# --- suite ---------------------------------------------------------------------------------


def test_same_seed_same_data_and_different_seed_differs():
    a = build_suite(seed=3, train_per_task=10, eval_per_template=5)
    b = build_suite(seed=3, train_per_task=10, eval_per_template=5)
    c = build_suite(seed=4, train_per_task=10, eval_per_template=5)
    assert a == b
    assert a.train != c.train and a.eval != c.eval
    assert pretraining_corpus(1, 50) == pretraining_corpus(1, 50) != pretraining_corpus(2, 50)


def test_task_counts_templates_and_families(suite):
    assert len(suite.train_tasks) >= 20 and len(suite.held_out_tasks) >= 6
    assert not set(suite.train_tasks) & set(suite.held_out_tasks)
    assert all(len(t.templates) >= 3 for t in ALL_TASKS)
    assert all(not t.held_out for t in TRAIN_TASKS) and all(t.held_out for t in HELD_OUT_TASKS)
    assert len({suite.families[t] for t in suite.train_tasks}) >= 5
    assert set(suite.families) == set(suite.train_tasks) | set(suite.held_out_tasks)


def test_every_template_is_used_in_the_right_split(suite):
    train_pairs = Counter((e.task, e.template) for e in suite.train)
    eval_pairs = Counter((e.task, e.template) for e in suite.eval)
    for task in TRAIN_TASKS:
        assert {(task.name, t.name) for t in task.templates} <= set(train_pairs)
        assert sum(train_pairs[task.name, t.name] for t in task.templates) == 60
    for task in HELD_OUT_TASKS:
        assert all(eval_pairs[task.name, t.name] == 30 for t in task.templates)
    assert {e.task for e in suite.train} == set(suite.train_tasks)
    assert {e.task for e in suite.eval} == set(suite.held_out_tasks)


def _literal_fragments(template_text: str) -> list[str]:
    """The fixed text between placeholders, long enough to be distinctive."""
    parts = (literal.strip(" .,:?") for literal, *_ in string.Formatter().parse(template_text))
    return [p for p in parts if len(p) >= 8]


def _template_pattern(template_text: str) -> re.Pattern[str]:
    """A regex matching any rendering of the template."""
    parts = string.Formatter().parse(template_text)
    return re.compile(
        "".join(re.escape(lit) + (".+?" if field else "") for lit, field, *_ in parts)
    )


def test_no_held_out_template_text_in_training_inputs_or_corpus(suite, corpus):
    seen = "\n".join([e.inputs for e in suite.train] + corpus)
    for task in HELD_OUT_TASKS:
        for template in task.templates:
            pattern = _template_pattern(template.text)
            assert not any(pattern.fullmatch(e.inputs) for e in suite.train), template.text
            fragments = _literal_fragments(template.text)
            assert fragments, f"{task.name}/{template.name} has no distinctive text"
            for fragment in fragments:
                assert fragment not in seen, f"{task.name}/{template.name}: {fragment!r} leaks"


def _check_choice_item(e: Example) -> None:
    assert e.choices is not None and e.answer is not None
    assert 2 <= len(e.choices) <= 4, e
    assert len(set(e.choices)) == len(e.choices), e
    assert 0 <= e.answer < len(e.choices) and e.targets == e.choices[e.answer], e


def test_held_out_examples_are_valid_rank_classification_items(suite):
    for e in suite.eval:
        _check_choice_item(e)


def test_training_examples_with_choices_are_consistent(suite):
    scored = [e for e in suite.train if e.choices is not None]
    assert len({e.task for e in scored}) >= 10
    for e in scored:
        _check_choice_item(e)


def test_inputs_and_targets_are_short(suite):
    for e in suite.train + suite.eval:
        assert len(e.inputs.split()) <= 40, e.inputs
        assert 1 <= len(e.targets.split()) <= 8, e.targets


def test_answers_are_not_degenerate(suite):
    for name in suite.held_out_tasks + suite.train_tasks:
        answers = Counter(e.targets for e in suite.train + suite.eval if e.task == name)
        assert len(answers) >= 2, name
        assert max(answers.values()) / sum(answers.values()) < 0.8, (name, answers)


def _ages(item: Item) -> dict[str, int]:
    return {item.fields["a"]: int(item.fields["n"]), item.fields["b"]: int(item.fields["m"])}


def _answer(item: Item) -> str:
    assert item.choices is not None and item.answer is not None
    return item.choices[item.answer]


def _premise_facts(premise: str) -> set[str]:
    """Claims a premise states, in the clause form the generators use."""
    facts = set()
    for sentence in premise.rstrip(".").split(". "):
        for clause in sentence.split(" and "):
            person, _, rest = clause.partition(" is at the ")
            if rest:
                place, _, owned = rest.partition(" with ")
                facts.add(f"{person} is at the {place}")
                if owned:
                    facts.add(f"{person} has {owned}")
            else:
                facts.add(clause)
    return facts


SEMANTIC_CHECKS = {
    "younger_of_two": lambda it: _ages(it)[_answer(it)] == min(_ages(it).values()),
    "older_of_two": lambda it: _ages(it)[_answer(it)] == max(_ages(it).values()),
    "who_has_more": lambda it: _ages(it)[_answer(it)] == max(_ages(it).values()),
    "larger_number": lambda it: int(_answer(it)) == max(map(int, it.choices)),
    "which_is_inside": lambda it: (
        [c in it.fields["items"].split(", ") for c in it.choices]
        == [i == it.answer for i in range(2)]
    ),
    "animal_home_choice": lambda it: (
        [
            next(a for a in world.ANIMALS if a.name == c).home == it.fields["home"]
            for c in it.choices
        ]
        == [i == it.answer for i in range(3)]
    ),
    "biggest_animal": lambda it: (
        max(it.choices, key=lambda c: next(a.size for a in world.ANIMALS if a.name == c))
        == _answer(it)
    ),
    "whose_colour": lambda it: it.fields["colour"] == (it.fields["c1"], it.fields["c2"])[it.answer],
    "claim_check": lambda it: (
        (it.fields["claim"] in _premise_facts(it.fields["premise"])) == (it.answer == 0)
    ),
    "possession_nli": lambda it: (
        (it.fields["claim"] in _premise_facts(it.fields["premise"])) == (it.answer == 0)
    ),
    "location_nli": lambda it: (
        (it.fields["claim"] in _premise_facts(it.fields["premise"])) == (it.answer == 0)
    ),
    "membership": lambda it: (
        (it.fields["obj"] in it.fields["items"].split(", ")) == (it.answer == 0)
    ),
}


@pytest.mark.parametrize("name", sorted(SEMANTIC_CHECKS))
def test_generated_answers_are_right(name):
    task = next(t for t in ALL_TASKS if t.name == name)
    rng = random.Random(name)
    for _ in range(200):
        item = task.generate(rng)
        assert SEMANTIC_CHECKS[name](item), item


# --- span corruption -----------------------------------------------------------------------


def _reconstruct(inputs: list[int], targets: list[int]) -> list[int]:
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets:
        if t in SENTINELS:
            current = spans.setdefault(t, [])
        else:
            current.append(t)
    return [tok for i in inputs for tok in (spans[i] if i in SENTINELS else [i])]


@settings(max_examples=150, deadline=None)
@given(
    ids=st.lists(st.integers(100, 200), min_size=0, max_size=80),
    seed=st.integers(0, 2**16),
    density=st.floats(0.05, 0.6),
    mean_span=st.floats(1.0, 5.0),
)
def test_span_corruption_reconstructs_and_orders_sentinels(ids, seed, density, mean_span):
    inputs, targets = span_corruption(ids, random.Random(seed), SENTINELS, density, mean_span)
    again = span_corruption(ids, random.Random(seed), SENTINELS, density, mean_span)
    assert (inputs, targets) == again
    assert _reconstruct(inputs, targets) == ids
    used = [t for t in inputs if t in SENTINELS]
    assert used == SENTINELS[: len(used)]
    assert [t for t in targets if t in SENTINELS] == SENTINELS[: len(used) + 1]
    if len(ids) >= 2:
        noise = [t for t in targets if t not in SENTINELS]
        assert noise and len(noise) < len(ids)
        assert inputs[0] not in SENTINELS  # like T5, a sequence starts with kept tokens


def test_span_corruption_noise_amount():
    ids = list(range(100, 200))
    inputs, targets = span_corruption(ids, random.Random(0), SENTINELS, 0.15, 3.0)
    assert sum(t not in SENTINELS for t in targets) == 15
    assert sum(t in SENTINELS for t in inputs) == 5


# --- tokenizer -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(suite, corpus):
    pytest.importorskip("sentencepiece")
    from mixlight_tune.tokenizer import train_tokenizer

    return train_tokenizer(corpus + [e.inputs for e in suite.train], vocab_size=512)


def test_tokenizer_ids_round_trip_and_sentinels(tokenizer, suite):
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2)
    assert tokenizer.vocab_size <= 512
    assert len(tokenizer.sentinel_ids) == 20 and len(set(tokenizer.sentinel_ids)) == 20
    for e in suite.eval[::97] + suite.train[::301]:
        ids = tokenizer.encode(e.inputs)
        assert ids[-1] == tokenizer.eos_id and tokenizer.unk_id not in ids
        assert tokenizer.decode(ids + [tokenizer.pad_id] * 3) == e.inputs
    assert tokenizer.sentinel_ids[0] in tokenizer.encode("<extra_id_0> cat")


def test_tokenizer_save_load_and_deterministic_training(tokenizer, corpus, suite, tmp_path):
    from mixlight_tune.tokenizer import Tokenizer, train_tokenizer

    path = tokenizer.save(tmp_path / "sub" / "spm.model")
    loaded = Tokenizer.load(path)
    text = suite.eval[0].inputs
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.sentinel_ids == tokenizer.sentinel_ids
    assert [p.name for p in path.parent.iterdir()] == ["spm.model"]
    again = train_tokenizer(corpus + [e.inputs for e in suite.train], 512, tmp_path / "b.model")
    assert (tmp_path / "b.model").read_bytes() == path.read_bytes() == again._proto
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path / "missing.model")


# --- data files ----------------------------------------------------------------------------


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_good_rows(tmp_path):
    rows = [
        {"inputs": "Is it red?", "targets": " yes", "answer_choices": ["yes", "no"],
         "task": "rte", "template": "t1"},
        {"inputs": "Say hi.", "targets": "hi", "dataset": "greet"},
        {"inputs": "Count: a b", "targets": "2"},
    ]  # fmt: skip
    path = _write_jsonl(tmp_path / "mine.jsonl", [json.dumps(r) for r in rows[:2]] + [""])
    path.write_text(path.read_text() + json.dumps(rows[2]) + "\n")
    examples = load_examples(path)
    assert examples == [
        Example("rte", "t1", "Is it red?", "yes", ("yes", "no"), 0),
        Example("greet", "default", "Say hi.", "hi"),
        Example("mine", "default", "Count: a b", "2"),
    ]


BAD_ROWS = {
    "bad JSON": ('{"inputs": "x", "targets": ', "bad JSON"),
    "not an object": ('["x", "y"]', "JSON object"),
    "missing inputs": ('{"targets": "y"}', "missing field 'inputs'"),
    "missing targets": ('{"inputs": "x"}', "missing field 'targets'"),
    "wrong type": ('{"inputs": "x", "targets": 3}', "'targets' must be a string"),
    "choices not a list": ('{"inputs": "x", "targets": "y", "answer_choices": "y"}', "list"),
    "target not a choice": (
        '{"inputs": "x", "targets": "y", "answer_choices": ["a", "b"]}',
        "not among answer_choices",
    ),
    "duplicate choices": (
        '{"inputs": "x", "targets": "a", "answer_choices": ["a", "a"]}',
        "duplicates",
    ),
    "empty task": ('{"inputs": "x", "targets": "y", "task": ""}', "'task'"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_load_jsonl_malformed_row_names_file_and_line(tmp_path, kind):
    line, message = BAD_ROWS[kind]
    good = '{"inputs": "x", "targets": "y"}'
    path = _write_jsonl(tmp_path / "data.jsonl", [good, "", line])
    with pytest.raises(ValueError) as err:
        load_examples(path)
    assert f"{path}:3" in str(err.value) and message in str(err.value)


def test_load_missing_or_unsupported_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_examples(tmp_path / "nope.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="jsonl"):
        load_examples(tmp_path / "data.csv")


def test_saved_dataset_needs_datasets_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        load_examples(tmp_path)


def test_saved_dataset_rows_via_datasets(tmp_path, monkeypatch):
    rows = [
        {"inputs": [5, 6], "inputs_pretokenized": "Q? ", "targets": [7],
         "targets_pretokenized": " no", "answer_choices": ["yes", "no"]},
        {"inputs_pretokenized": "Q2?"},
    ]  # fmt: skip
    fake = types.SimpleNamespace(load_from_disk=lambda p: {"validation": rows})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(ValueError, match=r"row 2: missing field 'targets'"):
        load_examples(tmp_path)
    rows.pop()
    assert load_examples(tmp_path) == [
        Example(tmp_path.name, "default", "Q?", "no", ("yes", "no"), 1)
    ]
    with pytest.raises(ValueError, match="no split 'train'"):
        load_examples(tmp_path, split="train")


# --- report --------------------------------------------------------------------------------


def _predictions(accuracy_by_template: dict[str, dict[str, tuple[int, int]]]):
    """(task, template, correct) rows with ``hits`` of ``n`` correct per template."""
    for task, templates in accuracy_by_template.items():
        for template, (hits, n) in templates.items():
            for i in range(n):
                yield task, template, i < hits


def test_score_table_median_over_even_templates_then_mean_over_tasks():
    table = score_table(
        _predictions(
            {
                "cb": {"t1": (1, 2), "t2": (4, 4), "t3": (0, 4), "t4": (3, 4)},
                "rte": {"t1": (1, 4), "t2": (3, 4), "t3": (2, 4)},
            }
        )
    )
    assert table["tasks"]["cb"]["templates"] == {"t1": 0.5, "t2": 1.0, "t3": 0.0, "t4": 0.75}
    assert table["tasks"]["cb"]["median"] == pytest.approx(0.625)  # mean of 0.5 and 0.75
    assert table["tasks"]["cb"]["n"] == 14
    assert table["tasks"]["rte"]["median"] == pytest.approx(0.5)
    assert table["average"] == pytest.approx((0.625 + 0.5) / 2)
    with pytest.raises(ValueError):
        score_table([])


def _run(cb: tuple[int, int], rte: tuple[int, int]):
    return score_table(_predictions({"cb": {"t1": cb}, "rte": {"t1": rte}}))


def test_aggregate_seeds_and_table():
    seeds = [
        {"mov": _run((1, 2), (1, 2)), "ia3": _run((0, 2), (1, 2))},
        {"mov": _run((2, 2), (1, 2))},
        {"mov": _run((2, 2), (2, 2))},
    ]
    agg = aggregate_seeds(seeds)
    mov = agg["mov"]
    assert mov["n_seeds"] == 3
    assert mov["average"]["values"] == [0.5, 0.75, 1.0]
    assert mov["average"]["mean"] == pytest.approx(0.75)
    assert mov["average"]["std"] == pytest.approx(0.25)  # sample std (n - 1)
    assert (mov["average"]["min"], mov["average"]["max"]) == (0.5, 1.0)
    assert mov["tasks"]["cb"]["mean"] == pytest.approx(5 / 6)
    assert agg["ia3"]["n_seeds"] == 1 and agg["ia3"]["average"]["std"] == 0.0

    info = {"mov": {"trainable_percent": 0.32, "label": "MoV-10"}, "ia3": 0.018}
    lines = format_table(agg, info).splitlines()
    assert lines[0] == "| Method | % params | cb | rte | Avg |"
    assert lines[2] == "| MoV-10 | 0.32% | 83.33 | 66.67 | 75.00 ± 25.00 |"
    assert lines[3] == "| ia3 | 0.018% | 0.00 | 50.00 | 25.00 |"
    assert "| mov | – |" in format_table(agg)


def test_write_results_atomic_files(tmp_path):
    agg = aggregate_seeds([{"mov": _run((1, 2), (2, 2))}])
    json_path, md_path = write_results(agg, tmp_path / "out", {"mov": 0.3})
    assert json.loads(json_path.read_text())["results"] == agg
    assert md_path.read_text().startswith("| Method |")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.json", "results.md"]


# --- plots ---------------------------------------------------------------------------------


def test_plots_write_png_files(tmp_path):
    pytest.importorskip("matplotlib")
    np = pytest.importorskip("numpy")
    from mixlight_tune.plots import plot_accuracy_vs_params, plot_routing_heatmap

    agg = aggregate_seeds([{"mov": _run((1, 2), (2, 2)), "full": _run((2, 2), (2, 2))}] * 2)
    info = {"mov": 0.32, "full": {"trainable_percent": 100.0, "label": "T0"}}
    paths = [plot_accuracy_vs_params(agg, tmp_path / "acc.png", info)]
    probs = {"cb": np.full(4, 0.25), "rte": np.array([0.7, 0.1, 0.1, 0.1])}
    paths.append(plot_routing_heatmap(probs, tmp_path / "flat.png"))
    layered = {"encoder.0.ff": probs, "decoder.1.k": {"cb": np.full((2, 4), 0.25)}}
    paths.append(plot_routing_heatmap(layered, tmp_path / "layers.png", title="routing"))
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
    with pytest.raises(ValueError):
        plot_accuracy_vs_params(agg, tmp_path / "none.png", {})
