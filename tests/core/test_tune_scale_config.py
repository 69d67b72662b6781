"""The keys ``mixlight tune`` gained for devices, processes, memory and the training loop:
defaults, clear refusals, the learning-rate schedule, micro-batches, the memory estimate,
the token cache, and old checkpoints' configs. No framework is imported."""

import math

import pytest

from mixlight_tune import loop, memory, token_cache
from mixlight_tune.checkpoint import INTRODUCED, config_changes
from mixlight_tune.steps import DemoError
from mixlight_tune.tune_config import TuneConfigError, parse

EVAL_ROW = '{"inputs": "q", "targets": "a", "answer_choices": ["a", "b"]}'


def test_defaults():
    cfg = parse({})
    assert cfg.dropout == 0.1  # the paper's fine-tuning dropout (paper.md §4.2)
    assert (cfg.device, cfg.threads, cfg.precision, cfg.distributed) == (
        "auto",
        None,
        "fp32",
        "ddp",
    )
    assert (cfg.mesh, cfg.grad_accum_steps, cfg.lr_schedule, cfg.warmup_steps) == (
        None,
        1,
        "constant",
        0,
    )
    assert (cfg.max_grad_norm, cfg.eval_every, cfg.keep_best, cfg.log) == (None, 0, None, ())
    resolved = cfg.resolved()
    assert resolved["log"] == [] and resolved["mesh"] is None
    assert parse(resolved | {"adapter": resolved["adapter"]}).resolved() == resolved


def test_new_keys_parse(tmp_path):
    (tmp_path / "e.jsonl").write_text(EVAL_ROW)
    cfg = parse(
        {
            "device": "cuda:1",
            "threads": 3,
            "precision": "bf16",
            "gradient_checkpointing": True,
            "distributed": "fsdp",
            "mesh": {"model": 2, "data": 4},
            "batch_size": 8,
            "grad_accum_steps": 4,
            "lr_schedule": "cosine",
            "warmup_steps": 10,
            "max_grad_norm": 1,
            "eval_data": "e.jsonl",
            "eval_every": 5,
            "keep_best": "eval_average",
            "log": ["tensorboard", "tensorboard"],
            "dropout": 0,
        },
        base_dir=tmp_path,
    )
    assert cfg.mesh == {"data": 4, "model": 2} and cfg.log == ("tensorboard",)
    assert cfg.max_grad_norm == 1.0 and cfg.dropout == 0.0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"dropout": 1}, r"dropout must be a number from 0 \(off\) to below 1"),
        ({"device": "gpu"}, r'device must be "auto", "cpu", "cuda" or "cuda:N"'),
        ({"precision": "fp16"}, r'precision must be "fp32" or "bf16"'),
        ({"distributed": "zero"}, r'distributed must be "ddp" or "fsdp"'),
        ({"mesh": {"data": 2, "pipe": 2}}, r"mesh must be a table of device counts by axis"),
        ({"mesh": {"data": 0}}, r"mesh.data must be an integer >= 1"),
        ({"threads": 0}, r"threads must be an integer >= 1"),
        ({"batch_size": 6, "grad_accum_steps": 4}, r"batch_size \(6\) must be a multiple of"),
        ({"lr_schedule": "step"}, r'lr_schedule must be "constant" or "linear" or "cosine"'),
        ({"warmup_steps": 200}, r"warmup_steps \(200\) must not exceed steps \(100\)"),
        ({"max_grad_norm": -1}, r"max_grad_norm must be a positive finite number"),
        ({"eval_every": 10}, r"eval_every needs eval_data"),
        ({"keep_best": "loss"}, r'keep_best must be "eval_average" or omitted'),
        ({"log": ["mlflow"]}, r'log must be a list of "tensorboard" and/or "wandb"'),
        ({"coordinator_address": "host"}, r'coordinator_address must be "host:port"'),
        ({"num_processes": 2, "process_id": 2}, r"process_id must be below num_processes"),
    ],
)
def test_bad_values_name_the_key(raw, message, tmp_path):
    with pytest.raises(TuneConfigError, match=message):
        parse(raw, base_dir=tmp_path)


def test_keep_best_needs_evaluations_during_training(tmp_path):
    (tmp_path / "e.jsonl").write_text(EVAL_ROW)
    with pytest.raises(TuneConfigError, match="keep_best needs eval_every > 0"):
        parse({"eval_data": "e.jsonl", "keep_best": "eval_average"}, base_dir=tmp_path)


