"""The base model the examples train when no checkpoint is given: a tiny random T5 v1.1
(the same weights every call, as ``from_pretrained`` would give), or a real one."""

from __future__ import annotations

import torch
import transformers


def base_model(path: str | None) -> transformers.T5ForConditionalGeneration:
    """The HF T5 at ``path``, or the tiny random one."""
    if path is not None:
        return transformers.T5ForConditionalGeneration.from_pretrained(path)
    torch.manual_seed(0)
    config = transformers.T5Config(
        d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, vocab_size=64,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        feed_forward_proj="gated-gelu", dropout_rate=0.0,
    )  # fmt: skip
    return transformers.T5ForConditionalGeneration(config)
