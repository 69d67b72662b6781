"""A custom expert kind's fast op runs in torch when registered, a site whose op the backend
lacks runs the core math, and a layer resolves its op once, when an adapter is added."""

from typing import ClassVar

import attrs
import pytest
import torch

import mixlight as ml
import mixlight.extend as mlx
from mixlight import fast_ops
from mixlight.math import merge_vectors
from mixlight_torch import adapter_layers, implement_fast_op
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
    """Restores the core's fast-op registry after the test."""
    with fast_ops.registry_restored():
        yield


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


def variants(model, name="default"):
    """The variants the model's layers resolved for adapter ``name``."""
    return {layer.variants[name] for layer in adapter_layers(model).values()}


def test_the_op_is_resolved_once_when_the_adapter_is_added(registry):
    before = ml.inject(tiny_t5(), CONFIG, seed=0)
    calls = []

    def biases_op(spec, params, x, h):
        calls.append(spec.path)
        probs = torch.softmax(h.float() @ params["router"], -1)
        return h + (probs @ params["biases"]).to(h.dtype), probs, None

    mlx.register_fast_op("op_test_biases", lambda spec: isinstance(spec.expert, OpTestBiases))
    implement_fast_op("op_test_biases", biases_op)
    assert variants(before) == {None}  # added before the op existed: keeps the core math
    logits(before)
    assert calls == []
    after = ml.inject(tiny_t5(), CONFIG, seed=0)
    assert variants(after) == {fast_ops.FastOpVariant("op_test_biases", biases_op, False)}
    logits(after)
    assert len(calls) == 4


def test_core_math_only_picks_the_core_math_for_adapters_added_in_it():
    with fast_ops.core_math_only():
        naive = ml.inject(tiny_t5(), ml.MoV(4), seed=0)
    fused = ml.inject(tiny_t5(), ml.MoV(4), seed=0)
    assert variants(naive) == {None}
    assert {v.name for v in variants(fused)} == {"mov"} and all(v.builtin for v in variants(fused))
    torch.testing.assert_close(logits(perturb(naive)), logits(perturb(fused)), atol=1e-5, rtol=1e-5)
