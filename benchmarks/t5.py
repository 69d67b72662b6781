"""Cases 3 and 4: a T5 training step per adaptation method, and cached greedy generation.

Models have random weights with t5-v1_1 layouts (dropout off, so steps are deterministic).
Each method adapts its own deep copy of one base model. PEFT methods use PEFT; mixlight ones
use :func:`mixlight.inject` with the T5 presets (the same sites as PEFT's (IA)³ layout:
attention k/v outputs and the FFN ``wo`` input; MoLoRA and PEFT LoRA on q, k, v, o, wi_0, wo).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import mixlight as ml
from benchmarks.impl import Group, Impl, Pairs, grads_of, new_generator
from benchmarks.naive_hooks import naive_molora, naive_mov

Tensor = torch.Tensor
LORA_TARGETS = ["q", "k", "v", "o", "wi_0", "wo"]


@dataclass(frozen=True)
class T5Shape:
    """Model and batch sizes; ``small()`` is t5-v1_1-small."""

    d_model: int
    d_kv: int
    heads: int
    d_ff: int
    layers: int
    vocab: int
    batch: int
    src_len: int
    tgt_len: int

    @classmethod
    def small(cls, batch: int = 8, src_len: int = 256, tgt_len: int = 64) -> T5Shape:
        return cls(512, 64, 6, 1024, 8, 32128, batch, src_len, tgt_len)

    def config_fields(self) -> dict[str, Any]:
        """The fields of a random-weight gated-gelu T5 of this shape with untied embeddings
        (the v1.1 layout), dropout off: a Hugging Face ``T5Config``'s keyword arguments, and
        the JAX T5's config dict (:mod:`benchmarks.jax_t5`)."""
        return {
            "d_model": self.d_model,
            "d_kv": self.d_kv,
            "num_heads": self.heads,
            "d_ff": self.d_ff,
            "num_layers": self.layers,
            "num_decoder_layers": self.layers,
            "vocab_size": self.vocab,
            "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": False,
            "dropout_rate": 0.0,
            "decoder_start_token_id": 0,
            "pad_token_id": 0,
            "eos_token_id": 1,
        }

    def describe(self) -> str:
        return (
            f"d_model {self.d_model}, d_kv {self.d_kv}, {self.heads} heads, d_ff {self.d_ff}, "
            f"{self.layers}+{self.layers} layers, vocab {self.vocab}; batch {self.batch}, "
            f"source/target lengths {self.src_len}/{self.tgt_len}"
        )


def base_model(shape: T5Shape, device: torch.device, seed: int = 0) -> Any:
    """A random-weight gated-gelu T5 (v1.1 layout: untied embeddings), in eval mode."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(**shape.config_fields())
    torch.manual_seed(seed)
    model: nn.Module = T5ForConditionalGeneration(config)
    return model.to(device).eval()


def _peft(kind: str) -> Callable[[nn.Module], nn.Module]:
    def adapt(model: nn.Module) -> nn.Module:
        from peft import IA3Config, LoraConfig, get_peft_model

        config = (
            IA3Config(task_type="SEQ_2_SEQ_LM")
            if kind == "ia3"
            else LoraConfig(
                task_type="SEQ_2_SEQ_LM", r=40, lora_alpha=16, target_modules=LORA_TARGETS
            )
        )
        return get_peft_model(model, config)

    return adapt


def _mixlight(config: ml.AdapterConfig) -> Callable[[nn.Module], nn.Module]:
    return lambda model: ml.inject(model, config)


def training_methods() -> dict[str, Callable[[nn.Module], nn.Module]]:
    """Case 3's adaptation methods, by name, each turning a base-model copy into a trainable
    model."""
    return {
        "peft-ia3": _peft("ia3"),
        "mixlight-ia3": _mixlight(ml.IA3()),
        "mov-10": _mixlight(ml.MoV(10)),
        "hooks-mov-10": naive_mov,
        "peft-lora-r40": _peft("lora"),
        "molora-10-r4": _mixlight(ml.MoLoRA(10, rank=4)),
        "hooks-molora-10-r4": naive_molora,
    }


def _batch(shape: T5Shape, device: torch.device, seed: int = 1) -> dict[str, Tensor]:
    g = new_generator(seed, device)
    ids = torch.randint(2, shape.vocab, (shape.batch, shape.src_len), generator=g, device=device)
    labels = torch.randint(2, shape.vocab, (shape.batch, shape.tgt_len), generator=g, device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _loss_impl(model: Any, batch: dict[str, Tensor]) -> Impl:
    """A training step: loss, then gradients of the trainable parameters."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    return Impl(lambda: model(**batch).loss, grads_of(trainable), frozen)


def _input_grad_impl(model: Any, batch: dict[str, Tensor]) -> Impl:
    """The frozen base: loss, then the gradient of the encoder input embeddings (the floor
    any adapter on every layer pays: the full backward, without weight gradients)."""
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_()
    rest = {k: v for k, v in batch.items() if k != "input_ids"}
    return Impl(
        lambda: model(inputs_embeds=embeds, **rest).loss,
        grads_of({"inputs_embeds": embeds}),
        list(model.parameters()),
    )


COMPILED_METHODS = ("peft-ia3", "mov-10", "hooks-mov-10")


def training_group(
    shape: T5Shape, device: torch.device, methods: Sequence[str] | None = None
) -> Group:
    """Case 3: one training step per method (all of :func:`training_methods` and the frozen
    base, or ``methods``); baseline ``peft-ia3``. At initialisation every adapter is the
    identity, so all losses equal the base model's."""
    base = base_model(shape, device)
    batch = _batch(shape, device)
    impls = {} if methods else {"base-input-grad": _input_grad_impl(base, batch)}
    for name, adapt in training_methods().items():
        if methods is None or name in methods:
            impls[name] = _loss_impl(adapt(copy.deepcopy(base)), batch)
    same: Pairs = [("peft-ia3", name, ("out",)) for name in impls if name != "peft-ia3"]
    return Group("train step", "peft-ia3", impls, same)


def generation_group(shape: T5Shape, new_tokens: int, device: torch.device) -> Group:
    """Case 4: cached greedy generation of exactly ``new_tokens`` tokens, base vs MoV-10
    (identical tokens at initialisation); baseline ``base``."""
    base = base_model(shape, device)
    mov = ml.inject(copy.deepcopy(base), ml.MoV(10))
    ids = _batch(shape, device)["input_ids"]

    def generate(model: Any) -> Callable[[], Tensor]:
        return lambda: model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
        )

    impls = {"base": Impl(generate(base)), "mov-10": Impl(generate(mov))}
    same: Pairs = [("base", "mov-10", ("out",))]
    return Group("generate", "base", impls, same)
