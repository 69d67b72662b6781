"""A model built from its ``config.json`` alone on torch's meta device (shapes, no weights),
with the adapter injected: what ``mixlight tune --dry-run`` counts and estimates when the
weights are not there (:mod:`mixlight_tune.model_shapes`).

Its parameters are the ones the real checkpoint loads into. transformers 5 builds every T5
with the LM head tied to the embedding (``T5Config`` forces ``tie_word_embeddings``), and
unties it when a checkpoint holds a distinct ``lm_head.weight``, as every T5 v1.1 does (its
``config.json`` says ``"tie_word_embeddings": false``): so the head is untied here when the
file says so, or the 3B model would count 65.8M parameters short.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from torch import nn

import mixlight as ml
from mixlight_tune.steps import adapter_fits


def untied_in_file(folder: Path) -> bool:
    """Whether ``folder``'s ``config.json`` itself says the LM head is not the embedding."""
    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return raw.get("tie_word_embeddings") is False


def meta_model(folder: Path, dtype: torch.dtype | None) -> transformers.PreTrainedModel:
    """``folder``'s architecture on the meta device, its LM head untied when the file says
    so: the parameters its checkpoint loads into (also FSDP2's non-zero ranks' model,
    :mod:`.torch_sharded_load`)."""
    config = transformers.AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        if config.is_encoder_decoder:
            model = transformers.T5ForConditionalGeneration._from_config(config, dtype=dtype)
        else:
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
        head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
        if head is not None and head.weight is embedding.weight and untied_in_file(folder):
            head.weight = nn.Parameter(torch.empty_like(embedding.weight))
    return model


def shape_model(
    folder: Path, adapter: ml.AdapterConfig | None, precision: str
) -> transformers.PreTrainedModel:
    """``folder``'s model on the meta device (bfloat16 for ``precision = "bf16"``) with
    ``adapter`` injected (``None``: every weight trains)."""
    model = meta_model(folder, torch.bfloat16 if precision == "bf16" else None)
    model.requires_grad_(adapter is None)
    if adapter is not None:
        with adapter_fits(adapter):
            ml.inject(model, adapter, seed=0)
    return model
