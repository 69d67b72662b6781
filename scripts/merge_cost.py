"""What merging a routed adapter costs on the demo's tasks.

A MoV or MoLoRA adapter routes every token its own way; ``mixlight.merge_and_unload`` folds
it into the base weights at one fixed routing. This script takes the adapters a demo run
saved (``mixlight demo --output-dir DIR`` writes ``DIR/adapters/<method>-seed<N>``), merges each at
two fixed routings measured on held-in training data, and scores tables A and B as the demo
does (rank classification), beside the unmerged adapter:

- **mixture**: one merged model, at the mean routing over the whole training mixture;
- **per task**: one merged model per task family, at the mean routing over that task's
  training prompts, scored on that family's items only (a static per-task export).

It also reports the logit error on 64 table-B items: the mean KL divergence of the merged
model's next-token distributions from the unmerged one's, and the mean absolute change of the
target token's log-probability.

    python scripts/merge_cost.py --adapters runs/demo/adapters --out docs/demo/merging.md
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch

import mixlight as ml
from mixlight_tune.experiment import DemoConfig, score_sets
from mixlight_tune.frameworks import torch_steps
from mixlight_tune.frameworks.torch_rows import collate
from mixlight_tune.miniature.suite import build_suite
from mixlight_tune.report import score_table
from mixlight_tune.steps import load_steps

METHODS = {"mov": "MoV-10", "molora": "MoLoRA-10"}
ROUTING_EXAMPLES = 256  # training examples the mean routing is measured on (per task: all)


def batches(base, cfg, examples, size=32):
    limits = cfg.max_input_tokens, cfg.max_target_tokens
    pairs = [base.codec.pair(e.inputs, e.targets, *limits) for e in examples]
    return [collate(pairs[i : i + size], base.pad_id) for i in range(0, len(pairs), size)]


def log_probs(model, data):
    with torch.no_grad():
        out = [torch.log_softmax(model(**b).logits, -1) for b in data]
    return out


def logit_error(model, merged, data):
    """Over the target tokens: the mean KL(unmerged || merged) of the next-token
    distributions, and the mean absolute change of the target token's log-probability."""
    kl, target = [], []
    for want, got, b in zip(log_probs(model, data), log_probs(merged, data), data, strict=True):
        real = b["labels"] != -100
        kl.append((want.exp() * (want - got)).sum(-1)[real])
        labels = b["labels"].clamp(min=0)[..., None]
        target.append((want.gather(-1, labels) - got.gather(-1, labels))[..., 0].abs()[real])
    return float(torch.cat(kl).mean()), float(torch.cat(target).mean())


def run(adapters: Path, seeds: list[int]) -> dict:
    cfg = DemoConfig(progress=False)
    base = torch_steps.prepare(cfg)
    suite = build_suite(cfg.data_seed, cfg.train_per_task, cfg.eval_per_template)
    tables = {"A": suite.held_in, "B": suite.new_prompts}
    probe = batches(base, cfg, suite.new_prompts[:64], 64)
    by_task = defaultdict(list)
    for e in suite.train:
        by_task[e.task].append(e)
    results: dict = {}
    for method in METHODS:
        for seed in seeds:
            model = ml.load_adapter(copy.deepcopy(base.model), adapters / f"{method}-seed{seed}")
            row = {"unmerged": _scores(model, base, tables, cfg)}
            routing = ml.mean_routing(model, batches(base, cfg, suite.train[:ROUTING_EXAMPLES]))
            merged = ml.merge_and_unload(copy.deepcopy(model), routing=routing)
            row["mixture"] = _scores(merged, base, tables, cfg)
            row["mixture_logit_error"] = logit_error(model, merged, probe)
            row["per_task"] = _per_task(model, base, tables, cfg, by_task)
            results[f"{method}-seed{seed}"] = row
            print(method, seed, json.dumps(row))
    return results


def _scores(model, base, tables, cfg):
    scores, _ = score_sets(load_steps("torch"), model, base, tables, cfg)
    return {t: 100.0 * scores[t]["average"] for t in tables}


def _per_task(model, base, tables, cfg, by_task):
    """Per table: the demo's score (mean over tasks of the median over prompts), each task's
    items answered by that task's own merged model."""
    hits: dict[str, list[tuple[str, str, bool]]] = defaultdict(list)
    for task, train in by_task.items():
        routing = ml.mean_routing(model, batches(base, cfg, train))
        merged = ml.merge_and_unload(copy.deepcopy(model), routing=routing)
        own = {t: [e for e in exs if e.task == task] for t, exs in tables.items()}
        own = {t: exs for t, exs in own.items() if exs}
        correct, _ = torch_steps.evaluate(
            merged, base, [e for exs in own.values() for e in exs], cfg
        )
        at = 0
        for t, exs in own.items():
            hits[t].extend((e.task, e.template, c) for e, c in zip(exs, correct[at:], strict=False))
            at += len(exs)
    return {t: 100.0 * score_table(h)["average"] for t, h in hits.items()}


def report(results: dict, seeds: list[int]) -> str:
    lines = [
        "# Merging a routed adapter: what it costs on the demo's tasks",
        "",
        "Written by `python scripts/merge_cost.py` from the adapters of the committed 3-seed demo",
        f"run (seeds {', '.join(map(str, seeds))}), on the shipped base. Accuracy % (rank",
        "classification, as the demo scores): mean ± std over seeds. *Mixture*: merged once at the",
        "mean routing over 256 training examples of the whole mixture. *Per task*: one merge per",
        "task family at the mean routing over its training prompts, scored on its own items.",
        "*Logit error* (mixture merge, 64 table-B items, target tokens): the mean KL divergence",
        "of the merged model's next-token distribution from the unmerged one's, and the mean",
        "absolute change of the target token's log-probability.",
        "",
        "| adapter | table | unmerged | merged: mixture | merged: per task |",
        "|---|---|---|---|---|",
    ]
    for method, name in METHODS.items():
        rows = [results[f"{method}-seed{s}"] for s in seeds]
        for table in ("A", "B"):
            cells = [
                _mean_std([r["unmerged"][table] for r in rows]),
                _mean_std([r["mixture"][table] for r in rows]),
                _mean_std([r["per_task"][table] for r in rows]),
            ]
            lines.append(f"| {name} | {table} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| adapter | KL(unmerged ‖ merged), nats/token | mean \\|Δ log p(target)\\| |",
        "|---|---|---|",
    ]
    for method, name in METHODS.items():
        errs = [results[f"{method}-seed{s}"]["mixture_logit_error"] for s in seeds]
        kl, target = _mean_std([e[0] for e in errs], 3), _mean_std([e[1] for e in errs], 3)
        lines.append(f"| {name} | {kl} | {target} |")
    return "\n".join(lines) + "\n"


def _mean_std(values, digits=1):
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    results = run(args.adapters, seeds)
    text = report(results, seeds)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
