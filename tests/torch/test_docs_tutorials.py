"""The torch tutorial and the custom-expert tutorial run as written (tests/docs_pages.py)
and compute what they say."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import T5ForConditionalGeneration

import mixlight as ml
from tests.docs_pages import ROOT, run_page


def test_torch_tutorial(tmp_path):
    ns = run_page("docs/tutorials/torch.md", tmp_path)
    model, losses = ns["model"], ns["losses"]
    # MoV-4 on this T5: per-head k/v routers [d_kv, E] + vectors [E, heads*d_kv] at 12
    # attention sites, router [d_ff, E] + vectors [E, d_ff] at 4 FFN activations.
    attention, ffn = 16 * 4 + 4 * 64, 128 * 4 + 4 * 128
    assert ns["count"].trainable == 12 * attention + 4 * ffn
    assert ns["count"].trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert len(losses) == 20 and losses[-1] < 0.9 * losses[0]
    base = T5ForConditionalGeneration(ns["config"])
    base.load_state_dict(ns["base_weights"])
    with torch.no_grad():  # a fresh adapter is the identity: step 0 is the base model's loss
        base_loss = base(input_ids=ns["ids"], labels=ns["ids"]).loss.item()
    np.testing.assert_allclose(losses[0], base_loss, rtol=1e-5)
    np.testing.assert_allclose(ns["ffn"]["mean_prob"].sum(), 1.0, rtol=1e-5)
    assert (ns["tuned"] - ns["untuned"]).abs().max() > 1e-3  # the adapter changes the logits
    torch.testing.assert_close(ns["reloaded"], ns["tuned"], rtol=0, atol=0)
    assert ml.read_adapter(tmp_path / "out/mov").config == ml.MoV(num_experts=4)


def test_custom_expert_tutorial(tmp_path):
    """In a fresh process: the page defines (and registers) ``Biases`` again, which this
    process may already hold from tests/torch/test_inject.py."""
    pytest.importorskip("jax")
    page = "docs/tutorials/custom-expert.md"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    code = f"from tests.docs_pages import run_page; run_page({page!r}, {str(tmp_path)!r})"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "Biases()"
    (config,) = (tmp_path / "out/biases").glob("*config.json")
    assert '"kind": "biases"' in config.read_text()
