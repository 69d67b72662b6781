"""MoV fine-tuning of T5 with Hugging Face's ``Seq2SeqTrainer``, the way a PEFT user works:
adapter-only checkpoints, resuming an interrupted run, merging for deployment, generating.

    python examples/hf_trainer.py --out runs/hf_trainer              # tiny random T5, ~30 s
    python examples/hf_trainer.py --model path/to/t5-v1_1-base --out runs/hf_trainer

1. Train: the injected model goes to the Trainer as it is. Its checkpoints hold the adapter
   only (``model.save_pretrained`` of an injected model writes it), its loss holds the
   router losses when the config weights them, and
   ``mixlight_torch.hf.adapter_checkpoints(trainer)`` lets the Trainer resume from them.
2. Resume: a second process would start from the same base; here a fresh model resumes the
   run from its halfway checkpoint and ends with the very adapter the whole run ended with.
3. Merge: the routed adapter is folded into the base weights at its mean routing on the
   training data (an approximation; exact for one-expert adapters; ``docs/huggingface.md``
   shows what it costs), saved as a plain T5 checkpoint, reloaded without mixlight, and used
   to generate.

The task is synthetic (copy the input), to need no data files or network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers
from _tiny_t5 import base_model  # examples/_tiny_t5.py, beside this script

import mixlight as ml
from mixlight_torch.hf import adapter_checkpoints


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="HF T5 checkpoint directory (default: a tiny random T5)")
    parser.add_argument("--out", type=Path, default=Path("runs/hf_trainer"))
    parser.add_argument("--steps", type=int, default=40, help="training steps (even)")
    parser.add_argument("--experts", type=int, default=4)
    return parser.parse_args(argv)


class Copy(torch.utils.data.Dataset):
    """``input_ids`` -> the same ids as ``labels`` (token ids 2..vocab-1)."""

    def __init__(self, vocab: int, n: int = 64, length: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(2, vocab, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def trainer_for(model, out: Path, steps: int, data: Copy) -> transformers.Seq2SeqTrainer:
    args = transformers.Seq2SeqTrainingArguments(
        output_dir=str(out), max_steps=steps, save_steps=steps // 2, save_strategy="steps",
        per_device_train_batch_size=8, learning_rate=3e-2, optim="adafactor",
        lr_scheduler_type="constant", report_to=[], use_cpu=not torch.cuda.is_available(),
        seed=0, disable_tqdm=True, logging_steps=max(steps // 4, 1),
    )  # fmt: skip
    return adapter_checkpoints(
        transformers.Seq2SeqTrainer(model=model, args=args, train_dataset=data)
    )


def adapter_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".adapters." in k}


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    config = ml.MoV(num_experts=args.experts)
    data = Copy(base_model(args.model).config.vocab_size)

    # 1. Train, with adapter-only checkpoints.
    model = ml.inject(base_model(args.model), config, seed=0)
    print(ml.trainable_parameters(model))
    trainer_for(model, args.out, args.steps, data).train()
    halfway = args.out / f"checkpoint-{args.steps // 2}"
    print(f"{halfway}: {sorted(p.name for p in halfway.iterdir())}")

    # 2. Resume the run from its halfway checkpoint, in a fresh model.
    resumed = ml.inject(base_model(args.model), config, seed=1)
    trainer_for(resumed, args.out, args.steps, data).train(resume_from_checkpoint=str(halfway))
    want, got = adapter_of(model), adapter_of(resumed)
    drift = max((want[k] - got[k]).abs().max().item() for k in want)
    print(f"resumed run vs whole run: largest adapter difference {drift:.2e}")

    # 3. Merge at the mean routing on the training data, save a plain T5, generate.
    batches = [{"input_ids": data.ids[i : i + 16], "labels": data.ids[i : i + 16]} for i in (0, 16)]
    routing = ml.mean_routing(model, batches)
    ml.merge_and_unload(model, routing=routing).save_pretrained(args.out / "merged")
    plain = transformers.T5ForConditionalGeneration.from_pretrained(args.out / "merged").eval()
    sample = data.ids[:2]
    generated = plain.generate(input_ids=sample, max_new_tokens=sample.shape[1] + 1)
    print("input    ", sample.tolist())
    print("generated", generated[:, 1:].tolist())
    return {"drift": drift}


if __name__ == "__main__":
    main()
