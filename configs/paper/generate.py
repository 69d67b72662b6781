"""Write the Table 1 configs of ``configs/paper/`` (one per row and model size).

The 20 ``*.toml`` files are generated: edit the tables here, then run
``python configs/paper/generate.py``; ``tests/core/test_paper_config_files.py`` checks that
the files are what this writes. The recipe is paper.md §4 (the reference code's scripts);
the training data is the P3 subsets listed in ``t0_train.tsv``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
P3_ID = "bigscience/P3"
P3_REVISION = "refs/convert/parquet"  # the Hub's parquet export (P3's own script no longer runs)


@dataclass(frozen=True)
class Row:
    """One row of Table 1: its file name part, its label and its ``adapter`` value (TOML)."""

    slug: str
    label: str
    adapter: str
    checkpoint_every: int  # paper.md §4.2: MoV/MoLoRA every 10K steps, (IA)3/LoRA every 50K


ROWS = (
    Row("full", "Full fine-tuning (the T0 baseline)", '"full"', 1_000),
    Row("ia3", "(IA)³", '"ia3"', 50_000),
    Row("lora-r4", "LoRA r=4", '{ preset = "lora", rank = 4 }', 50_000),
    Row("lora-r8", "LoRA r=8", '{ preset = "lora", rank = 8 }', 50_000),
    Row("lora-r16", "LoRA r=16", '{ preset = "lora", rank = 16 }', 50_000),
    Row("mov-10", "MoV-10", '{ preset = "mov", num_experts = 10 }', 10_000),
    Row("mov-30", "MoV-30", '{ preset = "mov", num_experts = 30 }', 10_000),
    Row("mov-60", "MoV-60", '{ preset = "mov", num_experts = 60 }', 10_000),
    Row("molora-10", "MoLoRA-10 (r=4)", '{ preset = "molora", num_experts = 10, rank = 4 }', 10000),
    Row("molora-15", "MoLoRA-15 (r=4)", '{ preset = "molora", num_experts = 15, rank = 4 }', 10000),
)  # fmt: skip
MODELS = {
    "xl": ("google/t5-xl-lm-adapt", "T5 v1.1 XL + LM adaptation (3B)"),
    "xxl": ("google/t5-xxl-lm-adapt", "T5 v1.1 XXL + LM adaptation (11B)"),
}

# paper.md §4: every adapter row (scripts/{mov,molora,ia3,lora}_train.sh and the gin files)
ADAPTER_RECIPE = """\
# paper.md §4: Adafactor, constant lr 3e-4 (no warmup), batch 32, 500K steps
optimizer = "adafactor"
lr = 3e-4
lr_schedule = "constant"
batch_size = 32
steps = 500_000
checkpoint_every = {checkpoint_every}
# 8 GPUs under torchrun with DDP: each holds the bfloat16 base (XXL: 21 GiB) and float32
# adapters; "fsdp" would shard the base, which T5 v1.1 cannot use yet (README, known issues)
distributed = "ddp"
precision = "bf16"
gradient_checkpointing = true
"""
# paper.md §4.2: scripts/t0_train.sh, configs/t0.gin
FULL_RECIPE = """\
# paper.md §4.2: Adafactor, constant lr 1e-3, batch 256, 10K steps (scripts/t0_train.sh)
optimizer = "adafactor"
lr = 1e-3
lr_schedule = "constant"
batch_size = 256
steps = 10_000
checkpoint_every = {checkpoint_every}
# 8 GPUs under torchrun with DDP (FSDP2 shards adapter runs only); float32 weights: in
# bfloat16 Adafactor's steps (about lr x a weight's size) fall below the weights' rounding
# step and are lost (configs/paper/README.md); {accum} micro-batches of {rows} rows per GPU
distributed = "ddp"
precision = "fp32"
gradient_checkpointing = true
grad_accum_steps = {accum}
"""
FULL_ACCUM = {"xl": 4, "xxl": 8}  # the memory estimate at 8 processes (README)
PROCESSES = 8

MIXTURE = """\
# The training data: T0's training mixture (t0_train, paper.md §4.2), one entry per P3 subset
# (t0_train.tsv) read from the Hub's parquet export of bigscience/P3. T0's rule: each template
# weighs its number of examples; a dataset over 500K examples caps each of its templates at
# 500,000 / (its templates).
"""
T0_CAP = 500_000


def subsets() -> list[tuple[str, int | None]]:
    """``(P3 subset, cap)`` of each row of ``t0_train.tsv``, in its order: T0's cap where
    the subset's dataset is over :data:`T0_CAP` examples, else ``None``."""
    lines = (HERE / "t0_train.tsv").read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") for line in lines if line and not line.startswith("#")][1:]
    templates: dict[str, int] = {}
    size: dict[str, int] = {}
    for _, dataset, train_rows in rows:
        templates[dataset] = templates.get(dataset, 0) + 1
        size[dataset] = max(size.get(dataset, 0), int(train_rows))
    return [
        (subset, T0_CAP // templates[dataset] if size[dataset] > T0_CAP else None)
        for subset, dataset, _ in rows
    ]


def render(size: str, row: Row) -> str:
    """The TOML text of ``row`` at model ``size``."""
    model, description = MODELS[size]
    name = f"{size}-{row.slug}"
    full = row.slug == "full"
    accum = FULL_ACCUM[size]
    recipe = (FULL_RECIPE if full else ADAPTER_RECIPE).format(
        checkpoint_every=f"{row.checkpoint_every:_}",
        accum=accum,
        rows=256 // PROCESSES // accum,
    )
    source = f'path = "{P3_ID}", split = "train", revision = "{P3_REVISION}"'
    mixture = "".join(
        f'  {{ {source}, name = "{name}"' + ("" if cap is None else f", cap = {cap}") + " },\n"
        for name, cap in subsets()
    )
    return (
        f"# Table 1 of the paper (paper.md §5.1), {row.label}: {description}.\n"
        f"# Generated by configs/paper/generate.py: edit that and run it. Cluster commands:\n"
        f"# configs/paper/README.md. The same file on the shipped tiny T5, as the tests run it:\n"
        f"#   mixlight tune configs/paper/{name}.toml --set model= --set eval_suite= \\\n"
        f"#       --set mixture= --set data=ROWS --set eval_data=ROWS --set steps=3\n"
        f'backend = "torch"\n'
        f'model = "{model}"\n'
        f"adapter = {row.adapter}\n"
        f'eval_suite = "t0_held_out"  # ANLI R1-R3, CB, RTE, WSC, WiC, COPA, WNG, HS\n'
        f'output_dir = "runs/paper/{name}"\n'
        f"{recipe}"
        f"# paper.md §4: inputs 1024 and targets 256 tokens; dropout 0.1 (T5X's fine-tuning gin)\n"
        f"max_input_tokens = 1024\n"
        f"max_target_tokens = 256\n"
        f"eval_batch_size = 32  # the reference code's evaluation batch (paper.md §4.2)\n"
        f"dropout = 0.1\n"
        f"seed = 0\n"
        f"{MIXTURE}"
        f"mixture = [\n{mixture}]\n"
    )


def files() -> dict[str, str]:
    """``{file name: text}`` of every config."""
    return {f"{size}-{row.slug}.toml": render(size, row) for size in MODELS for row in ROWS}


def main() -> int:
    for name, text in files().items():
        (HERE / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(files())} configs in {HERE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
