"""``configs/paper/``: every Table 1 config dry-runs here without weights or data (the model
built on the meta device from the shipped ``config.json``), with the trainable share of the
reference layout (paper.md §5.1) and a memory estimate for an 8-process launch; and each XL
recipe runs end to end on the shipped tiny T5 through ``--set``-style overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from mixlight_tune.tune_cli import dry_run, run  # noqa: E402
from mixlight_tune.tune_config import read_config  # noqa: E402
from tests.tune_case import ROWS  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "paper"
# trainable % of the reference layout on meta-device T5 v1.1 (paper.md §5.1, item 4)
REFERENCE = {
    "xl-ia3": 0.019, "xl-lora-r4": 0.262, "xl-lora-r8": 0.524, "xl-lora-r16": 1.049,
    "xl-mov-10": 0.279, "xl-mov-30": 0.838, "xl-mov-60": 1.675, "xl-molora-10": 2.949,
    "xl-molora-15": 4.424, "xl-full": 100.0, "xxl-mov-60": 0.852,
}  # fmt: skip


def names() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.toml"))


def test_every_row_has_an_xl_and_an_xxl_config():
    rows = {n.split("-", 1)[1] for n in names()}
    assert len(names()) == 2 * len(rows) == 20
    assert {"full", "ia3", "lora-r4", "mov-10", "mov-30", "mov-60", "molora-10"} <= rows


@pytest.mark.parametrize("name", names())
def test_dry_run_without_weights(name, tmp_path):
    size = "t5-xxl-lm-adapt" if name.startswith("xxl") else "t5-xl-lm-adapt"
    settings = [f"model={CONFIGS / 'models' / size}", f"output_dir={tmp_path / 'out'}"]
    resolved = dry_run(read_config(CONFIGS / f"{name}.toml", settings), lambda _: None, 8)
    assert resolved["shapes_only"] and resolved["memory_layout"]["processes"] == 8
    if name in REFERENCE:
        assert resolved["trainable_percent"] == pytest.approx(REFERENCE[name], rel=0.05)
    memory = resolved["memory_per_device_mib"]
    assert memory["activations"] > 0 and memory["total"] > 1000  # a 3B/11B model, not a toy
    assert resolved["memory_lengths"] == {"source": 1024, "target": 256}
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


@pytest.mark.parametrize("name", [n for n in names() if n.startswith("xl-")])
def test_each_recipe_runs_on_a_tiny_stand_in(name, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    settings = ["steps=2", "batch_size=4", "max_input_tokens=32", "max_target_tokens=8"]
    settings += [f"data={rows}", f"eval_data={rows}", f"output_dir={tmp_path / 'out'}"]
    cfg = read_config(CONFIGS / f"{name}.toml", settings, model=None, eval_suite=None)
    metrics = run(cfg, lambda _: None)
    assert len(metrics["losses"]) == 2 and metrics["eval"]["average"] >= 0
    assert metrics["config"]["precision"] == "bf16"  # the paper recipe, on the stand-in
