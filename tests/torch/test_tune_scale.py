"""``mixlight tune`` at scale, torch: two gloo ranks under ``torchrun`` (DDP, and FSDP2 with
gradient accumulation, evaluation and ``keep_best``) train the adapter of the one-process run
of the same config; the global batch's target tokens normalise the loss (rows of unequal
target lengths, so a per-rank mean would differ); accumulation equals one big step;
dropout is the config's (HF's attention dropout included); bf16 trains float32 adapters;
the loop's extras (schedule, clipping, evaluation, keep_best, TensorBoard) resume bit for
bit; ``--dry-run`` estimates the memory.

The module is also the ranks' script: ``torchrun --nproc_per_node 2 -m
tests.torch.test_tune_scale ROOT`` runs every config under ``ROOT/<name>/torch.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

import mixlight as ml  # noqa: E402
from mixlight._torch_group import end_launched_process  # noqa: E402
from mixlight.cli import main  # noqa: E402
from mixlight_tune.tune_cli import run  # noqa: E402
from mixlight_tune.tune_config import read_config  # noqa: E402
from tests.torch.torchrun import torchrun_command  # noqa: E402
from tests.tune_case import interrupted_then_resumed, write_case  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# Targets of 1 to 6 tokens: each rank's share of a batch holds a different number of target
# tokens, so averaging per-rank means would not give the global mean.
ROWS = [
    {
        "inputs": f"Is {n} an even number?",
        "targets": ["yes", "no", "yes it is even", "no, it is odd and small"][n % 4],
        "answer_choices": ["yes", "no"] if n % 4 < 2 else None,
        "task": "parity",
    }
    for n in range(12)
]
SGD = {
    "optimizer": "sgd",
    "lr": 0.5,
    "steps": 3,
    "batch_size": 4,
    "checkpoint_every": 0,
    "eval_data": "eval.jsonl",  # 5 rows: two ranks score 3 slots each, one of them padding
}
RANK_CASES = {
    "ddp": SGD | {"distributed": "ddp"},
    "fsdp": SGD
    | {
        "distributed": "fsdp",
        "grad_accum_steps": 2,
        "checkpoint_every": 2,
        "eval_data": "eval.jsonl",
        "eval_every": 2,
        "keep_best": "eval_average",
    },
}
# A causal LM (a tiny random Llama, GQA, rotary embeddings) sharded by FSDP2: its rotary
# ``inv_freq`` is a buffer no state dict holds, copied from rank 0 by the sharded load.
CAUSAL_CASE = "fsdp_causal"


def case(root: Path, **overrides) -> Path:
    """``root/torch.json`` over :data:`ROWS` (``train.jsonl``; ``eval.jsonl``: the rows with
    answer choices)."""
    root.mkdir(parents=True, exist_ok=True)
    config = write_case(root, "torch", **({"eval_data": None} | overrides))
    rows = [{k: v for k, v in r.items() if v is not None} for r in ROWS]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    scored = [r for r in rows if "answer_choices" in r][:5]
    (root / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in scored) + "\n")
    return config


def adapter(path: Path) -> dict[str, np.ndarray]:
    return ml.read_adapter(path).arrays


def assert_same_adapter(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=atol, rtol=0, err_msg=name)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> Path:
    """Every :data:`RANK_CASES` config run by two gloo ranks under torchrun."""
    root = tmp_path_factory.mktemp("ranks")
    for name, overrides in RANK_CASES.items():
        case(root / name, **overrides)
    case(root / CAUSAL_CASE, **causal_case(root / "llama"))
    command = [*torchrun_command(), "-m", "tests.torch.test_tune_scale"]
    done = subprocess.run(
        [*command, str(root)],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root


def test_two_ranks_train_the_one_process_adapter(ranks, tmp_path):
    """DDP (one micro-batch) and FSDP2 (two micro-batches of two rows, one a rank) both
    equal one process on the whole batch of 4, to float32 rounding, with plain SGD (Adam
    would hide a constant gradient scale). Only rank 0 wrote: one adapter, one metrics."""
    one = run(read_config(case(tmp_path, **SGD)), lambda _: None)
    want = adapter(tmp_path / "out-torch/adapter")
    assert not all((v == 1).all() for k, v in want.items() if k.endswith(".vectors"))
    for name in RANK_CASES:
        out = ranks / name / "out-torch"
        metrics = json.loads((out / "metrics.json").read_text())
        np.testing.assert_allclose(metrics["losses"], one["losses"], rtol=1e-5)
        assert_same_adapter(adapter(out / "adapter"), want, atol=2e-6)
        for key in ("average", "tasks"):  # each rank scored its share; gathered
            assert metrics["eval"][key] == one["eval"][key]
        assert metrics["parallel"] == {
            "processes": 2,
            "devices": 2,
            "data": 2,
            "model": 1,
            "layout": name,
            "device": "cpu",
        }
        assert metrics["tokens_per_second"] > 0


def causal_case(folder: Path) -> dict:
    """The FSDP2 overrides on a tiny Llama saved in ``folder`` (built once)."""
    from tests.torch.test_tune_causal import byte_level_tokenizer, tiny_llama

    if not folder.exists():
        tokenizer = byte_level_tokenizer()
        tiny_llama(len(tokenizer)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return SGD | {"distributed": "fsdp", "model": str(folder), "lr": 0.05}


def test_fsdp_trains_a_causal_lm_as_one_process(ranks, tmp_path):
    one = run(read_config(case(tmp_path, **causal_case(ranks / "llama"))), lambda _: None)
    out = ranks / CAUSAL_CASE / "out-torch"
    metrics = json.loads((out / "metrics.json").read_text())
    np.testing.assert_allclose(metrics["losses"], one["losses"], rtol=1e-5)
    want = adapter(tmp_path / "out-torch/adapter")
    assert not all((v == 1).all() for k, v in want.items() if k.endswith(".vectors"))  # trained
    assert_same_adapter(adapter(out / "adapter"), want, 2e-6)
    assert metrics["eval"]["average"] == one["eval"]["average"]


def test_fsdp_evaluates_keeps_the_best_and_checkpoints(ranks):
    out = ranks / "fsdp" / "out-torch"
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["step"] for e in metrics["eval_history"]] == [2, 3]
    best = max(metrics["eval_history"], key=lambda e: e["average"])
    assert metrics["best"]["eval_average"] == best["average"]
    assert (out / "best_adapter/mixlight_adapter.safetensors").is_file()
    assert (out / "checkpoint.safetensors").is_file()  # gathered from both ranks' shards


def test_accumulation_equals_one_big_step(tmp_path):
    """Two micro-batches of 2 rows equal one batch of 4: the loss is normalised by the global
    batch's target tokens, not averaged per micro-batch."""
    big = run(read_config(case(tmp_path / "big", **SGD)), lambda _: None)
    split = run(read_config(case(tmp_path / "split", **SGD, grad_accum_steps=2)), lambda _: None)
    np.testing.assert_allclose(split["losses"], big["losses"], rtol=1e-5)
    assert_same_adapter(
        adapter(tmp_path / "split/out-torch/adapter"),
        adapter(tmp_path / "big/out-torch/adapter"),
        atol=2e-6,
    )


