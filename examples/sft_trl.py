"""MoV on a decoder-only model with TRL's ``SFTTrainer``: prompt/completion data, the loss on
the completion only, the router's load-balancing loss inside the loss the trainer optimises.

    python examples/sft_trl.py --out runs/sft_trl                # tiny random Llama, ~20 s
    python examples/sft_trl.py --model path/to/llama --out runs/sft_trl

The injected model goes to the trainer as it is: ``ml.MoV()`` takes the Llama family's sites
((IA)³'s keys, values and the input of ``down_proj``), the trainer trains the adapter alone
(the base is frozen), and an injected model adds its weighted router losses to
``outputs.loss``, which is the loss ``SFTTrainer`` backpropagates. The task is synthetic
(name the next letter), so nothing is downloaded; a character-level tokenizer is built here.
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import torch
import transformers
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from trl import SFTConfig, SFTTrainer

import mixlight as ml

LETTERS = string.ascii_lowercase


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="HF causal LM directory (default: a tiny random Llama)")
    parser.add_argument("--out", type=Path, default=Path("runs/sft_trl"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--experts", type=int, default=4)
    return parser.parse_args(argv)


def char_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """One token per character of the task's alphabet, plus pad and end-of-sequence."""
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(LETTERS + " ?:")}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>"
    )


def next_letter_data(n: int = 64) -> Dataset:
    """``{"prompt": "after c?", "completion": " d"}`` rows."""
    rows = [
        {"prompt": f"after {LETTERS[i % 25]}?", "completion": f" {LETTERS[i % 25 + 1]}"}
        for i in range(n)
    ]
    return Dataset.from_list(rows)


def tiny_llama(vocab_size: int) -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1,
        bos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def train(args: argparse.Namespace) -> tuple[SFTTrainer, transformers.PreTrainedModel]:
    tokenizer = char_tokenizer()
    if args.model:
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model)
    else:
        model = tiny_llama(len(tokenizer))
    config = ml.MoV(args.experts, router=ml.SoftMerge(load_balance_weight=0.01))
    ml.inject(model, config, seed=0)
    sft = SFTConfig(
        output_dir=str(args.out), max_steps=args.steps, per_device_train_batch_size=16,
        learning_rate=3e-2, lr_scheduler_type="constant", logging_steps=1, report_to=[],
        save_strategy="no", completion_only_loss=True, use_cpu=True, seed=0,
        bf16=False,  # TRL's default is bf16, which casts the whole model (the adapter too)
    )  # fmt: skip
    trainer = SFTTrainer(
        model=model, args=sft, train_dataset=next_letter_data(), processing_class=tokenizer
    )
    trainer.train()
    return trainer, model


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    trainer, model = train(args)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; {ml.trainable_parameters(model)}")
    return ml.save_adapter(model, args.out / "adapter")


if __name__ == "__main__":
    main()
