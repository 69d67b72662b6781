"""Data-parallel MoV fine-tuning of T5 under DDP or FSDP2, saved as one portable adapter.

Laptop (CPU processes, gloo, a tiny random T5)::

    torchrun --nproc_per_node 2 examples/distributed_torch.py --backend gloo --fsdp

Multi-GPU host (one GPU per rank, NCCL, a real checkpoint; the same script)::

    torchrun --nproc_per_node 8 examples/distributed_torch.py --fsdp \\
        --model google/t5-v1_1-xl --batch 64

The base model is frozen; with ``--fsdp`` it is sharded block by block across the ranks
(``mixlight_torch.distributed.shard_model``), without it every rank holds a copy (DDP). Only
the adapter is in the optimizer. Every rank trains on its slice of each global batch, and
``save_adapter_distributed`` writes the adapter once; ``mixlight.load_adapter`` loads it into
any single-process model. The task is synthetic (reverse the input), to need no data files.

This is the loop to copy into a training script of your own. To tune from a config file
(your data, evaluation, schedules, bf16, checkpointing, resume), the same launcher runs the
whole pipeline: ``torchrun --nproc_per_node 8 -m mixlight.cli tune run.toml`` (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel
from transformers import T5Config, T5ForConditionalGeneration

import mixlight as ml
from mixlight_torch.distributed import save_adapter_distributed, shard_batch, shard_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="nccl" if gpu else "gloo", help="nccl or gloo")
    parser.add_argument("--fsdp", action="store_true", help="shard the base model (FSDP2)")
    parser.add_argument("--model", help="HF T5 checkpoint (default: a tiny random T5)")
    parser.add_argument("--experts", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8, help="global batch size")
    parser.add_argument("--seq", type=int, default=12, help="sequence length")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/distributed-mov", help="adapter directory")
    return parser.parse_args(argv)


def build_model(name: str | None) -> T5ForConditionalGeneration:
    """A checkpoint, or a tiny random T5 (the same on every rank: seed first)."""
    if name:
        return T5ForConditionalGeneration.from_pretrained(name)
    config = T5Config(
        d_model=64,
        d_kv=16,
        num_heads=4,
        d_ff=128,
        num_layers=2,
        vocab_size=256,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config)


def global_batch(step: int, args: argparse.Namespace, vocab: int) -> dict[str, torch.Tensor]:
    """Step ``step``'s global batch, identical on every rank: reverse the input."""
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
    ids = torch.randint(2, vocab, (args.batch, args.seq), generator=g)
    return {"input_ids": ids, "labels": ids.flip(-1)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")

    torch.manual_seed(args.seed)  # same base model and adapter initialisation on every rank
    model = ml.inject(build_model(args.model), ml.MoV(args.experts)).to(device)
    if rank == 0:
        print(ml.trainable_parameters(model))
    if args.fsdp:
        trainer = shard_model(model, mesh=init_device_mesh(device.type, (world,)))
    else:
        trainer = DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    opt = torch.optim.AdamW([p for p in trainer.parameters() if p.requires_grad], lr=args.lr)

    for step in range(args.steps):
        batch = shard_batch(global_batch(step, args, model.config.vocab_size), rank, world)
        loss = trainer(**{k: v.to(device) for k, v in batch.items()}).loss
        (loss + ml.aux_losses(model)).backward()
        opt.step()
        opt.zero_grad()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {mean.item() / world:.4f}")

    path = save_adapter_distributed(trainer, args.out)
    if rank == 0:
        print(f"adapter written to {path} ({'FSDP2' if args.fsdp else 'DDP'}, {world} ranks)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
