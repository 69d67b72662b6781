"""Tests for the framework-free demo parts: the miniature suite and probes, span corruption,
tokenizer, data files, report math, the claim check and plots."""

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

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixlight_tune.claims import check_claims, format_claims, table_scores
from mixlight_tune.corruption import span_corruption
from mixlight_tune.data_files import load_examples
from mixlight_tune.miniature import world
from mixlight_tune.miniature.binary_tasks import BINARY_TASKS
from mixlight_tune.miniature.corpus import pretraining_corpus
from mixlight_tune.miniature.held_out_tasks import HELD_OUT_TASKS
from mixlight_tune.miniature.probes import CHANCE, fact_probes
from mixlight_tune.miniature.suite import ALL_TASKS, DEFAULT_MIXTURE, MIXTURES, build_suite
from mixlight_tune.report import aggregate_seeds, chance_table, format_table, score_table
from mixlight_tune.schema import Example, Item

SENTINELS = list(range(3, 23))
WIDEST = "wide"  # every training task and template of any mixture
TRAIN_TASKS = MIXTURES[WIDEST].tasks
TRAIN_NAMES = {t.name for t in TRAIN_TASKS}
BINARY_NAMES = {t.name for t in BINARY_TASKS}
HELD_OUT_NAMES = {t.name for t in HELD_OUT_TASKS}


@pytest.fixture(scope="module")
def suite():
    return build_suite(seed=0, train_per_task=60, eval_per_template=30, mixture=WIDEST)


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
        "import mixlight_tune.experiment, mixlight_tune.cli\n"
        "heavy = ('torch', 'jax', 'matplotlib', 'sentencepiece', 'datasets', 'transformers')\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in heavy))\n"
        "import hashlib\n"
        "from mixlight_tune.miniature.suite import build_suite\n"
        "print(hashlib.sha256(repr(build_suite(5, 5, 2)).encode()).hexdigest())\n"
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
    for name in ("train", "held_in", "new_prompts", "held_out", "probes"):
        assert getattr(a, name) != getattr(c, name), name
    assert pretraining_corpus(1, 50) == pretraining_corpus(1, 50) != pretraining_corpus(2, 50)


def test_adding_items_keeps_the_earlier_ones():
    """Each (split, task) has its own stream: more items extend, never reshuffle, a task."""
    small, big = build_suite(0, 10, 5, WIDEST), build_suite(0, 10, 8, WIDEST)
    for task in TRAIN_TASKS:
        first = [e for e in small.held_in if e.task == task.name]
        assert first == [e for e in big.held_in if e.task == task.name][: len(first)]


def test_task_counts_templates_and_families(suite):
    assert len(TRAIN_TASKS) >= 10 and len(HELD_OUT_TASKS) >= 5
    assert not TRAIN_NAMES & HELD_OUT_NAMES
    assert all(len(t.templates) >= 5 and len(t.new_templates) >= 3 for t in TRAIN_TASKS)
    assert all(len(t.templates) >= 3 and not t.new_templates for t in HELD_OUT_TASKS)
    assert all(not t.held_out for t in TRAIN_TASKS) and all(t.held_out for t in HELD_OUT_TASKS)
    assert len({t.family for t in TRAIN_TASKS}) >= 3
    assert set(suite.families) == TRAIN_NAMES | HELD_OUT_NAMES


def test_every_template_is_used_in_the_right_split(suite):
    def pairs(examples):
        return Counter((e.task, e.template) for e in examples)

    train, held_in, new = pairs(suite.train), pairs(suite.held_in), pairs(suite.new_prompts)
    held_out = pairs(suite.held_out)
    for task in TRAIN_TASKS:
        names = {(task.name, t.name) for t in task.templates}
        assert set(k for k in train if k[0] == task.name) == names
        assert set(k for k in held_in if k[0] == task.name) == names
        assert sum(train[k] for k in names) == 60 and sum(held_in[k] for k in names) == 30
        assert all(new[task.name, t.name] == 30 for t in task.new_templates)
        assert not names & {(task.name, t.name) for t in task.new_templates}
    for task in HELD_OUT_TASKS:
        assert all(held_out[task.name, t.name] == 30 for t in task.templates)
    assert {e.task for e in suite.train} == {e.task for e in suite.new_prompts} == TRAIN_NAMES
    assert {e.task for e in suite.held_out} == HELD_OUT_NAMES


def _literal_fragments(template_text: str) -> list[str]:
    """The fixed text between placeholders, long enough to be distinctive."""
    parts = (literal.strip(" .,:?()") for literal, *_ in string.Formatter().parse(template_text))
    return [p for p in parts if len(p) >= 8]


