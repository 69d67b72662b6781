"""Case 7: MoLoRA against PEFT X-LoRA, a training step of a decoder-only model.

PEFT's X-LoRA cannot wrap the encoder-decoder T5 of case 3: it rewrites every adapter key to
a decoder-only ``model.model.*`` layout (loading a T5 LoRA fails with "unexpected keys"), and
its per-token scalings, computed from one sequence of hidden states, are applied at every
LoRA layer, which cannot fit an encoder and a decoder of different lengths. So this case uses
a random-weight Llama of t5-v1_1-small's width and depth, and compares on it: one LoRA of rank
40, mixlight MoLoRA-10 r=4, and X-LoRA over 10 LoRA adapters of rank 4, all on the same six
projections. X-LoRA runs twice: as configured by default (only its classifier trains, on
frozen adapters) and with trainable adapters (``use_trainable_adapters``: router and experts
train, as in MoLoRA).
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import mixlight as ml
from benchmarks.impl import Group, Impl, Pairs, grads_of, new_generator

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]
EXPERTS, RANK = 10, 4


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int
    batch: int
    seq: int

    @classmethod
    def small(cls, batch: int = 4, seq: int = 256) -> LlamaShape:
        """t5-v1_1-small's decoder sizes (512 wide, 1024 FFN, 8 layers, 8 heads)."""
        return cls(512, 1024, 8, 8, 32128, batch, seq)

    def describe(self) -> str:
        return (
            f"random Llama: hidden {self.hidden}, FFN {self.intermediate}, {self.layers} "
            f"layers, {self.heads} heads, vocab {self.vocab}; batch {self.batch}, length "
            f"{self.seq}; adapters on {', '.join(TARGETS)}"
        )


def _base(shape: LlamaShape, device: torch.device) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        vocab_size=shape.vocab,
        max_position_embeddings=max(512, shape.seq),
        use_cache=False,  # X-LoRA requires it
    )
    torch.manual_seed(0)
    model: nn.Module = LlamaForCausalLM(config)
    return model.to(device).eval()


def _lora(model: nn.Module, rank: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=16, target_modules=TARGETS)
    return get_peft_model(model, config)


def _xlora(base: nn.Module, shape: LlamaShape, experts: int, train_adapters: bool) -> nn.Module:
    """X-LoRA over ``experts`` LoRA adapters of rank ``RANK``, saved and reloaded as X-LoRA
    requires (each adapter is a fresh PEFT LoRA: B = 0, so the model is the base at init).
    Its classifier trains; the adapters too with ``train_adapters``."""
    from peft import XLoraConfig, get_peft_model

    with tempfile.TemporaryDirectory(prefix="mixlight-xlora-") as tmp:
        # named "0", "1", ...: X-LoRA loads adapter i under the name str(i) (PEFT 0.21)
        paths = {str(i): f"{tmp}/expert_{i}" for i in range(experts)}
        for path in paths.values():
            _lora(copy.deepcopy(base), RANK).save_pretrained(path)
        config = XLoraConfig(
            task_type="CAUSAL_LM",
            hidden_size=shape.hidden,
            adapters=paths,
            use_trainable_adapters=train_adapters,
        )
        return get_peft_model(copy.deepcopy(base), config)


def _step(model: Any, batch: dict[str, torch.Tensor]) -> Impl:
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    return Impl(lambda: model(**batch).loss, grads_of(trainable), frozen)


def xlora_group(shape: LlamaShape, device: torch.device) -> Group:
    """Case 7: one training step per method; baseline ``peft-lora-r40``. Every adapter is the
    identity at initialisation, so all losses equal the base model's."""
    base = _base(shape, device)
    g = new_generator(1, device)
    ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq), generator=g, device=device)
    batch = {"input_ids": ids, "labels": ids}
    patterns = [rf".*\.{t}" for t in TARGETS]
    impls = {
        "peft-lora-r40": _step(_lora(copy.deepcopy(base), EXPERTS * RANK), batch),
        "molora-10-r4": _step(
            ml.inject(copy.deepcopy(base), ml.MoLoRA(EXPERTS, RANK, targets=patterns)), batch
        ),
        "peft-xlora-10": _step(_xlora(base, shape, EXPERTS, False), batch),
        "peft-xlora-10-trainable": _step(_xlora(base, shape, EXPERTS, True), batch),
    }
    same: Pairs = [("peft-lora-r40", n, ("out",)) for n in impls if n != "peft-lora-r40"]
    return Group("train step", "peft-lora-r40", impls, same)