def test_attention_dropout_follows_the_config(tmp_path):
    """HF's T5Attention drops attention weights from a float attribute, not an nn.Dropout:
    the config's dropout reaches it (and every nn.Dropout), whatever the checkpoint says."""
    from mixlight_tune.frameworks.torch_steps import set_dropout
    from tests.torch.conftest import tiny_t5

    model = tiny_t5()
    set_dropout(model, 0.0)
    rates = {
        getattr(m, "p", getattr(m, "dropout", None))
        for m in model.modules()
        if isinstance(m, torch.nn.Dropout) or isinstance(getattr(m, "dropout", None), float)
    }
    assert rates == {0.0} and model.config.dropout_rate == 0.0
    on = run(read_config(case(tmp_path / "on", **SGD, dropout=0.1)), lambda _: None)
    off = run(read_config(case(tmp_path / "off", **SGD, dropout=0.0)), lambda _: None)
    assert on["losses"] != off["losses"] and all(np.isfinite(on["losses"]))


def test_bf16_trains_and_saves_float32_adapters(tmp_path):
    metrics = run(
        read_config(case(tmp_path, **SGD, precision="bf16", gradient_checkpointing=True)),
        lambda _: None,
    )
    assert all(np.isfinite(metrics["losses"])) and metrics["losses"][-1] < metrics["losses"][0]
    arrays = adapter(tmp_path / "out-torch/adapter")
    assert {a.dtype for a in arrays.values()} == {np.dtype(np.float32)}
    assert "bfloat16" in str(ml.read_adapter(tmp_path / "out-torch/adapter").base_identity.dtype)


