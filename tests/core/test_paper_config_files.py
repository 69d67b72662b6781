"""``configs/paper/``: the Table 1 configs are what ``generate.py`` writes, each reads as a
valid config with the paper's recipe (paper.md §4), trains on T0's training mixture (a
``[[mixture]]`` of the P3 subsets by Hub id, none of them a held-out dataset, with T0's caps)
and evaluates on ``t0_held_out``; and ``--set KEY=`` removes a key (the stand-in's
``model=``, ``eval_suite=``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import mixlight as ml
from mixlight_tune import p3
from mixlight_tune.suites import SUITES
from mixlight_tune.tune_config import read_config, with_settings

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "paper"
T0_TRAIN_DATASETS = 38  # paper.md §4.2's table


def generator():
    spec = importlib.util.spec_from_file_location("paper_configs", CONFIGS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_the_configs_are_what_generate_py_writes():
    files = generator().files()
    assert sorted(files) == sorted(p.name for p in CONFIGS.glob("*.toml"))
    assert {name.split("-", 1)[1].removesuffix(".toml") for name in files} == set(EXPECTED)
    for name, text in files.items():
        assert (CONFIGS / name).read_text(encoding="utf-8") == text, (
            f"{name} differs from what configs/paper/generate.py writes: run it"
        )


def test_t0_train_lists_every_template_of_the_38_training_datasets():
    subsets = [name for name, _ in generator().subsets()]
    assert len(subsets) == len(set(subsets)) == 313
    held_out = {task for column in SUITES["t0_held_out_all"] for task in column.tasks}
    tasks = {p3.split_name(s)[0] for s in subsets}
    assert len(tasks) == T0_TRAIN_DATASETS and not tasks & held_out
    assert all(p3.split_name(s)[1] for s in subsets)  # each a template of a known dataset
    assert not any(p3.is_score_eval(s) for s in subsets)


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.toml")))
def test_each_config_is_the_papers_recipe(name, tmp_path):
    cfg = read_config(CONFIGS / f"{name}.toml", [f"output_dir={tmp_path}"])
    size, row = name.split("-", 1)
    assert cfg.model == f"google/t5-{size}-lm-adapt" and cfg.backend == "torch"
    assert cfg.optimizer == "adafactor" and cfg.lr_schedule == "constant"
    assert (cfg.max_input_tokens, cfg.max_target_tokens, cfg.dropout) == (1024, 256, 0.1)
    assert cfg.eval_suite.resolved() == "t0_held_out" and cfg.gradient_checkpointing
    assert cfg.distributed == "ddp"
    if row == "full":  # scripts/t0_train.sh: lr 1e-3, batch 256, 10K steps; float32 weights
        assert cfg.adapter is None and cfg.resolved()["adapter"] == "full"
        assert (cfg.lr, cfg.batch_size, cfg.steps, cfg.precision) == (1e-3, 256, 10_000, "fp32")
        assert cfg.checkpoint_every == 1000
    else:  # lr 3e-4, batch 32, 500K steps; bfloat16 base, float32 adapters
        assert (cfg.lr, cfg.batch_size, cfg.steps, cfg.precision) == (3e-4, 32, 500_000, "bf16")
        assert cfg.checkpoint_every == (10_000 if row.startswith("mo") else 50_000)
    assert cfg.data is None and cfg.mixture_cap is None and len(cfg.mixture) == 313
    caps = {}
    for entry in cfg.mixture:
        source = entry.source
        assert (source.hub_id, source.split) == ("bigscience/P3", "train")
        assert source.revision == "refs/convert/parquet" and entry.rate is None
        caps[source.name] = entry.cap
    # T0's rule: templates of a dataset over 500K examples capped at 500,000 / its templates
    capped = {p3.split_name(name)[0]: cap for name, cap in caps.items() if cap is not None}
    assert capped == {
        "amazon_polarity": 55_555, "gigaword": 55_555, "yelp_review_full": 71_428,
        "dbpedia_14": 125_000, "wiki_bio": 100_000,
    }  # fmt: skip
    assert sum(cap is not None for cap in caps.values()) == 9 + 9 + 7 + 4 + 5


EXPECTED = {
    "full": None, "ia3": ml.IA3(), "lora-r4": ml.LoRA(rank=4), "lora-r8": ml.LoRA(rank=8),
    "lora-r16": ml.LoRA(rank=16), "mov-10": ml.MoV(10), "mov-30": ml.MoV(30),
    "mov-60": ml.MoV(60), "molora-10": ml.MoLoRA(10, rank=4), "molora-15": ml.MoLoRA(15, rank=4),
}  # fmt: skip


@pytest.mark.parametrize("row", sorted(EXPECTED))
def test_each_row_is_its_method_at_both_sizes(row, tmp_path):
    for size in ("xl", "xxl"):
        cfg = read_config(CONFIGS / f"{size}-{row}.toml", [f"output_dir={tmp_path}"])
        assert cfg.adapter == EXPECTED[row]


def test_set_with_nothing_after_the_equals_sign_removes_the_key():
    raw = {"model": "google/t5-xl-lm-adapt", "eval_suite": "t0_held_out", "steps": 9}
    raw |= {"adapter": {"preset": "molora", "num_experts": 10, "rank": 4}}
    out = with_settings(raw, ["model=", "eval_suite=", "adapter.rank= ", "steps=3"])
    assert out == {"steps": 3, "adapter": {"preset": "molora", "num_experts": 10}}
    assert raw["model"] == "google/t5-xl-lm-adapt"  # the file's mapping is left as it was
