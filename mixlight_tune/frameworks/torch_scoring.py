"""Batched zero-shot rank classification (T0's protocol) for T5 and decoder-only LMs.

Each answer choice is scored by the summed log-likelihood of its answer tokens (EOS
included, as seqio tokenizes targets) under teacher forcing; the highest-scoring choice is
the prediction. A T5's encoder runs once per example and its states are shared by the
example's choices; a causal LM reads each choice after the prompt
(:mod:`mixlight_tune.text_codec` says how the row is tokenised). With mixlight adapters
injected, the mean routing probability per expert is collected per task at chosen sites
(padding excluded).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.modeling_outputs import BaseModelOutput

from mixlight.site_spec import SOURCE
from mixlight_torch.model import adapter_layers
from mixlight_tune.frameworks.torch_rows import collate, pad
from mixlight_tune.sampling import routing_sites
from mixlight_tune.schema import Example
from mixlight_tune.text_codec import Pair, codec_for


class RankResult(NamedTuple):
    """Per-example ``correct`` and ``predicted`` index, per-choice ``scores``,
    ``routing[site][task]``: mean probability per expert (``[E]``, heads averaged), and
    ``routing_tokens[site][task]``: the tokens that mean is over (to merge shards' means)."""

    correct: list[bool]
    predicted: list[int]
    scores: list[list[float]]
    routing: dict[str, dict[str, np.ndarray]]
    routing_tokens: dict[str, dict[str, float]] = {}


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
        """Read ``last_probs`` of the sites under ``stack`` (a path prefix; ``""``: a
        decoder-only model's every site). ``masks["tokens"] [rows, seq]`` marks the stack's
        real tokens, ``masks["memory"]`` the encoder's (read by cross-attention)."""
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


@runtime_checkable
class _EncoderDecoder(Protocol):
    """What scoring a T5 calls beyond ``nn.Module`` (HF's seq2seq models have it, and so do
    the tests' stand-ins)."""

    def get_encoder(self) -> Any: ...


def _device(model: nn.Module) -> torch.device:
    """Where the model's weights live (the CPU for a stand-in without parameters)."""
    first = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return torch.device("cpu") if first is None else first.device


def _per_example(flat: list[float], choices: Sequence[Sequence[Any]]) -> list[list[float]]:
    scores, start = [], 0
    for cs in choices:
        scores.append(flat[start : start + len(cs)])
        start += len(cs)
    return scores


def _answer_logp(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Per row, the summed log-probability of its labels (-100 skipped)."""
    logp = torch.log_softmax(logits.float(), -1)
    token = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return (token * (labels != -100)).sum(1).tolist()


@torch.no_grad()
def _score_causal(
    model: nn.Module,
    rows: list[list[Pair]],
    pad_id: int,
    tally: _RoutingTally | None,
    tasks: list[str],
) -> list[list[float]]:
    """Summed answer log-likelihood of every ``(prompt, choice)`` row of every example."""
    owner = [i for i, rs in enumerate(rows) for _ in rs]
    batch = collate([r for rs in rows for r in rs], pad_id, causal=True)
    batch = {k: v.to(_device(model)) for k, v in batch.items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    flat = _answer_logp(logits[:, :-1], batch["labels"][:, 1:])
    if tally:
        tally.add("", {"tokens": batch["attention_mask"]}, [tasks[i] for i in owner])
    return _per_example(flat, rows)


@torch.no_grad()
def _score_batch(
    model: nn.Module,
    inputs: list[list[int]],
    choices: list[list[list[int]]],
    pad_id: int,
    tally: _RoutingTally | None,
    tasks: list[str],
) -> list[list[float]]:
    """Summed target log-likelihood of every choice of every example in the batch (T5)."""
    assert isinstance(model, _EncoderDecoder)  # (its config says encoder-decoder)
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
    flat = _answer_logp(out.logits, labels)
    if tally:
        masks = {"tokens": mask, "memory": attention[owner]}
        tally.add("decoder.", masks, [tasks[i] for i in owner])
    return _per_example(flat, choices)


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

    ``tokenizer_or_encode_fn``: a tokenizer, a text -> ids function or a
    :class:`~mixlight_tune.text_codec.TextCodec`; a model whose config is not
    encoder-decoder is scored as a causal LM. ``pad_id`` defaults to the config's
    ``pad_token_id`` (0 when it has none). Inputs longer than ``max_input_tokens`` keep their
    first tokens. ``routing_sites`` defaults to :func:`default_routing_sites` on an injected
    model; pass ``[]`` to skip. Ties go to the first choice. Results do not depend on
    ``batch_size``: examples are batched longest first (less padding; the largest batch
    runs first, so a batch size that does not fit fails at once), results in input order.
    """
    if any(not e.choices or e.answer is None for e in examples):
        raise ValueError("rank_classification needs examples with choices and an answer")
    config = model.config
    codec = codec_for(
        tokenizer_or_encode_fn,
        causal=not getattr(config, "is_encoder_decoder", True),
        eos_id=getattr(config, "eos_token_id", None),
        start_id=getattr(config, "bos_token_id", None),
    )
    pad_id = (getattr(config, "pad_token_id", None) or 0) if pad_id is None else pad_id
    if routing_sites is None:
        routing_sites = default_routing_sites(model) if "mixlight_state" in model.__dict__ else []
    tally = _RoutingTally(model, routing_sites) if routing_sites else None
    was_training = model.training
    model.eval()
    rows = [
        [codec.pair(e.inputs, c, max_input_tokens, None) for c in e.choices or ()] for e in examples
    ]
    order = sorted(range(len(rows)), key=lambda i: -max(len(p) + len(a) for p, a in rows[i]))
    scores: list[list[float]] = [[] for _ in rows]
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="evaluate", disable=not progress, leave=False):
        batch = order[start : start + batch_size]
        tasks = [examples[i].task for i in batch]
        if codec.causal:
            got = _score_causal(model, [rows[i] for i in batch], pad_id, tally, tasks)
        else:
            inputs = [rows[i][0][0] for i in batch]
            choices = [[answer for _, answer in rows[i]] for i in batch]
            got = _score_batch(model, inputs, choices, pad_id, tally, tasks)
        for i, row_scores in zip(batch, got, strict=True):
            scores[i] = row_scores
    model.train(was_training)
    predicted = [int(np.argmax(s)) for s in scores]
    correct = [p == e.answer for p, e in zip(predicted, examples, strict=True)]
    if tally is None:
        return RankResult(correct, predicted, scores, {}, {})
    return RankResult(correct, predicted, scores, tally.means(), tally.counts)
