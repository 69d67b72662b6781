"""``mixlight tune`` (torch, the shipped tiny T5) on a ``[[mixture]]`` of a ``datasets``
folder and a large JSONL: every draw is trained on once and the sources' shares follow the
rates, the JSONL is read row by row (never whole), a killed run resumes to the adapter of an
uninterrupted one, and a bad rate stops the run before anything is written."""

import json
import math

import numpy as np
import pytest

import mixlight as ml
from mixlight.cli import main
from mixlight_tune import loop, row_tables
from tests.p3_fixtures import write_jsonl
from tests.tune_case import interrupted_then_resumed, write_case

pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

BIG = 5_000  # rows of the JSONL source


def mixture(root):
    """A saved ``Dataset`` of parity questions (rate 3) and a JSONL of ``BIG`` rows (rate 1),
    by absolute path (the resume case's configs live in two sub-folders)."""
    parity = [
        {"inputs": f"Is {n} an even number?", "targets": "yes" if n % 2 == 0 else "no"}
        for n in range(40)
    ]
    columns = {k: [r[k] for r in parity] for k in parity[0]}
    datasets.Dataset.from_dict(columns).save_to_disk(str(root / "parity"))
    numbers = [{"inputs": f"Write {n} backwards.", "targets": str(n)[::-1]} for n in range(BIG)]
    write_jsonl(root / "numbers.jsonl", numbers)
    return [
        {"path": str(root / "parity"), "rate": 3},
        {"path": str(root / "numbers.jsonl"), "rate": 1},
    ]


def test_a_mixture_trains_each_draw_once_at_the_rates_reading_rows_lazily(tmp_path, monkeypatch):
    steps, batch = 25, 8
    config = write_case(
        tmp_path,
        "torch",
        data=None,
        eval_data=None,
        mixture=mixture(tmp_path),
        steps=steps,
        batch_size=batch,
    )
    parsed, trained = [0], []
    parse_line, batches = row_tables.json_line, loop.batches

    def counted(line, where):
        parsed[0] += 1
        return parse_line(line, where)

    def recorded(*args):
        for indices in batches(*args):
            trained.extend(indices)
            yield indices

    monkeypatch.setattr(row_tables, "json_line", counted)
    monkeypatch.setattr(loop, "batches", recorded)
    assert main(["tune", str(config)]) == 0
    total = steps * batch
    assert sorted(trained) == list(range(total))  # one epoch over the draws: each once
    metrics = json.loads((tmp_path / "out-torch/metrics.json").read_text())
    shares = {m["source"].rsplit("/", 1)[-1]: m for m in metrics["mixture"]}
    assert shares["numbers.jsonl"]["examples"] == BIG and shares["parity"]["examples"] == 40
    for name, rate in (("parity", 0.75), ("numbers.jsonl", 0.25)):
        assert shares[name]["probability"] == rate
        sigma = math.sqrt(total * rate * (1 - rate))
        assert abs(shares[name]["draws"] - rate * total) < 4 * sigma, shares
    # the JSONL's drawn rows and its first (the format check) were parsed, no other
    assert parsed[0] <= shares["numbers.jsonl"]["draws"] + 1 < BIG // 50
    assert len(list((tmp_path / "out-torch/tokens").iterdir())) == 2  # one cache per source
    assert len(metrics["data_sha256"]) == 2 and len(metrics["losses"]) == steps


def test_a_resumed_mixture_run_ends_with_the_uninterrupted_adapter(tmp_path, monkeypatch):
    sources = mixture(tmp_path)
    whole, resumed = interrupted_then_resumed(
        tmp_path, "torch", monkeypatch, data=None, mixture=sources
    )
    assert resumed["losses"] == whole["losses"] and len(whole["losses"]) == 7
    assert resumed["mixture"] == whole["mixture"]
    a = ml.read_adapter(tmp_path / "whole/out-torch/adapter").arrays
    b = ml.read_adapter(tmp_path / "split/out-torch/adapter").arrays
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_a_bad_rate_stops_the_run_before_anything(tmp_path, capsys):
    sources = mixture(tmp_path)
    sources[1]["rate"] = 0
    config = write_case(tmp_path, "torch", data=None, mixture=sources, output_dir="never")
    capsys.readouterr()  # (datasets' progress bars)
    assert main(["tune", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixlight tune: error: mixture[1].rate (")
    assert "remove its entry" in err and "\n" not in err and not (tmp_path / "never").exists()