def _template_pattern(template_text: str) -> re.Pattern[str]:
    """A regex matching any rendering of the template."""
    parts = string.Formatter().parse(template_text)
    return re.compile(
        "".join(re.escape(lit) + (".+?" if field else "") for lit, field, *_ in parts)
    )


@pytest.mark.parametrize("split", ["new_templates", "held_out_tasks"])
def test_no_unseen_template_text_in_training_inputs_or_corpus(suite, corpus, split):
    """Table B's prompts and table C's tasks never appear in what tuning or pre-training see."""
    seen = "\n".join([e.inputs for e in suite.train] + corpus)
    templates = (
        [(t.name, tt) for t in TRAIN_TASKS for tt in t.new_templates]
        if split == "new_templates"
        else [(t.name, tt) for t in HELD_OUT_TASKS for tt in t.templates]
    )
    for task, template in templates:
        pattern = _template_pattern(template.text)
        assert not any(pattern.fullmatch(e.inputs) for e in suite.train), template.text
        fresh = [f for f in _literal_fragments(template.text) if f not in seen]
        assert fresh, f"{task}/{template.name}: no wording that tuning or pre-training lacks"


def test_the_committed_held_out_sets_share_no_prompt_with_the_mixture():
    """Sets D and E (docs/demo) ask nothing the widest mixture trains on, word for word."""
    root = Path(__file__).resolve().parents[2] / "docs" / "demo"
    trained = {e.inputs for e in build_suite(0, 200, 0, WIDEST).train}
    for name in ("held_out_prompts.jsonl", "held_out_prompts_e.jsonl"):
        rows = load_examples(root / name)
        assert len(rows) > 300 and not trained & {e.inputs for e in rows}, name


def test_new_prompts_bring_new_label_words():
    """Where a task names its labels (a verbalizer), table B uses words tuning never answers."""
    for task in TRAIN_TASKS:
        trained = {c for t in task.templates for c in (t.choices or ())}
        unseen = {c for t in task.new_templates for c in (t.choices or ())} - trained
        if task.name == "sentiment":
            assert len(unseen) >= 6, unseen


def _check_choice_item(e: Example) -> None:
    assert e.choices is not None and e.answer is not None
    assert 2 <= len(e.choices) <= 4, e
    assert len(set(e.choices)) == len(e.choices), e
    assert 0 <= e.answer < len(e.choices) and e.targets == e.choices[e.answer], e


def test_every_example_is_a_valid_rank_classification_item(suite):
    for e in suite.train + suite.held_in + suite.new_prompts + suite.held_out + suite.probes:
        _check_choice_item(e)


def test_three_or_more_choices_where_the_task_allows(suite):
    two_way = {"sentiment", "recommend", "probe_size", "probe_feeling"} | BINARY_NAMES
    for e in suite.held_in + suite.new_prompts + suite.held_out + suite.probes:
        assert len(e.choices) >= (2 if e.task in two_way else 3), e


def test_inputs_and_targets_are_short(suite):
    for e in suite.train + suite.new_prompts + suite.held_out:
        assert len(e.inputs.split()) <= 40, e.inputs
        assert 1 <= len(e.targets.split()) <= 8, e.targets


def test_answers_are_not_degenerate(suite):
    everything = suite.train + suite.new_prompts + suite.held_out
    for name in TRAIN_NAMES | HELD_OUT_NAMES:
        answers = Counter(e.answer for e in everything if e.task == name)
        assert len(answers) >= 2, name
        assert max(answers.values()) / sum(answers.values()) < 0.7, (name, answers)


def _animal(name: str) -> world.Animal:
    return next(a for a in world.ANIMALS if a.name == name)


def _answer(item: Item) -> str:
    assert item.choices is not None and item.answer is not None
    return item.choices[item.answer]


def _only_one(item: Item, fits) -> bool:
    return [bool(fits(c)) for c in item.choices] == [
        i == item.answer for i in range(len(item.choices))
    ]