def test_lr_schedule():
    factor = loop.lr_factor
    assert [factor(s, 10, "constant", 0) for s in (0, 9)] == [1.0, 1.0]
    assert [factor(s, 10, "constant", 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert factor(4, 10, "linear", 4) == 1.0 and factor(7, 10, "linear", 4) == 0.5
    assert factor(4, 10, "cosine", 4) == 1.0
    assert factor(7, 10, "cosine", 4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert all(factor(s, 10, kind, 0) > 0 for s in range(10) for kind in ("linear", "cosine"))


def test_micro_batches_and_shards():
    assert loop.micro_batches([1, 2, 3, 4, 5, 6], 2) == [[1, 2, 3], [4, 5, 6]]
    assert loop.shard([4, 5, 6, 7], 1, 2) == [6, 7]
    with pytest.raises(DemoError, match="cannot be split into 4 equal micro-batches"):
        loop.micro_batches([1, 2, 3, 4, 5, 6], 4)


def test_checkpoints_of_older_runs_compare_with_the_behaviour_they_had():
    old = {"lr": 0.01, "steps": 7}  # written before the new keys existed: no dropout then
    now = INTRODUCED | {"lr": 0.01, "steps": 7, "device": "cuda"}
    assert config_changes(old, now) == []
    assert config_changes(old, now | {"dropout": 0.1}) == ["dropout: checkpoint 0.0, config 0.1"]
    assert config_changes(now, now | {"mesh": {"data": 8}, "distributed": "fsdp"}) == []


T5_XL = {
    "d_model": 2048,
    "d_kv": 64,
    "num_heads": 32,
    "d_ff": 5120,
    "num_layers": 24,
    "num_decoder_layers": 24,
    "vocab_size": 32128,
    "feed_forward_proj": "gated-gelu",
}


def test_memory_estimate_scales_as_expected():
    inputs = {
        "base_bytes": 2_849_757_184 * 2,
        "config": T5_XL,
        "trainable": {"encoder.block.0.layer.1.DenseReluDense.act.vectors": (10, 5120)},
    }
    common = dict(optimizer="adamw", micro_batch=8, source=512, target=128)
    plain = memory.estimate(
        inputs, precision="bf16", checkpointing=False, layout=memory.Layout(), **common
    )
    remat = memory.estimate(
        inputs, precision="bf16", checkpointing=True, layout=memory.Layout(), **common
    )
    fsdp = memory.estimate(
        inputs,
        precision="bf16",
        checkpointing=False,
        layout=memory.Layout(processes=8, data=8, fsdp=True),
        **common,
    )
    assert plain["base_weights"] == 2_849_757_184 * 2
    assert plain["optimizer_state"] == 8 * 10 * 5120
    assert remat["activations"] < plain["activations"] / 5
    assert fsdp["base_weights"] < plain["base_weights"] / 6
    assert fsdp["activations"] < plain["activations"] / 7  # one row a device instead of 8
    assert plain["total"] == sum(v for k, v in plain.items() if k != "total")
    assert "MiB" in memory.format_estimate(plain, 0.28)


def test_adafactor_state_is_factored():
    assert memory.optimizer_floats("adafactor", [(10, 5120)]) == 10 + 5120 + 1
    assert memory.optimizer_floats("adafactor", [(5120,)]) == 5121
    assert memory.optimizer_floats("sgd", [(10, 5120)]) == 0


def test_token_cache_round_trip(tmp_path):
    (tmp_path / "spiece.model").write_bytes(b"tok")
    key = token_cache.cache_key({"sha256": "abc"}, tmp_path, (256, 64))
    pairs = [([5, 6, 1], [7, 1]), ([1], [8, 9, 1])]
    calls = []

    def tokenize():
        calls.append(1)
        return pairs

    path = tmp_path / token_cache.FILE
    assert token_cache.cached_pairs(path, key, tokenize, writer=True) == (pairs, False)
    assert token_cache.cached_pairs(path, key, tokenize, writer=True) == (pairs, True)
    assert len(calls) == 1
    other = token_cache.cache_key({"sha256": "abc"}, tmp_path, (128, 64))
    assert token_cache.read(path, other) is None
