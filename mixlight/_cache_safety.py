"""Sequence routing under a key/value cache: which sites it would break, and the refusal.

Sequence routing pools a site's router input over each sequence's tokens. A decoder that
reuses cached keys and values reads one new token per step, so a decoder-side site would
pool over that token alone and route differently from the same model run on the whole
prefix. Sites that read the source are unaffected: the encoder runs once over the whole
input, and T5's cross-attention keys/values (``EncDecAttention.k`` / ``.v``) are computed
once from its output.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_SOURCE_SIDE = re.compile(r"(?:.*\.)?(?:encoder\..*|EncDecAttention\.(?:k|v))")


def cache_unsafe_sites(specs: Iterable[Any]) -> list[str]:
    """Paths of the sequence-routed sites whose router input grows with the decoded
    sequence: every sequence-routed site except encoder ones (``encoder.*``) and T5
    cross-attention keys/values."""
    return [
        s.path
        for s in specs
        if s.routing == "sequence" and s.num_experts > 1 and not _SOURCE_SIDE.fullmatch(s.path)
    ]


def refuse_cached_sequence_routing(specs: Iterable[Any], where: str, instead: str) -> None:
    """Raise ``ValueError`` when a cached decoding step would run sequence-routed
    decoder-side sites (see :func:`cache_unsafe_sites`); ``instead`` names the uncached way."""
    unsafe = cache_unsafe_sites(specs)
    if unsafe:
        raise ValueError(
            f"{where}: sequence routing pools each sequence's router input over its tokens, "
            f"but with a key/value cache the decoder reads one new token per step, so "
            f"{len(unsafe)} decoder-side site(s) (e.g. {unsafe[0]}) would route on that token "
            f"alone and differ from the uncached model. Decode without the cache ({instead}), "
            "use token routing, or keep sequence-routed sites on the source side (encoder.* "
            "and EncDecAttention.k/v)"
        )
