"""From a PEFT adapter to a mixture: import a trained PEFT (IA)³ adapter into mixlight, upcycle
it into every expert of a MoV, keep training, save (with its model card), and export a
one-expert adapter back to PEFT.

    python examples/peft_upcycle.py --out runs/peft_upcycle          # tiny random T5, ~20 s
    python examples/peft_upcycle.py --model path/to/t5-v1_1-base --out runs/peft_upcycle

1. PEFT trains an (IA)³ adapter (plain torch loop) and saves it as PEFT does.
2. ``ml.load_peft_adapter`` imports it as a one-expert mixlight adapter: PEFT's logits.
3. ``upcycle=ml.MoV(E)`` starts every expert from it: PEFT's logits again at step 0, and
   training the mixture continues from the PEFT adapter's loss instead of the base model's.
4. ``ml.save_adapter`` writes the MoV with a Hub model card (``ml.push_to_hub`` would upload
   the same three files); ``ml.save_peft_adapter`` exports the imported (IA)³ back to PEFT.

The task is synthetic (copy the input), to need no data files or network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import peft
import torch
import transformers
from _tiny_t5 import base_model  # examples/_tiny_t5.py, beside this script

import mixlight as ml


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="HF T5 checkpoint directory (default: a tiny random T5)")
    parser.add_argument("--out", type=Path, default=Path("runs/peft_upcycle"))
    parser.add_argument("--steps", type=int, default=30, help="training steps per stage")
    parser.add_argument("--experts", type=int, default=4)
    return parser.parse_args(argv)


def train(model, ids: torch.Tensor, steps: int) -> list[float]:
    """Adafactor on the trainable parameters, copy task; the losses of every step."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = transformers.optimization.Adafactor(trainable, lr=3e-2, relative_step=False)
    model.train()
    losses = []
    for step in range(steps):
        batch = ids[(step * 8) % len(ids) :][:8]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).logits


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    vocab = base_model(args.model).config.vocab_size
    ids = torch.randint(2, vocab, (64, 8), generator=torch.Generator().manual_seed(0))
    probe = ids[:4]

    # 1. PEFT trains an (IA)³ adapter and saves it.
    ia3_config = peft.IA3Config(target_modules=["k", "v", "wo"], feedforward_modules=["wo"])
    in_peft = peft.get_peft_model(base_model(args.model), ia3_config)
    peft_losses = train(in_peft, ids, args.steps)
    in_peft.save_pretrained(args.out / "peft-ia3")
    print(f"PEFT (IA)³: loss {peft_losses[0]:.3f} -> {peft_losses[-1]:.3f}")

    # 2. Import it as a one-expert mixlight adapter.
    imported = ml.load_peft_adapter(base_model(args.model), args.out / "peft-ia3")
    gap = (logits(imported, probe) - logits(in_peft, probe)).abs().max().item()
    print(f"imported into mixlight: largest logit difference to PEFT {gap:.1e}")

    # 3. Upcycle: every expert of a MoV starts from it; train the mixture on.
    mov = ml.load_peft_adapter(
        base_model(args.model), args.out / "peft-ia3", upcycle=ml.MoV(args.experts), seed=0
    )
    start = (logits(mov, probe) - logits(in_peft, probe)).abs().max().item()
    mov_losses = train(mov, ids, args.steps)
    print(f"upcycled MoV-{args.experts}: step-0 logit difference to PEFT {start:.1e}, "
          f"loss {mov_losses[0]:.3f} -> {mov_losses[-1]:.3f}")  # fmt: skip

    # 4. Save with a model card; export the one-expert adapter back to PEFT.
    saved = ml.save_adapter(mov, args.out / "mov")
    print(f"{saved}: {sorted(p.name for p in saved.iterdir())}")
    print("\n".join((saved / "README.md").read_text().splitlines()[:12]))
    exported = ml.save_peft_adapter(imported, args.out / "ia3-for-peft")
    back = peft.PeftModel.from_pretrained(base_model(args.model), exported).eval()
    round_trip = (logits(back, probe) - logits(in_peft, probe)).abs().max().item()
    print(f"{exported} in PEFT again: largest logit difference {round_trip:.1e}")
    return {
        "import_gap": gap,
        "upcycle_gap": start,
        "round_trip_gap": round_trip,
        "peft_first_loss": peft_losses[0],
        "peft_last_loss": peft_losses[-1],
        "mov_first_loss": mov_losses[0],
    }


if __name__ == "__main__":
    main()
