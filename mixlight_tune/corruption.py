"""T5's span-corruption objective on token-id lists (Raffel et al. 2020, §3.1.4)."""

from __future__ import annotations

import random


def _segment(rng: random.Random, total: int, parts: int) -> list[int]:
    """Split ``total`` into ``parts`` positive integers at random cut points."""
    cuts = sorted(rng.sample(range(1, total), parts - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]


def span_corruption(
    token_ids: list[int],
    rng: random.Random,
    sentinel_ids: list[int],
    noise_density: float = 0.15,
    mean_span: float = 3.0,
) -> tuple[list[int], list[int]]:
    """Corrupt random spans of ``token_ids``; return ``(inputs, targets)``.

    About ``noise_density`` of the tokens, in spans of mean length ``mean_span``, are
    removed. In ``inputs`` each removed span is replaced by the next sentinel (in the order of
    ``sentinel_ids``); ``targets`` lists each sentinel followed by the span it replaced, and
    ends with one more sentinel. As in T5 the sequence starts with kept tokens. Pass ids
    without EOS; append it to both outputs yourself. Sequences shorter than two tokens are
    left whole (targets is just the first sentinel). Deterministic given ``rng``.
    """
    length = len(token_ids)
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
    if mean_span <= 0:
        raise ValueError(f"mean_span must be positive, got {mean_span}")
    if len(sentinel_ids) < 2:
        raise ValueError("span_corruption needs at least two sentinel ids")
    if length < 2:
        return list(token_ids), [sentinel_ids[0]]
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = max(1, round(n_noise / mean_span))
    n_spans = min(n_spans, n_noise, length - n_noise, len(sentinel_ids) - 1)
    noise_lengths = _segment(rng, n_noise, n_spans)
    keep_lengths = _segment(rng, length - n_noise, n_spans)
    inputs: list[int] = []
    targets: list[int] = []
    pos = 0
    for sentinel, keep, noise in zip(
        sentinel_ids[:n_spans], keep_lengths, noise_lengths, strict=True
    ):
        inputs.extend(token_ids[pos : pos + keep])
        inputs.append(sentinel)
        targets.append(sentinel)
        targets.extend(token_ids[pos + keep : pos + keep + noise])
        pos += keep + noise
    targets.append(sentinel_ids[n_spans])
    return inputs, targets
