"""A custom expert kind's fast op runs in torch when registered, and a site whose op the
backend lacks runs the core math."""

from typing import ClassVar

import attrs
import pytest
import torch

import mixlight as ml
import mixlight.extend as mlx
from mixlight import fast_ops
from mixlight.math import merge_vectors
from mixlight_torch import implement_fast_op
from mixlight_torch.ops import FAST_OPS
from tests.torch.conftest import batch, perturb, tiny_t5


@mlx.register_expert
@attrs.frozen
class OpTestBiases(mlx.ExpertKind):
    """E bias vectors, soft-merged per token and added to the output."""

    kind: ClassVar[str] = "op_test_biases"

    def param_specs(self, num_experts, d_in, d_out):
        return {"biases": mlx.ParamSpec((num_experts, d_out), "zeros")}

    def mix(self, params, probs, x, h, heads):
        return h + mlx.primitives_for(h).cast_like(merge_vectors(probs, params["biases"]), h)


CONFIG = ml.AdapterConfig([ml.Site(r".*SelfAttention\.v", OpTestBiases())], 3)


@pytest.fixture
def registry():
    """Restores the core's op list and torch's table after the test."""
    ops, table = list(fast_ops._OPS), dict(FAST_OPS)
    fast_ops.fast_op.cache_clear()
    yield
    fast_ops._OPS[:] = ops
    FAST_OPS.clear()
    FAST_OPS.update(table)
    fast_ops.fast_op.cache_clear()


def logits(model):
    ids, mask, dec = batch(0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits


def test_a_custom_kinds_fast_op_serves_its_sites(registry):
    want = logits(perturb(ml.inject(tiny_t5(), CONFIG, seed=0)))
    calls = []

    def biases_op(spec, params, x, h):
        calls.append(spec.path)
        probs = torch.softmax(h.float() @ params["router"], -1)
        return h + (probs @ params["biases"]).to(h.dtype), probs, None

    mlx.register_fast_op("op_test_biases", lambda spec: isinstance(spec.expert, OpTestBiases))
    implement_fast_op("op_test_biases", biases_op)
    got = logits(perturb(ml.inject(tiny_t5(), CONFIG, seed=0)))
    assert len(calls) == 4 and all(p.endswith("SelfAttention.v") for p in calls)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_an_op_the_backend_lacks_runs_the_core_math(registry):
    want = logits(perturb(ml.inject(tiny_t5(), ml.MoV(4), seed=0)))
    mlx.register_fast_op("nowhere", lambda spec: True)  # no backend implements it
    got = logits(perturb(ml.inject(tiny_t5(), ml.MoV(4), seed=0)))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
