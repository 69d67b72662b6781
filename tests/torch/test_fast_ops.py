"""A custom expert kind's fast op runs in torch when registered, and a site whose op the
backend lacks runs the core math."""

import sys
from pathlib import Path

import pytest
import torch

import mixlight as ml
import mixlight.extend as mlx
from mixlight import fast_ops
from mixlight_torch import implement_fast_op
from mixlight_torch.ops import FAST_OPS
from tests.torch.conftest import batch, perturb, tiny_t5

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from custom_expert import Biases, BiasMixture  # noqa: E402


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(fast_ops, "_OPS", list(fast_ops._OPS))
    monkeypatch.setattr("mixlight_torch.ops._sites.FAST_OPS", dict(FAST_OPS))
    fast_ops.fast_op.cache_clear()
    yield
    fast_ops.fast_op.cache_clear()


def logits(model):
    ids, mask, dec = batch(0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits


def test_a_custom_kinds_fast_op_serves_its_sites(registry):
    config = BiasMixture(3, [r".*SelfAttention\.v"])
    want = logits(perturb(ml.inject(tiny_t5(), config, seed=0)))
    calls = []

    def biases_op(spec, params, x, h):
        calls.append(spec.path)
        probs = torch.softmax((h.float() @ params["router"]), -1)
        return h + (probs @ params["biases"]).to(h.dtype), probs, None

    mlx.register_fast_op("biases", lambda spec: isinstance(spec.expert, Biases))
    implement_fast_op("biases", biases_op)
    got = logits(perturb(ml.inject(tiny_t5(), config, seed=0)))
    assert len(calls) == 4 and all(p.endswith("SelfAttention.v") for p in calls)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_an_op_the_backend_lacks_runs_the_core_math(registry):
    want = logits(perturb(ml.inject(tiny_t5(), ml.MoV(4), seed=0)))
    mlx.register_fast_op("nowhere", lambda spec: True)  # no backend implements it
    got = logits(perturb(ml.inject(tiny_t5(), ml.MoV(4), seed=0)))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