SEMANTIC_CHECKS = {
    "habitat": lambda it: world.HOMES[it.answer] == _animal(it.fields["animal"]).home,
    "seen_where": lambda it: world.HOMES[it.answer] == _animal(it.fields["animal"]).home,
    "biggest_animal": lambda it: (
        _animal(_answer(it)).size == max(_animal(c).size for c in it.choices)
        and len({_animal(c).size for c in it.choices}) == 3
    ),
    "smallest_animal": lambda it: (
        _animal(_answer(it)).size == min(_animal(c).size for c in it.choices)
        and len({_animal(c).size for c in it.choices}) == 3
    ),
    "ability": lambda it: _only_one(it, lambda c: it.fields["ability"] in _animal(c).abilities),
    "home_choice": lambda it: _only_one(it, lambda c: _animal(c).home == it.fields["home"]),
    "pick_by_colour": lambda it: _only_one(it, lambda c: c.split()[0] == it.fields["colour"]),
    "giver": lambda it: it.fields["sentence"].startswith(f"{_answer(it)} gave "),
    "place": lambda it: _only_one(it, lambda c: f"at the {c} on" in it.fields["sentence"]),
    "colour": lambda it: _only_one(
        it, lambda c: f" {c} {it.fields['obj']} " in it.fields["sentence"]
    ),
    "count": lambda it: _only_one(it, lambda c: f" found {c} " in it.fields["sentence"]),
    "whose_colour": lambda it: (
        f"{_answer(it)} has a {it.fields['colour']} {it.fields['obj']}" in it.fields["premise"]
        or f"{_answer(it)} has an {it.fields['colour']} {it.fields['obj']}" in it.fields["premise"]
    ),
    "sentiment": lambda it: any(
        a in it.fields["review"] for a in world.REVIEW_ADJECTIVES[it.answer == 0]
    ),
    "recommend": lambda it: any(
        a in it.fields["review"] for a in world.REVIEW_ADJECTIVES[it.answer == 0]
    ),
    # two-way tasks: choices[answer] is the true word, the other one is false
    "home_check": lambda it: (
        [_animal(it.fields["animal"]).home == c for c in it.choices]
        == [i == it.answer for i in range(2)]
    ),
    "ability_check": lambda it: _only_one(
        it, lambda c: it.fields["ability"] in _animal(c).abilities
    ),
    "size_check": lambda it: _animal(_answer(it)).size > _animal(it.choices[1 - it.answer]).size,
    "colour_check": lambda it: _only_one(
        it, lambda c: f" {c} {it.fields['obj']} " in it.fields["sentence"]
    ),
    "place_check": lambda it: _only_one(it, lambda c: f"at the {c} on" in it.fields["sentence"]),
}


@pytest.mark.parametrize("name", sorted(SEMANTIC_CHECKS))
def test_generated_answers_are_right(name):
    task = next(t for t in ALL_TASKS if t.name == name)
    rng = random.Random(name)
    for _ in range(200):
        item = task.generate(rng)
        assert SEMANTIC_CHECKS[name](item), item


@pytest.mark.parametrize("task", BINARY_TASKS, ids=lambda t: t.name)
def test_a_two_way_item_reads_the_same_as_yes_no_and_as_a_choice(task):
    """Label 0 of a yes/no template ("yes", "true") answers the claim; a two-choice
    template's answer is the claim then, the other word otherwise; claims are true about
    half the time."""
    rng = random.Random(task.name)
    yes_no = [t for t in task.templates + task.new_templates if t.choices]
    choose = [t for t in task.templates + task.new_templates if not t.choices]
    assert yes_no and choose
    true_claims = 0
    for _ in range(200):
        item = task.generate(rng)
        claim_true = item.answer == 0
        true_claims += claim_true
        for t in yes_no:
            assert (task.render(item, t).targets in ("yes", "true")) == claim_true
        for t in choose:
            assert (task.render(item, t).targets == item.fields["claim"]) == claim_true
            assert set(task.render(item, t).choices) == {item.fields["claim"], item.fields["other"]}
    assert 70 < true_claims < 130


def test_mixtures_extend_the_first_one():
    """Every mixture keeps the first one's tasks and templates; a wider one adds prompts
    (the first five of a task are the first mixture's) or two-way tasks."""
    first = {t.name: t.templates for t in MIXTURES["first"].tasks}
    assert len(first) == 10 and all(len(ts) == 5 for ts in first.values())
    for name, mixture in MIXTURES.items():
        tasks = {t.name: t.templates for t in mixture.tasks}
        assert all(tasks[n][:5] == ts for n, ts in first.items()), name
    assert set(t.name for t in MIXTURES["wide"].tasks) == set(first) | BINARY_NAMES
    assert all(len(MIXTURES["wide"].tasks[i].templates) == 10 for i in range(10))
    small = build_suite(0, 20, 2, "first")
    assert {e.task for e in small.train} == set(first)
    assert {e.task for e in small.new_prompts} == set(first)
    with pytest.raises(ValueError, match="unknown mixture 'nope'; valid: first, "):
        build_suite(0, 1, 1, "nope")