LOOP = {
    "steps": 7,
    "batch_size": 4,
    "grad_accum_steps": 2,
    "lr_schedule": "cosine",
    "warmup_steps": 2,
    "max_grad_norm": 0.5,
    "eval_data": "train.jsonl",
    "eval_every": 2,
    "keep_best": "eval_average",
    "dropout": 0.1,
}
try:  # the optional extra mixlight[tune-logs]
    import tensorboard  # noqa: F401

    LOOP["log"] = ["tensorboard"]
except ImportError:
    pass


def test_resume_is_bit_identical_with_every_loop_feature(tmp_path, monkeypatch):
    whole, resumed = interrupted_then_resumed(tmp_path, "torch", monkeypatch, **LOOP)
    assert resumed["losses"] == whole["losses"]
    assert resumed["eval_history"] == whole["eval_history"] and len(whole["eval_history"]) == 4
    assert resumed["best"]["step"] == whole["best"]["step"]
    for folder in ("adapter", "best_adapter"):
        a = adapter(tmp_path / f"whole/out-torch/{folder}")
        b = adapter(tmp_path / f"split/out-torch/{folder}")
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{folder} {key}")
    if "log" not in LOOP:
        return
    events = list((tmp_path / "whole/out-torch/tensorboard").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert {"loss", "lr", "tokens_per_second", "eval_average"} <= set(acc.Tags()["scalars"])
    lrs = [e.value for e in acc.Scalars("lr")]
    assert lrs[0] < lrs[1] and lrs[-1] < lrs[2]  # warmup, then the cosine decay


def test_dry_run_prints_the_memory_estimate(tmp_path, capsys):
    config = case(tmp_path, precision="bf16")
    assert main(["tune", str(config), "--dry-run"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    memory = printed["memory_per_device_mib"]
    parts = sum(v for k, v in memory.items() if k != "total")
    assert memory["total"] == pytest.approx(parts, abs=0.1 * len(memory))
    assert memory["base_weights"] > 0 and memory["activations"] > 0
    assert "estimated peak memory per device" in captured.err
    assert printed["parallel"]["processes"] == 1
    assert not (tmp_path / "out-torch").exists()


def _ranks_main(root: Path) -> None:
    """Under torchrun: every config below ``root`` (each a rank's share of the same run)."""
    for name in [*RANK_CASES, CAUSAL_CASE]:
        run(read_config(root / name / "torch.json"), print)
    end_launched_process(0)


if __name__ == "__main__":
    _ranks_main(Path(sys.argv[1]))


def test_under_fsdp_only_rank_0_reads_the_weights(monkeypatch):
    """The other ranks build the base on the meta device (no weights in memory); rank 0
    keeps the CPU copy it read until the shards are filled (the FSDP2 run above then
    trains the one-process adapter)."""
    from mixlight_tune.experiment import DemoConfig
    from mixlight_tune.frameworks import torch_steps
    from mixlight_tune.steps import Parallel, Runtime

    for rank, device in ((1, "meta"), (0, "cpu")):
        parallel = Parallel(processes=2, rank=rank, devices=2, data=2, layout="fsdp")
        monkeypatch.setattr(torch_steps, "setup", lambda *a, p=parallel: (torch.device("cpu"), p))
        base = torch_steps.prepare(DemoConfig(), Runtime(distributed="fsdp"))
        assert base.sharded_load and {p.device.type for p in base.model.parameters()} == {device}
