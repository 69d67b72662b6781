"""Batched zero-shot rank classification for encoder-decoder models (T0's protocol).

Each answer choice is scored by the summed log-likelihood of its target tokens (EOS
included, as seqio tokenizes targets) under teacher forcing; the highest-scoring choice is
the prediction. The encoder runs once per example and its states are shared by the
example's choices. With mixlight adapters injected, the mean routing probability per expert
is collected per task at chosen sites (padding excluded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.modeling_outputs import BaseModelOutput

from mixlight.site_spec import SOURCE
from mixlight_torch.model import adapter_layers
from mixlight_tune.sampling import routing_sites
from mixlight_tune.schema import Example

Encode = Callable[[str], list[int]]


class RankResult(NamedTuple):
    """Per-example ``correct`` and ``predicted`` index, per-choice ``scores``, and
    ``routing[site][task]``: mean probability per expert (``[E]``, heads averaged)."""

    correct: list[bool]
    predicted: list[int]
    scores: list[list[float]]
    routing: dict[str, dict[str, np.ndarray]]


def as_encode(tokenizer_or_encode_fn: Any) -> Encode:
    """A text -> ids function (EOS appended) from a tokenizer with ``.encode`` or a callable."""
    encode = getattr(tokenizer_or_encode_fn, "encode", tokenizer_or_encode_fn)
    if not callable(encode):
        raise TypeError("expected a tokenizer with .encode or a text -> ids function")
    return lambda text: list(encode(text))


def pad(rows: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists: ``(ids [len(rows), max_len], mask of real tokens)``."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)
    mask = torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]
    return ids, mask.long()


def truncate(ids: list[int], limit: int | None) -> list[int]:
    """The first ``limit`` ids, keeping the last one (EOS) last; all of them when it fits."""
    return ids if limit is None or len(ids) <= limit else ids[: limit - 1] + ids[-1:]


def default_routing_sites(model: nn.Module) -> list[str]:
    """The last encoder and last decoder FFN activation sites that have a router."""
    return routing_sites(p for p, layer in adapter_layers(model).items() if layer.spec.has_router)


class _RoutingTally:
    """Running per-task sums of routing probabilities over unpadded tokens."""

    def __init__(self, model: nn.Module, sites: Iterable[str]) -> None:
        layers = adapter_layers(model)
        self.layers = {s: layers[s] for s in sites}
        self.sums: dict[str, dict[str, np.ndarray]] = {s: {} for s in self.layers}
        self.counts: dict[str, dict[str, float]] = {s: {} for s in self.layers}

    def add(self, stack: str, masks: dict[str, torch.Tensor], tasks: Sequence[str]) -> None:
        """Read ``last_probs`` of this stack's sites. ``masks["tokens"] [rows, seq]`` marks the
        stack's real tokens, ``masks["memory"]`` the encoder's (read by cross-attention)."""
        for site, layer in self.layers.items():
            if not site.startswith(stack) or layer.last_probs is None:
                continue
            reads_memory = stack == "decoder." and layer.spec.side == SOURCE  # cross k/v
            mask = masks["memory" if reads_memory else "tokens"].float()
            probs = layer.last_probs.detach().float()
            probs = probs.reshape(*probs.shape[:2], -1, probs.shape[-1]).mean(2)  # heads
            weighted = (probs * mask[..., None]).sum(1).cpu().numpy()
            counts = mask.sum(1).cpu().numpy()
            for task, row, count in zip(tasks, weighted, counts, strict=True):
                self.sums[site][task] = self.sums[site].get(task, 0.0) + row
                self.counts[site][task] = self.counts[site].get(task, 0.0) + float(count)

    def means(self) -> dict[str, dict[str, np.ndarray]]:
        return {
            s: {t: v / self.counts[s][t] for t, v in by_task.items()}
            for s, by_task in self.sums.items()
        }


def _device(model: nn.Module) -> torch.device:
    """Where the model's weights live (the CPU for a stand-in without parameters)."""
    first = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return torch.device("cpu") if first is None else first.device


@torch.no_grad()
def _score_batch(
    model: nn.Module,
    inputs: list[list[int]],
    choices: list[list[list[int]]],
    pad_id: int,
    tally: _RoutingTally | None,
    tasks: list[str],
) -> list[list[float]]:
    """Summed target log-likelihood of every choice of every example in the batch."""
    device = _device(model)
    input_ids, attention = (t.to(device) for t in pad(inputs, pad_id))
    hidden = model.get_encoder()(input_ids=input_ids, attention_mask=attention).last_hidden_state
    if tally:
        tally.add("encoder.", {"tokens": attention}, tasks)
    owner = [i for i, cs in enumerate(choices) for _ in cs]
    labels, mask = (t.to(device) for t in pad([c for cs in choices for c in cs], -100))
    out = model(
        encoder_outputs=BaseModelOutput(last_hidden_state=hidden[owner]),
        attention_mask=attention[owner],
        labels=labels,
    )
    logp = torch.log_softmax(out.logits.float(), -1)
    token = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    flat = (token * mask).sum(1).tolist()
    if tally:
        masks = {"tokens": mask, "memory": attention[owner]}
        tally.add("decoder.", masks, [tasks[i] for i in owner])
    scores, start = [], 0
    for cs in choices:
        scores.append(flat[start : start + len(cs)])
        start += len(cs)
    return scores


def rank_classification(
    model: nn.Module,
    tokenizer_or_encode_fn: Any,
    examples: Sequence[Example],
    batch_size: int = 32,
    *,
    pad_id: int | None = None,
    max_input_tokens: int | None = None,
    routing_sites: Sequence[str] | None = None,
    progress: bool = False,
) -> RankResult:
    """Score every example's ``choices``; ``correct[i]`` when the argmax is ``answer``.

    ``pad_id`` defaults to ``model.config.pad_token_id``. Inputs longer than
    ``max_input_tokens`` keep their first tokens (EOS kept last). ``routing_sites``
    defaults to :func:`default_routing_sites` on an injected model; pass ``[]`` to skip.
    Ties go to the first choice. Results do not depend on ``batch_size``.
    """
    if any(not e.choices or e.answer is None for e in examples):
        raise ValueError("rank_classification needs examples with choices and an answer")
    encode = as_encode(tokenizer_or_encode_fn)
    pad_id = model.config.pad_token_id if pad_id is None else pad_id
    if routing_sites is None:
        routing_sites = default_routing_sites(model) if "mixlight_state" in model.__dict__ else []
    tally = _RoutingTally(model, routing_sites) if routing_sites else None
    was_training = model.training
    model.eval()
    scores: list[list[float]] = []
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, desc="evaluate", disable=not progress, leave=False):
        batch = examples[start : start + batch_size]
        inputs = [truncate(encode(e.inputs), max_input_tokens) for e in batch]
        choices = [[encode(c) for c in e.choices or ()] for e in batch]
        scores += _score_batch(model, inputs, choices, pad_id, tally, [e.task for e in batch])
    model.train(was_training)
    predicted = [int(np.argmax(s)) for s in scores]
    correct = [p == e.answer for p, e in zip(predicted, examples, strict=True)]
    return RankResult(correct, predicted, scores, tally.means() if tally else {})
