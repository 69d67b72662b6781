"""The demo's torch backend: the rank-classification evaluator, the pipeline end to end on a
micro config, ``--data``, interruption, and each bad-input error."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")
pytest.importorskip("matplotlib")

import mixlight as ml  # noqa: E402
from mixlight_tune import cli, experiment  # noqa: E402
from mixlight_tune.frameworks import torch_steps as instruct  # noqa: E402
from mixlight_tune.frameworks.torch_scoring import rank_classification  # noqa: E402
from mixlight_tune.schema import Example  # noqa: E402
from tests.torch.conftest import perturb, tiny_t5  # noqa: E402

MICRO = dataclasses.replace(
    experiment.DemoConfig(),
    steps=2,
    full_steps=2,
    batch_size=4,
    base=experiment.BaseSpec(
        d_model=16,
        d_kv=4,
        num_heads=4,
        d_ff=32,
        num_layers=1,
        vocab_size=128,
        corpus_sentences=200,
        chunk_tokens=24,
        pretrain_steps=2,
        pretrain_batch_size=4,
    ),
    train_per_task=2,
    eval_per_template=1,
    eval_batch_size=8,
    threads=1,
    progress=False,
    shares=False,
)


def micro(tmp_path: Path, **changes) -> experiment.DemoConfig:
    return dataclasses.replace(
        MICRO, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", **changes
    )


# --- the evaluator ----------------------------------------------------------------------------


class Unigram(torch.nn.Module):
    """A stand-in seq2seq model whose every decoder position predicts ``logprobs``."""

    def __init__(self, probs: list[float]) -> None:
        super().__init__()
        self.logprobs = torch.tensor(probs).log()
        self.config = SimpleNamespace(pad_token_id=0)

    def get_encoder(self):
        return lambda input_ids, attention_mask: SimpleNamespace(
            last_hidden_state=torch.zeros(*input_ids.shape, 1)
        )

    def forward(self, encoder_outputs, attention_mask, labels):
        return SimpleNamespace(logits=self.logprobs.expand(*labels.shape, -1))


def _example(choices, answer, task="t", inputs="x"):
    return Example(task, "t1", inputs, choices[answer], tuple(choices), answer)


def test_rank_classification_sums_target_log_likelihoods():
    probs = [0.0001, 0.1, 0.05, 0.6, 0.2, 0.0499]  # ids 0..5; EOS is id 1
    encode = {
        "x": [5, 4, 1],
        "a": [3, 1],
        "b": [4, 1],
        "aa": [3, 3, 1],
        "bbb": [4, 4, 4, 1],
        "e": [5, 1],
    }
    examples = [
        _example(["a", "b"], 0),  # log .6 + log .1 beats log .2 + log .1
        _example(["b", "a", "e"], 0),  # wrong: "a" scores higher
        _example(["bbb", "aa"], 1),  # summed, not length-normalised
    ]
    result = rank_classification(Unigram(probs), encode.__getitem__, examples, batch_size=2)
    assert result.correct == [True, False, True]
    assert result.predicted == [0, 1, 1]
    want = math.log(0.6) * 2 + math.log(0.1)
    assert result.scores[2][1] == pytest.approx(want, rel=1e-6)
    assert result.routing == {}


def _random_examples(n: int, seed: int = 0) -> tuple[list[Example], dict[str, list[int]]]:
    rng = np.random.default_rng(seed)
    vocab: dict[str, list[int]] = {}

    def word(text: str, length: int) -> str:
        vocab.setdefault(text, [*rng.integers(2, 100, length).tolist(), 1])
        return text

    examples = []
    for i in range(n):
        inputs = word(f"in{i}", int(rng.integers(2, 12)))
        k = int(rng.integers(2, 5))
        choices = [word(f"c{i}_{j}", int(rng.integers(1, 5))) for j in range(k)]
        examples.append(_example(choices, int(rng.integers(k)), f"task{i % 3}", inputs))
    return examples, vocab


def _direct_scores(model, encode, examples):
    """The obvious per-choice loop: -mean loss times the number of target tokens."""
    out = []
    for e in examples:
        ids = torch.tensor([encode(e.inputs)])
        row = []
        for c in e.choices:
            labels = torch.tensor([encode(c)])
            with torch.no_grad():
                loss = model(input_ids=ids, labels=labels).loss
            row.append(-float(loss) * labels.shape[1])
        out.append(row)
    return out


def test_batched_equals_unbatched_equals_a_direct_loop():
    torch.manual_seed(0)
    model = perturb(ml.inject(tiny_t5(), ml.MoV(4)), scale=0.5)
    examples, vocab = _random_examples(7)
    one = rank_classification(model, vocab.__getitem__, examples, batch_size=1)
    many = rank_classification(model, vocab.__getitem__, examples, batch_size=5)
    direct = _direct_scores(model, vocab.__getitem__, examples)
    for a, b, c in zip(one.scores, many.scores, direct, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)
    assert one.correct == many.correct
    assert set(one.routing) == {
        "encoder.block.1.layer.1.DenseReluDense.act",
        "decoder.block.1.layer.2.DenseReluDense.act",
    }
    for site, by_task in one.routing.items():
        assert set(by_task) == {"task0", "task1", "task2"}
        for task, probs in by_task.items():
            assert probs.shape == (4,) and probs.sum() == pytest.approx(1.0, abs=1e-5)
            np.testing.assert_allclose(probs, many.routing[site][task], atol=1e-5)


# --- the pipeline -----------------------------------------------------------------------------


def test_micro_pipeline_end_to_end_and_base_cache(tmp_path, monkeypatch):
    cfg = micro(tmp_path)
    payload = experiment.run(cfg, log=lambda _: None)
    assert list(payload["tables"]) == ["A", "B", "C"]
    for name, table in payload["tables"].items():
        assert list(table["methods"]) == list(experiment.DEFAULT_METHODS), name
        assert 0 < table["chance"]["average"] < 1 and table["base"]["average"] >= 0
    assert set(payload["probes"]) == {"probe_home", "probe_ability", "probe_size", "probe_feeling"}
    assert [c["first"] for c in payload["claims"]] == ["mov", "molora", "mov"]
    out = cfg.out_dir
    for name in ("results.json", "results.md", "accuracy_vs_params.png", "routing_mov.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(payload))
    info = payload["methods_info"]
    assert info["full"]["trainable_percent"] == 100.0
    assert 0 < info["ia3"]["trainable_percent"] < info["mov"]["trainable_percent"]
    text = (out / "results.md").read_text()
    for heading in (
        "## A. Held-in",
        "## B. Held-out prompts",
        "## C. Held-out tasks",
        "## Claim check",
        "## Fact probes",
        "| Chance |",
        "| Base (untuned) |",
    ):
        assert heading in text, heading
    assert not (out / "adapters" / "full-seed0").exists()
    for method in ("ia3", "lora", "mov", "molora"):
        assert (out / "adapters" / f"{method}-seed0" / "mixlight_config.json").is_file()
    base = instruct.prepare(cfg)
    fresh = ml.load_adapter(base.model, out / "adapters" / "mov-seed0")
    assert "mixlight_state" in fresh.__dict__
    routing = json.loads((out / "routing.json").read_text())
    assert set(routing) == {"mov", "molora"}

    def no_rebuild(*args):
        raise AssertionError("the cached base should have been reused")

    monkeypatch.setattr(instruct, "build_base", no_rebuild)
    experiment.run(dataclasses.replace(cfg, methods=("ia3",)), log=lambda _: None)
    # The cached base is an ordinary HF T5 directory with its tokenizer: --model accepts it.
    again = dataclasses.replace(cfg, methods=("lora",), model_path=base.path, out_dir=out / "m")
    assert list(experiment.run(again, log=lambda _: None)["tables"]["B"]["methods"]) == ["lora"]


def test_the_default_run_uses_the_shipped_base():
    cfg = experiment.DemoConfig()
    assert experiment.base_checkpoint(cfg) == experiment.SHIPPED_BASE
    info = json.loads((experiment.SHIPPED_BASE / "pretraining.json").read_text())
    assert info["key"] == experiment.base_key(cfg)
    assert info["spec"] == dataclasses.asdict(cfg.base)
    size = (experiment.SHIPPED_BASE / "model.safetensors").stat().st_size
    assert size < 20e6
    changed = dataclasses.replace(cfg, base=experiment.BaseSpec(pretrain_steps=10))
    assert experiment.base_checkpoint(changed).parent == cfg.cache_dir


def test_quick_cli_data_file_and_eval_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "QUICK", MICRO)
    data = tmp_path / "mine.jsonl"
    rows = [
        {"inputs": "Is the sky blue?", "targets": "yes", "answer_choices": ["yes", "no"]},
        {"inputs": "Is fire cold?", "targets": "no", "answer_choices": ["yes", "no"]},
        {"inputs": "Name a colour.", "targets": "red", "task": "free"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({**rows[0], "task": "outside"}) + "\n")
    args = ["--quick", "--methods", "mov,ia3", "--data", str(data), "--no-progress"]
    second = tmp_path / "second.jsonl"
    second.write_text(json.dumps({**rows[1], "task": "another"}) + "\n")
    args += ["--eval-data", str(extra), "--eval-data", str(second)]
    args += ["--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(args) == 0
    tables = json.loads((tmp_path / "out" / "results.json").read_text())["tables"]
    assert list(tables) == ["A", "D", "E"]
    assert set(tables["A"]["methods"]) == {"mov", "ia3"}
    assert list(tables["A"]["methods"]["mov"]["tasks"]) == ["mine"]
    assert list(tables["D"]["methods"]["mov"]["tasks"]) == ["outside"]
    assert list(tables["E"]["methods"]["mov"]["tasks"]) == ["another"]
    assert tables["E"]["title"] == f"E. Your prompts (--eval-data {second})"
    claims = json.loads((tmp_path / "out" / "results.json").read_text())["eval_data_claims"]
    assert {t: [(c["first"], c["second"]) for c in cs] for t, cs in claims.items()} == {
        "D": [("mov", "ia3")],
        "E": [("mov", "ia3")],
    }
    assert (
        "## Claim check on your prompts (table E)" in (tmp_path / "out" / "results.md").read_text()
    )
    out = capsys.readouterr().out
    assert f"## D. Your prompts (--eval-data {extra})" in out and "## E. Your prompts" in out


def test_interrupted_run_keeps_finished_methods(tmp_path, monkeypatch, capsys):
    real_tune = instruct.tune
    calls = []

    def tune_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_tune(*args, **kwargs)

    monkeypatch.setattr(instruct, "tune", tune_then_interrupt)
    monkeypatch.setattr(cli, "QUICK", MICRO)
    out = tmp_path / "out"
    args = ["--quick", "--methods", "ia3,mov", "--output-dir", str(out)]
    assert cli.main([*args, "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 130
    assert "interrupted" in capsys.readouterr().err
    tables = json.loads((out / "results.json").read_text())["tables"]
    assert set(tables["B"]["methods"]) == {"ia3"}


def test_a_non_finite_loss_stops_the_run(tmp_path):
    cfg = micro(tmp_path)
    base = instruct.prepare(cfg)
    with torch.no_grad():
        base.model.lm_head.weight.fill_(float("nan"))
    settings = experiment.settings_for(cfg, "ia3", 0)
    examples = [Example("t", "t1", "a cat", "yes", ("yes", "no"), 0)] * 4
    with pytest.raises(experiment.DemoError, match="loss became nan at step 1.*Lower --lr"):
        instruct.tune(base, ml.IA3(), examples, settings)


# --- bad input: each a clear error before anything trains ------------------------------------


def _bad_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"inputs": "a", "targets": "b"}\n{"inputs": "a", "targets": \n')
    return path


def _not_t5(tmp_path: Path) -> Path:
    path = tmp_path / "bert"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return path


def _t5_without_tokenizer(tmp_path: Path) -> Path:
    path = tmp_path / "t5"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    return path


def _random_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "noise.jsonl"
    path.write_bytes(bytes(range(256)) * 4)
    return path


def _plain_folder(tmp_path: Path) -> Path:
    path = tmp_path / "plain"
    path.mkdir()
    (path / "notes.txt").write_text("hello")
    return path


def _no_choices(tmp_path: Path) -> Path:
    path = tmp_path / "free.jsonl"
    path.write_text(json.dumps({"inputs": "a", "targets": "b"}) + "\n")
    return path


BAD_INPUTS = {
    "unknown method": (lambda p: ["--methods", "mov,moe"], "unknown method(s) moe; valid: full"),
    "missing model": (lambda p: ["--model", str(p / "nope")], "no such directory"),
    "not a t5": (lambda p: ["--model", str(_not_t5(p))], "model_type is 'bert'"),
    "no tokenizer": (lambda p: ["--model", str(_t5_without_tokenizer(p))], "no tokenizer"),
    "malformed data": (lambda p: ["--data", str(_bad_jsonl(p))], "bad.jsonl:2: bad JSON"),
    "missing data": (lambda p: ["--data", str(p / "none.jsonl")], "no data file"),
    "out not writable": (lambda p: ["--output-dir", str(_bad_jsonl(p) / "sub")], "not writable"),
    "bad steps": (lambda p: ["--steps", "0"], "--steps must be at least 1"),
    "bad full steps": (lambda p: ["--full-steps", "-1"], "--full-steps must be at least 1"),
    "zero threads": (lambda p: ["--threads", "0"], "--threads must be at least 1"),
    "nan lr": (lambda p: ["--lr", "nan"], "--lr must be a positive finite number, got nan"),
    "negative lr": (lambda p: ["--lr", "-1"], "--lr must be a positive finite number"),
    "random bytes as data": (lambda p: ["--data", str(_random_bytes(p))], "noise.jsonl"),
    "a folder as data": (lambda p: ["--data", str(_plain_folder(p))], "plain"),
    "eval data without choices": (
        lambda p: ["--eval-data", str(_no_choices(p))],
        "no rows with answer_choices",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_error_before_training(case, tmp_path, monkeypatch, capsys):
    def no_training(*args):
        raise AssertionError("nothing should start")

    monkeypatch.setattr(instruct, "prepare", no_training)
    make_args, message = BAD_INPUTS[case]
    args = make_args(tmp_path)
    if "--output-dir" not in args:
        args += ["--output-dir", str(tmp_path / "out")]
    assert cli.main([*args, "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixlight demo: error: ") and message in err
