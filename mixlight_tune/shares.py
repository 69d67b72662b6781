"""Trainable share at real sizes: the % each method trains on T5 v1.1 small ... XXL.

Counted by injecting each adapter into a meta-device HF T5 (shapes only: no weights, no
memory), so the figures come from the same injection code the demo trains with. Needs torch
and transformers; without them the table is left out.
"""

from __future__ import annotations

from collections.abc import Mapping

import mixlight as ml

# T5 v1.1 (gated-gelu, untied head) sizes: d_model, d_kv, heads, d_ff, layers per stack.
T5_V1_1: dict[str, tuple[int, int, int, int, int]] = {
    "small": (512, 64, 6, 1024, 8),
    "base": (768, 64, 12, 2048, 12),
    "large": (1024, 64, 16, 2816, 24),
    "xl": (2048, 64, 32, 5120, 24),
    "xxl": (4096, 64, 64, 10240, 24),
}
# The paper's % params column (T5-XL, "3B"; paper.md §5.1, from memory of the paper).
PAPER_XL = {"ia3": 0.018, "lora": 0.3, "mov": 0.32, "molora": 3.18, "mov30": 0.68,
            "lora8": 0.6, "molora15": 4.69}  # fmt: skip


def real_size_shares(
    adapters: Mapping[str, ml.AdapterConfig | None],
) -> dict[str, dict[str, float]]:
    """``{size: {method: % trainable}}`` for each adapter (``None``: full FT, 100%)."""
    try:
        import copy

        import torch
        from transformers import T5Config, T5ForConditionalGeneration
    except ImportError:
        return {}
    out: dict[str, dict[str, float]] = {}
    for size, (d_model, d_kv, heads, d_ff, layers) in T5_V1_1.items():
        config = T5Config(
            d_model=d_model, d_kv=d_kv, num_heads=heads, d_ff=d_ff, num_layers=layers,
            feed_forward_proj="gated-gelu", tie_word_embeddings=False, vocab_size=32128,
        )  # type: ignore[call-arg]  # fmt: skip
        out[size] = {}
        with torch.device("meta"):
            base = T5ForConditionalGeneration(config)
        for method, adapter in adapters.items():
            if adapter is None:
                out[size][method] = 100.0
                continue
            model = copy.deepcopy(base)
            ml.inject(model, adapter)
            out[size][method] = float(ml.trainable_parameters(model).percent)
    return out


def format_shares(
    shares: Mapping[str, Mapping[str, float]], labels: Mapping[str, str], toy: Mapping[str, float]
) -> str:
    """Markdown: one row per method, the toy model's % beside each real size and the paper's."""
    if not shares:
        return "(torch and transformers are needed to count real sizes)\n"
    sizes = list(shares)
    lines = [
        "| Method | this demo | " + " | ".join(f"T5 v1.1 {s}" for s in sizes) + " | paper (3B) |",
        "|" + "---|" * (len(sizes) + 3),
    ]
    for method in shares[sizes[0]]:
        cells = [f"{shares[s][method]:.3g}%" for s in sizes]
        paper = f"{PAPER_XL[method]}%" if method in PAPER_XL else "–"
        here = f"{toy[method]:.3g}%" if method in toy else "–"
        lines.append(
            f"| {labels.get(method, method)} | {here} | " + " | ".join(cells) + f" | {paper} |"
        )
    return "\n".join(lines) + "\n"
