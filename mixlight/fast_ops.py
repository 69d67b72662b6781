"""Which fast op serves a site: decided once, here, from the site alone.

Each backend keeps one table from op name to its implementation. A site that no op serves,
or whose op a backend does not implement, runs the core math (:func:`mixlight.extend.apply_site`),
so a table only ever speeds a site up and never changes its result. Ops are tried in order
and the first that applies wins, as PEFT's ordered dispatchers. A custom expert kind adds
its own op with :func:`register_fast_op` and gives each backend an implementation
(``mixlight_torch.implement_fast_op``, ``mixlight_jax.implement_fast_op``); an
implementation takes ``(spec, params, x, h)`` and returns ``(out, probs, logits)`` as
:func:`mixlight.extend.apply_site` does (``probs``/``logits`` None without a router).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import attrs

from mixlight.experts import LowRank, Vectors
from mixlight.site_spec import SiteSpec


@attrs.frozen
class FastOp:
    """A named op and the sites it serves."""

    name: str
    applies: Callable[[SiteSpec], bool]


def _vectors_on_output(s: SiteSpec) -> bool:
    return isinstance(s.expert, Vectors) and s.reads == "output"


_OPS: list[FastOp] = [
    # (IA)³: one vector, no router.
    FastOp("scale", lambda s: _vectors_on_output(s) and not s.has_router),
    # MoV: a token router on the adapted output.
    FastOp("mov", lambda s: _vectors_on_output(s) and s.routing == "token"),
    # MoLoRA with its token router on the input, inside the op (no per-head routing).
    FastOp(
        "routed_molora",
        lambda s: (
            isinstance(s.expert, LowRank)
            and s.routing == "token"
            and s.has_router
            and s.reads == "input"
            and not s.heads
        ),
    ),
    # Low-rank experts given their token routing (or none: LoRA).
    FastOp("molora", lambda s: isinstance(s.expert, LowRank) and s.routing == "token"),
]


@functools.cache
def fast_op(spec: SiteSpec) -> str | None:
    """The name of the first op that serves ``spec``, or None (the core math)."""
    return next((op.name for op in _OPS if op.applies(spec)), None)


def register_fast_op(name: str, applies: Callable[[SiteSpec], bool]) -> None:
    """Put an op before the built-in ones: sites for which ``applies(spec)`` is true run the
    backends' implementations of ``name``. Register before injecting: layers pick their op
    when an adapter is added."""
    if not name.isidentifier():
        raise ValueError(f"register_fast_op: name {name!r} must be an identifier")
    _OPS[:] = [FastOp(name, applies), *(op for op in _OPS if op.name != name)]
    fast_op.cache_clear()
