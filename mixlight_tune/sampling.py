"""Framework-free choices both demo backends must make identically: the data order of
tuning, and which sites the routing heatmap shows."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator

from mixlight.presets import FAMILIES


def batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """``steps`` batches of indices: reshuffled epochs from ``random.Random(seed)``, so every
    method (and every backend) sees the same data order for the same seed."""
    rng = random.Random(f"mixlight-demo-order:{seed}")
    order: list[int] = []
    at = 0  # the next index of ``order`` (not sliced off each step: an epoch may be millions)
    for _ in range(steps):
        while len(order) - at < batch_size:
            order, at = order[at:], 0
            epoch = list(range(n))
            rng.shuffle(epoch)
            order += epoch
        yield order[at : at + batch_size]
        at += batch_size


def routing_sites(routed_paths: Iterable[str]) -> list[str]:
    """Of the sites that have a router, the last encoder and the last decoder FFN activation
    (any routed site when there is no FFN activation site); a decoder-only model's last
    one."""
    sites = list(routed_paths)
    ffn = [p for p in sites if any(re.fullmatch(f.ffn, p) for f in FAMILIES)] or sites
    stacks = [[p for p in ffn if p.startswith(s)] for s in ("encoder.", "decoder.")]
    if not any(stacks):
        stacks = [ffn]
    return [max(paths, key=_layer_numbers) for paths in stacks if paths]


def _layer_numbers(path: str) -> list[int]:
    return [int(t) for t in path.split(".") if t.isdigit()]