def test_the_mixture_flag_reaches_the_config_and_a_bad_name_is_refused(tmp_path):
    from mixlight_tune.cli import _parser, config_from_args
    from mixlight_tune.experiment import DemoConfig, DemoError, validate

    assert config_from_args(_parser().parse_args([])).mixture == DEFAULT_MIXTURE
    assert config_from_args(_parser().parse_args(["--mixture", "first"])).mixture == "first"
    with pytest.raises(SystemExit):
        _parser().parse_args(["--mixture", "nope"])
    with pytest.raises(DemoError, match="unknown mixture 'nope'; valid: first, prompts"):
        validate(DemoConfig(mixture="nope", out_dir=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_the_shipped_tokenizer_is_regenerated_from_the_corpus_and_first_mixture():
    """The bases' tokenizer (one for every size) comes back byte for byte from
    ``pretraining_data``: a change to the tuning mixture leaves the bases reproducible."""
    pytest.importorskip("sentencepiece")
    from mixlight_tune.experiment import SHIPPED_BASES, DemoConfig, pretraining_data
    from mixlight_tune.tokenizer import train_tokenizer

    cfg = DemoConfig()
    tokenizer = train_tokenizer(pretraining_data(cfg)[1], cfg.base.vocab_size)
    for folder in SHIPPED_BASES:
        assert (folder / "spiece.model").read_bytes() == tokenizer._proto, folder


def test_every_task_has_a_semantic_check():
    assert TRAIN_NAMES | HELD_OUT_NAMES <= set(SEMANTIC_CHECKS) | {"topic"}


# --- fact probes ---------------------------------------------------------------------------


def test_probes_are_deterministic_and_state_the_worlds_facts():
    probes = fact_probes(0, 50)
    assert probes == fact_probes(0, 50) != fact_probes(1, 50)
    assert Counter(e.task for e in probes) == {family: 50 for family in CHANCE}
    for e in probes:
        words = e.inputs.split()
        if e.task == "probe_home":
            name = words[1] if words[0] in ("A", "An") else words[0].lower()
            animal = next(a for a in world.ANIMALS if name in (a.name, a.plural))
            assert e.targets == f"{animal.home}."
        elif e.task == "probe_ability":
            assert e.targets == f"{next(iter(_animal(words[1]).abilities))}."
        elif e.task == "probe_size":
            bigger = _animal(words[1]).size > _animal(e.targets.split()[-1].rstrip(".")).size
            assert e.targets.startswith("bigger" if bigger else "smaller")
        else:
            positive = any(a in e.inputs for a in world.REVIEW_ADJECTIVES[True])
            assert e.targets == ("I love it." if positive else "I hate it.")
        assert CHANCE[e.task] == pytest.approx(1 / len(e.choices))


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
    for e in suite.new_prompts[::97] + suite.train[::301]:
        ids = tokenizer.encode(e.inputs)
        assert ids[-1] == tokenizer.eos_id and tokenizer.unk_id not in ids
        assert tokenizer.decode(ids + [tokenizer.pad_id] * 3) == e.inputs
    assert tokenizer.sentinel_ids[0] in tokenizer.encode("<extra_id_0> cat")


def test_tokenizer_save_load_and_deterministic_training(tokenizer, corpus, suite, tmp_path):
    from mixlight_tune.tokenizer import Tokenizer, train_tokenizer

    path = tokenizer.save(tmp_path / "sub" / "spm.model")
    loaded = Tokenizer.load(path)
    text = suite.new_prompts[0].inputs
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
    with pytest.raises(ValueError, match="folder but not a saved Hugging Face dataset"):
        load_examples(tmp_path)
    (tmp_path / "dataset_dict.json").write_text("{}")
    with pytest.raises(ImportError, match="pip install datasets"):
        load_examples(tmp_path)


def test_a_non_utf8_file_names_the_problem(tmp_path):
    path = tmp_path / "noise.jsonl"
    path.write_bytes(b'{"inputs": "\xff\xfe"}\n')
    with pytest.raises(ValueError, match=r"noise.jsonl: not UTF-8 text .*one JSON object per line"):
        load_examples(path)


def test_saved_dataset_rows_via_datasets(tmp_path, monkeypatch):
    (tmp_path / "dataset_dict.json").write_text("{}")
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
    assert lines[2] == "| MoV-10 | 0.32% | 83.3 | 66.7 | 75.0 ± 25.0 [50.0–100.0] |"
    assert lines[3] == "| ia3 | 0.018% | 0.0 | 50.0 | 25.0 |"
    assert "| mov | – |" in format_table(agg)


def test_table_has_chance_and_base_rows_first():
    examples = [
        Example("cb", "t1", "x", "a", ("a", "b"), 0),
        Example("cb", "t2", "x", "a", ("a", "b", "c", "d"), 0),
        Example("rte", "t1", "x", "a", ("a", "b", "c"), 0),
    ]
    chance = chance_table(examples)
    assert chance["tasks"]["cb"]["templates"] == {"t1": 0.5, "t2": 0.25}
    assert chance["tasks"]["cb"]["median"] == pytest.approx(0.375)
    assert chance["average"] == pytest.approx((0.375 + 1 / 3) / 2)
    agg = aggregate_seeds([{"mov": _run((1, 2), (2, 2))}])
    lines = format_table(agg, {"mov": 1.0}, chance, _run((0, 2), (1, 2))).splitlines()
    assert lines[2] == "| Chance | – | 37.5 | 33.3 | 35.4 |"
    assert lines[3] == "| Base (untuned) | 0% | 0.0 | 50.0 | 25.0 |"
    assert lines[4].startswith("| mov | 1% | 50.0 | 100.0 |")


def _hits(rates: dict[str, float], cells, seeds: int, seed: int = 0) -> dict[str, list]:
    """Per method, per seed, 0/1 hits of ``cells`` drawn at the method's accuracy."""
    rng = np.random.default_rng(seed)
    return {
        m: (rng.random((seeds, len(cells))) < rate).astype(int).tolist()
        for m, rate in rates.items()
    }


CELLS = [(f"task{t}", f"prompt{p}") for t in range(6) for p in range(3) for _ in range(40)]


def test_the_claims_table_score_is_the_reports():
    """``claims.table_scores`` (vectorised) equals ``report.score_table``'s average."""
    hits = _hits({"m": 0.6}, CELLS, seeds=2)["m"]
    got = table_scores(np.asarray(hits, dtype=float), CELLS)
    for row, value in zip(hits, got, strict=True):
        want = score_table((t, p, c) for (t, p), c in zip(CELLS, row, strict=True))["average"]
        assert value == pytest.approx(want)


def test_claim_verdicts_hold_fail_or_are_not_shown():
    rates = {"mov": 0.75, "ia3": 0.55, "full": 0.75, "lora": 0.60, "molora": 0.60}
    claims = {c["first"] + c["second"]: c for c in check_claims(_hits(rates, CELLS, 3), CELLS)}
    assert claims["movia3"]["holds"] and claims["movia3"]["interval"][0] > 0
    assert claims["movia3"]["margin"] == pytest.approx(20, abs=4)
    # level methods on 720 items x 3 seeds: the interval is a few points wide, not within ±2
    assert not claims["movfull"]["holds"] and "not shown" in claims["movfull"]["why_not"]
    behind = {"mov": 0.45, "ia3": 0.70, "molora": 0.40, "lora": 0.70, "full": 0.90}
    refuted = check_claims(_hits(behind, CELLS, 3), CELLS)
    assert [c["holds"] for c in refuted] == [False, False, False]
    assert all(c["why_not"] == "the opposite is shown" for c in refuted)
    # 'close' can hold: the same hits for both methods on many items
    same = _hits({"mov": 0.7}, CELLS * 10, 3)["mov"]
    close = check_claims({"mov": same, "full": same}, CELLS * 10)
    assert close[0]["holds"] and close[0]["interval"] == [0.0, 0.0]


def test_one_seed_is_checked_over_items_and_says_so():
    rates = {"mov": 0.8, "ia3": 0.5}
    claims = check_claims(_hits(rates, CELLS, 1), CELLS)
    assert claims[0]["seeds"] == 1 and claims[0]["holds"] is True
    text = format_claims(claims)
    assert "over items only (one seed: no seed variation): **holds**" in text
    assert check_claims(_hits(rates, CELLS, 1), CELLS) == claims  # deterministic
    assert check_claims(_hits({"mov": 0.7}, CELLS, 1), CELLS) == []


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


def test_docs_suite_md_is_generated_from_the_code():
    from mixlight_tune.miniature.describe import describe

    docs = Path(__file__).resolve().parents[2] / "docs" / "suite.md"
    assert docs.read_text(encoding="utf-8") == describe(), (
        "regenerate: python -m mixlight_tune.miniature.describe > docs/suite.md"
    )
