"""A custom expert kind in ~20 lines: a routed mixture of bias vectors, ``h + probs @ biases``.

It declares its parameters and its mixing rule with the core's einops math; registered with
``@mlx.register_expert``, it works in configs, adapter files and every backend with no backend
code. Run: ``python examples/custom_expert.py`` (uses torch if installed).
"""

from typing import ClassVar

import attrs
import numpy as np

import mixlight as ml
import mixlight.extend as mlx
from mixlight.math import merge_vectors


@mlx.register_expert
@attrs.frozen
class Biases(mlx.ExpertKind):
    """E bias vectors, soft-merged per token and added to the output. Start at zero."""

    kind: ClassVar[str] = "biases"
    router_reads: ClassVar[str] = "output"
    fits_activations: ClassVar[bool] = True

    def param_specs(self, num_experts, d_in, d_out):
        return {"biases": mlx.ParamSpec((num_experts, d_out), "zeros", axes=("expert", "embed"))}

    def mix(self, params, probs, x, h, heads):
        merged = merge_vectors(probs, params["biases"])  # [..., d_out]
        return h + mlx.primitives_for(h).cast_like(merged, h)

    @staticmethod
    def loop_reference(params, probs, x, h, heads):
        """The same rule as plain loops over one token (``h [d_out]``, ``probs [E]`` or
        ``[heads, E]``, or None without a router): what the conformance check compares
        ``mix`` with, sharing no code with it."""
        biases, out = params["biases"], np.array(h, np.float64)
        for j in range(len(out)):
            if probs is None:
                weights = [1.0] * len(biases)
            elif probs.ndim == 2:
                weights = probs[j // (len(out) // heads)]
            else:
                weights = probs
            out[j] += sum(w * biases[e][j] for e, w in enumerate(weights))
        return out


def BiasMixture(num_experts: int, targets: list[str]) -> ml.AdapterConfig:
    return ml.AdapterConfig(
        [ml.Site(p, Biases()) for p in targets], num_experts, method=f"Biases-{num_experts}"
    )


def main() -> None:
    from mixlight.testing import check_expert_kind

    check_expert_kind(Biases(), examples=10)  # mix on numpy vs Biases.loop_reference
    print("Biases conforms on numpy")
    try:
        import torch
        from transformers import T5Config, T5ForConditionalGeneration
    except ImportError:
        return
    check_expert_kind(Biases(), torch.from_numpy, lambda t: t.detach().numpy(), examples=10)
    model = T5ForConditionalGeneration(
        T5Config(
            d_model=32,
            d_kv=8,
            num_heads=4,
            d_ff=64,
            num_layers=2,
            vocab_size=100,
            decoder_start_token_id=0,
        )
    )
    ml.inject(model, BiasMixture(4, [r".*DenseReluDense\.wo"]))
    ids = torch.randint(2, 100, (2, 6))
    model(input_ids=ids, labels=ids).loss.backward()
    print(ml.trainable_parameters(model))
    ml.save_adapter(model, "runs/custom_expert")
    print(
        np.round(
            ml.routing_stats(model)["encoder.block.0.layer.1.DenseReluDense.wo"]["mean_prob"], 3
        )
    )


if __name__ == "__main__":
    main()
