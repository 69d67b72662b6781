"""``[[mixture]]`` in a ``mixlight tune`` config, without a framework: entries parse and
resolve back, weights follow a rate or T0's examples-proportional rule with a cap, the draw
plan is the documented one (reproducible from ``data_seed``, each source read without
replacement epoch by epoch), sources are read by index and never whole, each source's token
ids are cached under its own key, and each bad input is one line naming the entry and the
fix."""

import json
import math
import random

import numpy as np
import pytest

from mixlight_tune import mixture_draws, row_tables, sampling
from mixlight_tune.mixture import weights
from mixlight_tune.mixture_data import DrawnPair
from mixlight_tune.text_codec import TextCodec
from mixlight_tune.tune_cli import data_record, load_data
from mixlight_tune.tune_config import TuneConfigError, parse
from tests.p3_fixtures import COMMIT, hub_dataset, score_eval_rows, write_jsonl

CODEC = TextCodec(lambda text: [2 + ord(c) % 90 for c in text] + [1])


def rows(name, n):
    return [{"inputs": f"{name} question {i}?", "targets": f"{name} {i}"} for i in range(n)]


def config(tmp_path, entries, **keys):
    """A parsed config over ``entries`` (``(file name, rows, weighting)``), the files written
    in ``tmp_path``."""
    mixture = []
    for name, data, weighting in entries:
        write_jsonl(tmp_path / name, data)
        mixture.append({"path": name} | weighting)
    raw = {"mixture": mixture, "steps": 5, "batch_size": 4, "output_dir": "out"} | keys
    return parse(raw, base_dir=tmp_path)


class Spy:
    """Counts the JSONL rows parsed (every row a mixture reads is parsed here)."""

    def __init__(self, monkeypatch):
        self.rows = 0
        parse_line = row_tables.json_line

        def counted(line, where):
            self.rows += 1
            return parse_line(line, where)

        monkeypatch.setattr(row_tables, "json_line", counted)


# --- the config ------------------------------------------------------------------------------


