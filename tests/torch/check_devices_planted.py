"""A custom kind whose torch fast op has a backward off by a factor, planted on import: for
``mixlight check --kind tests.torch.check_devices_planted:PlantedBiases`` under torchrun (see
test_check_devices.py)."""

from typing import ClassVar

import attrs
import numpy as np
import torch

import mixlight.extend as mlx
from mixlight.math import merge_vectors
from mixlight.site_math import route
from mixlight_torch import implement_fast_op


@mlx.register_expert
@attrs.frozen
class PlantedBiases(mlx.ExpertKind):
    """E bias vectors, soft-merged per token and added to the output."""

    kind: ClassVar[str] = "planted_biases"

    def param_specs(self, num_experts, d_in, d_out):
        return {"biases": mlx.ParamSpec((num_experts, d_out), "zeros", axes=("expert", "embed"))}

    def mix(self, params, probs, x, h, heads):
        return h + mlx.primitives_for(h).cast_like(merge_vectors(probs, params["biases"]), h)

    @staticmethod
    def loop_reference(params, probs, x, h, heads):
        biases, out = params["biases"], np.array(h, np.float64)
        weights = [1.0] * len(biases) if probs is None else probs
        for j in range(len(out)):
            out[j] += sum(w * biases[e][j] for e, w in enumerate(weights))
        return out


class _OffMerge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, merged):
        return merged.clone()

    @staticmethod
    def backward(ctx, g):
        return g * 1.5


def _planted(spec, params, x, h):
    probs = logits = None
    if spec.has_router:
        probs, logits = route(spec, params["router"], h if spec.reads == "output" else x)
    return h + _OffMerge.apply(merge_vectors(probs, params["biases"])).to(h.dtype), probs, logits


mlx.register_fast_op(
    "planted_biases", lambda s: isinstance(s.expert, PlantedBiases) and s.routing == "token"
)
implement_fast_op("planted_biases", _planted)
