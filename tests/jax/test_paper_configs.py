"""``configs/paper/``'s full fine-tuning row in JAX (``--backend jax``) on the shipped tiny T5:
every weight trains, the run is scored, and ``output_dir/model`` is a transformers checkpoint
holding the trained weights (each the last checkpoint's, under its HF name) that mixlight's
JAX T5, and transformers when installed, load back whole."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from mixlight.cli import main
from tests.tune_case import ROWS

pytest.importorskip("jax")
pytest.importorskip("optax")

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "paper"
_STEP = re.compile(r"\['([^']+)'\]|\[(\d+)\]")


def _hf_name(key: str) -> tuple[str, bool]:
    """A JAX checkpoint key (``model/['encoder']['block'][0]...['kernel'].value``) as the HF
    name and whether the HF tensor is its transpose."""
    from mixlight_jax.t5.paths import hf_state_key

    path = [name or int(index) for name, index in _STEP.findall(key)]
    return hf_state_key(path)


def test_full_fine_tuning_saves_the_trained_model(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "out"
    settings = ["model=", "eval_suite=", "mixture=", f"data={rows}", f"eval_data={rows}"]
    settings += [f"output_dir={out}"]
    settings += ["steps=2", "batch_size=4", "max_input_tokens=32", "max_target_tokens=8"]
    args = ["tune", str(CONFIGS / "xl-full.toml"), "--backend", "jax"]
    for setting in settings + ["progress=false"]:
        args += ["--set", setting]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_percent"] == 100.0 and metrics["adapter"] is None
    assert metrics["model"] == str(out / "model") and len(metrics["losses"]) == 2
    assert metrics["eval"]["average"] >= 0 and metrics["config"]["adapter"] == "full"
    saved = load_file(out / "model" / "model.safetensors")
    trained = load_file(out / "checkpoint.safetensors")  # the last step's weights
    trained = {k: v for k, v in trained.items() if k.startswith("model/")}
    assert len(trained) == len(saved)
    for key, value in trained.items():
        name, transposed = _hf_name(key)
        np.testing.assert_array_equal(saved[name], value.T if transposed else value)
    from mixlight_jax import t5

    t5.from_pretrained(out / "model")  # every weight found, none left over
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    _, info = transformers.T5ForConditionalGeneration.from_pretrained(
        out / "model", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