def test_toml_mixture_parses_and_resolves_back(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", rows("a", 3))
    write_jsonl(tmp_path / "b.jsonl", rows("b", 3))
    (tmp_path / "c.toml").write_text(
        "mixture_cap = 500000\n"
        '[[mixture]]\npath = "a.jsonl"\nrate = 2.5\n'
        '[[mixture]]\npath = "b.jsonl"\ncap = 10\ntask = "bee"\n'
        '[[mixture]]\npath = "a.jsonl"\n'
    )
    from mixlight_tune.tune_config import read_config

    cfg = read_config(tmp_path / "c.toml")
    a, b, c = cfg.mixture
    assert (a.rate, a.cap, b.rate, b.cap, c.rate, c.cap) == (2.5, None, None, 10, None, None)
    assert b.source.task == "bee" and a.source.path == tmp_path / "a.jsonl"
    assert cfg.mixture_cap == 500000 and cfg.data is None
    resolved = cfg.resolved()
    assert resolved["mixture"][1] == {"path": str(tmp_path / "b.jsonl"), "task": "bee", "cap": 10}
    assert parse(json.loads(json.dumps(resolved))) == cfg  # config.json reads back


def test_rates_are_relative_weights_and_proportional_entries_are_capped(tmp_path):
    cfg = config(
        tmp_path,
        [("a.jsonl", rows("a", 2), {"rate": 3}), ("b.jsonl", rows("b", 2), {"rate": 1})],
    )
    assert weights(cfg.mixture, [2, 2], None) == [0.75, 0.25]
    # T0's rule: each source weighs min(its examples, mixture_cap); a per-entry cap wins
    cfg = config(
        tmp_path,
        [("a.jsonl", rows("a", 2), {}), ("b.jsonl", rows("b", 2), {}), ("c.jsonl", [], {})],
        mixture_cap=500_000,
    )
    sizes = [10, 1_000, 600_000]
    assert weights(cfg.mixture, sizes, 500_000) == pytest.approx(
        [w / 501_010 for w in (10, 1_000, 500_000)]
    )
    assert weights(cfg.mixture, sizes, None) == pytest.approx([s / 601_010 for s in sizes])
    capped = config(
        tmp_path,
        [("a.jsonl", rows("a", 2), {"cap": 5}), ("b.jsonl", rows("b", 2), {})],
    )
    assert weights(capped.mixture, [10, 15], None) == pytest.approx([0.25, 0.75])


# --- the draws -------------------------------------------------------------------------------


def test_the_plan_is_the_documented_rule_and_reproducible_from_data_seed():
    probabilities, sizes, total = [0.5, 0.3, 0.2], [7, 1000, 3], 5000
    plan = mixture_draws.plan(probabilities, sizes, total, data_seed=4)
    rng = random.Random("mixlight-mixture:4")
    cumulative = [0.5, 0.8, 1.0]
    expected = rng.choices(range(3), cum_weights=cumulative, k=total)
    assert plan.sources.tolist() == expected
    again = mixture_draws.plan(probabilities, sizes, total, data_seed=4)
    assert np.array_equal(plan.rows, again.rows) and np.array_equal(plan.sources, again.sources)
    other = mixture_draws.plan(probabilities, sizes, total, data_seed=5)
    assert not np.array_equal(plan.sources, other.sources)
    # fewer draws are a prefix of more: the plan of a shorter run is where a longer one starts
    short = mixture_draws.plan(probabilities, sizes, 100, data_seed=4)
    assert np.array_equal(short.rows, plan.rows[:100])


def test_each_source_is_read_without_replacement_epoch_by_epoch():
    plan = mixture_draws.plan([0.6, 0.4], [7, 1_000_000], 400, data_seed=0)
    small = plan.rows[plan.of(0)].tolist()
    epochs = [small[i : i + 7] for i in range(0, len(small) - 6, 7)]
    assert len(epochs) > 20
    assert all(sorted(e) == list(range(7)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 10  # each epoch in a new order
    large = plan.rows[plan.of(1)]
    assert len(set(large.tolist())) == len(large) and large.max() < 1_000_000


@pytest.mark.parametrize("size", [1, 2, 3, 5, 16, 17, 1000, 4097])
def test_a_source_permutation_is_a_bijection(size):
    keys = mixture_draws._keys(0, 3, np.zeros(1, np.uint64))
    out = mixture_draws.permute(np.arange(size, dtype=np.uint64), size, keys)
    assert sorted(out.tolist()) == list(range(size))


def test_shares_match_the_weights_within_sampling_error():
    probabilities, total = [0.7, 0.2, 0.1], 20_000
    counts = mixture_draws.plan(probabilities, [50, 50, 50], total, data_seed=1).counts(3)
    for p, count in zip(probabilities, counts, strict=True):
        assert abs(count - p * total) < 4 * math.sqrt(total * p * (1 - p)), (p, count)


def test_the_loop_order_over_the_draws_is_the_one_it_always_was():
    """``sampling.batches`` walks an index through its order instead of slicing the rest off
    every step (a mixture's epoch is ``steps × batch_size`` draws): the same batches."""

    def sliced(n, batch_size, steps, seed):  # the implementation it replaced
        rng = random.Random(f"mixlight-demo-order:{seed}")
        order = []
        for _ in range(steps):
            while len(order) < batch_size:
                epoch = list(range(n))
                rng.shuffle(epoch)
                order += epoch
            yield order[:batch_size]
            order = order[batch_size:]

    for n, batch_size, steps in [(1, 3, 4), (7, 2, 9), (12, 5, 11), (20, 4, 5), (100, 13, 17)]:
        for seed in (0, 7):
            expected = list(sliced(n, batch_size, steps, seed))
            assert list(sampling.batches(n, batch_size, steps, seed)) == expected


# --- reading by index, caching per source ----------------------------------------------------


def test_a_large_jsonl_is_never_read_whole(tmp_path, monkeypatch):
    big = [{"inputs": f"row {i}", "targets": str(i)} for i in range(20_000)]
    cfg = config(
        tmp_path,
        [("big.jsonl", big, {"rate": 1}), ("small.jsonl", rows("s", 5), {"rate": 1})],
    )
    spy = Spy(monkeypatch)
    train, _ = load_data(cfg)
    assert len(train) == 20 and spy.rows == 2  # one row of each source, its format checked
    examples = list(train)
    assert spy.rows <= 2 + 20
    drawn = {e.inputs for e in examples if e.inputs.startswith("row ")}
    assert all(f"row {int(e.targets)}" == e.inputs for e in examples if e.task == "big")
    assert drawn and len(drawn) == sum(e.task == "big" for e in examples)  # no repeats


def test_token_ids_are_cached_per_source_and_reused(tmp_path, monkeypatch):
    cfg = config(
        tmp_path,
        [("a.jsonl", rows("a", 30), {"rate": 1}), ("b.jsonl", rows("b", 30), {"rate": 2})],
    )
    train, _ = load_data(cfg)
    cache, model = tmp_path / "out/tokens", tmp_path / "model"
    model.mkdir()
    spy = Spy(monkeypatch)
    pairs = train.pairs(CODEC, model, (8, 4), cache, writer=True)
    assert len(pairs) == len(train) == 20 and len(list(cache.iterdir())) == 2
    for k, example in enumerate(train):
        assert pairs[k] == CODEC.pair(example.inputs, example.targets, 8, 4)
    plan = train.plan
    distinct = len(set(zip(plan.sources.tolist(), plan.rows.tolist(), strict=True)))
    assert spy.rows - 20 == distinct  # each drawn example tokenised once; the loop read 20
    views = list(pairs)  # what a backend's list(settings.pairs) holds: views, not ids
    assert all(isinstance(v, DrawnPair) for v in views) and views[3] == pairs[3]
    assert [len(x) for x in views[0]] == [len(pairs[0][0]), len(pairs[0][1])]
    # another mixture of the same sources (other rates, more steps) tokenises only what is new
    more = parse(
        cfg.resolved()
        | {"steps": 40, "mixture": [m | {"rate": 1.0} for m in cfg.resolved()["mixture"]]}
    )
    bigger, _ = load_data(more)
    spy.rows = 0
    again = bigger.pairs(CODEC, model, (8, 4), cache, writer=True)
    assert spy.rows == 60 - distinct and len(list(cache.iterdir())) == 2  # all 60 now drawn
    assert again[5] == CODEC.pair(bigger[5].inputs, bigger[5].targets, 8, 4)
    spy.rows = 0
    bigger.pairs(CODEC, model, (8, 4), cache, writer=True)
    assert spy.rows == 0  # all cached
    bigger.pairs(CODEC, model, (9, 4), cache, writer=True)  # other limits: another key
    assert spy.rows > 0 and len(list(cache.iterdir())) == 4


def test_the_data_record_names_every_mixture_source(tmp_path):
    cfg = config(
        tmp_path,
        [("a.jsonl", rows("a", 3), {"rate": 1}), ("b.jsonl", rows("b", 3), {"rate": 1})],
    )
    assert sorted(data_record(cfg).digests) == [
        str(tmp_path / "a.jsonl"),
        str(tmp_path / "b.jsonl"),
    ]


def test_a_saved_dataset_is_read_by_index(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = rows("arrow", 40)
    columns = {k: [r[k] for r in data] for k in data[0]}
    datasets.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "arrow"))
    write_jsonl(tmp_path / "j.jsonl", rows("j", 4))
    raw = {"mixture": [{"path": "arrow", "rate": 1}, "j.jsonl"], "steps": 3, "batch_size": 4}
    train, _ = load_data(parse(raw | {"mixture_cap": 4}, base_dir=tmp_path))
    assert train.probabilities == [0.2, 0.8]
    for k in range(len(train)):
        source, row = int(train.plan.sources[k]), int(train.plan.rows[k])
        assert train[k].inputs == (data if source == 0 else rows("j", 4))[row]["inputs"]


def test_a_cached_hub_dataset_is_a_mixture_source(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    configs = {"glue_mrpc_equivalent": {"train": rows("mrpc", 9)}}
    hub_dataset(cache, "owner/p3mini", configs)
    entry = {"path": "owner/p3mini", "name": "glue_mrpc_equivalent", "split": "train"}
    cfg = parse({"mixture": [entry], "steps": 3, "batch_size": 4}, base_dir=tmp_path)
    train, _ = load_data(cfg)
    assert {e.task for e in train} == {"mrpc"} and {e.template for e in train} == {"equivalent"}
    assert sorted(e.inputs for e in train[:9]) == sorted(r["inputs"] for r in rows("mrpc", 9))
    assert data_record(cfg).digests == {
        "owner/p3mini (glue_mrpc_equivalent, train)": f"hub:{COMMIT}"
    }


# --- bad input -------------------------------------------------------------------------------


def refused(tmp_path, raw, *files):
    for name in files:
        write_jsonl(tmp_path / name, rows(name, 3))
    with pytest.raises(TuneConfigError) as err:
        load_data(parse(raw, base_dir=tmp_path))
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("rate", [0, -1, float("nan"), float("inf"), "2", True, None, 10**400])
def test_a_bad_rate_is_refused(tmp_path, rate):
    message = refused(tmp_path, {"mixture": [{"path": "a.jsonl", "rate": rate}]}, "a.jsonl")
    assert message.startswith("mixture[0].rate (")
    assert "must be a positive finite number" in message and "remove its entry" in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"mixture": [{"path": "a.jsonl", "rate": 1, "cap": 5}]},
            "mixture[0] (",  # ... has both rate and cap ...; keep one
        ),
        ({"mixture": [{"path": "a.jsonl", "cap": 0}]}, "mixture[0].cap ("),
        ({"mixture": ["a.jsonl"], "mixture_cap": 2.5}, "mixture_cap must be an integer >= 1"),
        ({"mixture_cap": 10}, "mixture_cap caps"),
        ({"mixture": []}, "mixture is empty"),
        ({"mixture": "a.jsonl"}, "mixture must be a list"),
        ({"mixture": [{"path": "a.jsonl", "weight": 2}]}, "mixture[0]: unknown key(s) weight"),
        ({"mixture": [{"rate": 2}]}, "mixture[0]: no path"),
        ({"mixture": ["a.jsonl", "absent.jsonl"]}, "mixture[1] = 'absent.jsonl': nothing"),
        ({"mixture": ["a.jsonl"], "data": "a.jsonl"}, "mixture and data are both set"),
    ],
)
def test_a_bad_mixture_is_refused_naming_the_entry(tmp_path, raw, expected):
    assert refused(tmp_path, raw, "a.jsonl").startswith(expected)


def test_both_rate_and_cap_name_the_fix(tmp_path):
    message = refused(tmp_path, {"mixture": [{"path": "a.jsonl", "rate": 1, "cap": 5}]}, "a.jsonl")
    assert "has both rate and cap" in message and "keep one" in message


def test_a_source_with_no_examples_is_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    message = refused(tmp_path, {"mixture": ["a.jsonl", "empty.jsonl"]}, "a.jsonl")
    assert message.startswith(f"mixture[1] = {tmp_path / 'empty.jsonl'}: no examples")
    assert "remove the entry" in message


def test_a_malformed_source_or_an_evaluation_layout_is_refused(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"inputs": "x"}\n')
    message = refused(tmp_path, {"mixture": ["bad.jsonl"]})
    assert message == f"mixture[0]: {tmp_path / 'bad.jsonl'}:1: missing field 'targets'"
    write_jsonl(tmp_path / "rte_score_eval.jsonl", score_eval_rows())
    message = refused(tmp_path, {"mixture": ["rte_score_eval.jsonl"]})
    assert "_score_eval layout" in message and "train on the subset without" in message
