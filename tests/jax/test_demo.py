"""The demo's JAX backend: an end-to-end quick run, and agreement with the torch backend."""

import dataclasses
import json

import numpy as np
import pytest
from flax import nnx

import mixlight as ml
from mixlight_tune import cli
from mixlight_tune.experiment import QUICK, settings_for, validate

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("demo-cache")


def test_quick_run_writes_results(tmp_path, cache_dir):
    out = tmp_path / "out"
    argv = ["--quick", "--backend", "jax", "--methods", "ia3,mov", "--steps", "3"]
    argv += ["--output-dir", str(out), "--cache-dir", str(cache_dir), "--no-progress"]
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods_info"]) == {"ia3", "mov"}
    assert list(results["tables"]) == ["A", "B", "C"]
    assert set(results["tables"]["B"]["methods"]) == {"ia3", "mov"}
    assert (out / "adapters" / "mov-seed0" / "mixlight_config.json").is_file()


def test_matches_torch_backend(tmp_path, cache_dir):
    from mixlight_tune.frameworks import jax_steps as jax_instruct
    from mixlight_tune.frameworks import torch_steps as torch_instruct

    cfg = dataclasses.replace(
        QUICK, methods=("full",), out_dir=tmp_path, cache_dir=cache_dir, progress=False
    )
    plan = validate(cfg)
    examples = [e for table in plan.tables.values() for e in table] + plan.probes
    torch_base = torch_instruct.prepare(cfg)
    jax_base = jax_instruct.prepare(cfg)
    assert jax_base.path == torch_base.path
    settings = dataclasses.replace(settings_for(cfg, "full", 0), steps=0)
    torch_model, torch_losses = torch_instruct.tune(torch_base, None, plan.train, settings)
    jax_model, jax_losses = jax_instruct.tune(jax_base, None, plan.train, settings)
    assert torch_losses == jax_losses == []
    assert jax_instruct.trainable_percent(jax_model) == 0.0
    assert jax_instruct.save(jax_model, tmp_path / "a") is None
    torch_correct, _ = torch_instruct.evaluate(torch_model, torch_base, examples, cfg)
    jax_correct, routing = jax_instruct.evaluate(jax_model, jax_base, examples, cfg)
    assert jax_correct == torch_correct
    assert routing == {}

    # The same MoV adapter (torch's, loaded into the JAX model): same routing per task.
    zero = dataclasses.replace(settings_for(cfg, "mov", 0), steps=0)
    torch_mov, _ = torch_instruct.tune(torch_base, ml.MoV(10), plan.train, zero)
    saved = torch_instruct.save(torch_mov, tmp_path / "mov")
    jax_mov = ml.load_adapter(nnx.clone(jax_base.model), saved)
    _, torch_routing = torch_instruct.evaluate(torch_mov, torch_base, examples, cfg)
    _, jax_routing = jax_instruct.evaluate(jax_mov, jax_base, examples, cfg)
    assert set(jax_routing) == set(torch_routing) and jax_routing
    for site, by_task in torch_routing.items():
        assert set(jax_routing[site]) == set(by_task)
        for task, probs in by_task.items():
            np.testing.assert_allclose(jax_routing[site][task], probs, atol=1e-4)


def test_dropout_is_applied_not_ignored(tmp_path):
    """The NNX T5 has HF's dropout: a run with dropout 0.1 trains and its losses differ
    from the same run without (it used to be refused)."""
    from mixlight_tune.frameworks import jax_steps

    cfg = dataclasses.replace(QUICK, out_dir=tmp_path, progress=False)
    plan = validate(cfg)
    base = jax_steps.prepare(cfg)
    settings = dataclasses.replace(settings_for(cfg, "ia3", 0), steps=3)
    _, plain = jax_steps.tune(base, ml.IA3(), plan.train, settings)
    _, dropped = jax_steps.tune(
        base, ml.IA3(), plan.train, dataclasses.replace(settings, dropout=0.1)
    )
    assert all(np.isfinite(dropped)) and len(dropped) == 3
    assert plain != dropped
