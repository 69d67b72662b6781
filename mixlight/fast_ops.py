"""Which fast op serves a site, and what runs it: one registry, resolved once per adapter.

The core decides which op serves a site, from the site alone: the rules (:class:`FastOp`)
are tried in order and the first that applies wins, as PEFT's ordered dispatchers. A
backend declares its own implementations on its plugin (``BackendPlugin.fast_ops``); a
custom expert kind adds a rule with :func:`register_fast_op` and an implementation per
backend with :func:`implement_fast_op` (``mixlight_torch.implement_fast_op``,
``mixlight_jax.implement_fast_op``). An implementation takes ``(spec, params, x [...,
d_in], h [..., d_out])`` and returns ``(out [..., d_out], probs, logits)`` as
:func:`mixlight.extend.apply_site` does (``probs``/``logits`` ``[..., (H,) E]``, None
without a router).

An adapter layer calls :func:`resolve_fast_op` once, when an adapter is added, and keeps the
:class:`FastOpVariant` it gets, as PEFT keeps a ``LoraVariant``; its forward runs
:func:`run_site`. A site that no op serves, or whose op the backend does not implement,
resolves to None and runs the core math, so an op only ever speeds a site up and never
changes its result. Within :func:`core_math_only` every resolution in that thread (or
task) gives None; nothing shared changes.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from mixlight._backend_registry import installed_backends
from mixlight.experts import LowRank, Vectors
from mixlight.site_math import SiteResult, apply_site
from mixlight.site_spec import SiteSpec

SiteRunner = Callable[[SiteSpec, Mapping[str, Any], Any, Any], tuple[Any, Any, Any]]
"""One site on one backend's arrays: ``(spec, params, x, h) -> (out, probs, logits)``."""


@attrs.frozen
class FastOp:
    """A named op and the sites it serves."""

    name: str
    applies: Callable[[SiteSpec], bool]


@attrs.frozen
class FastOpVariant:
    """What one adapter runs at one site in one backend, resolved when the adapter is added:
    the op's ``name``, the backend's implementation ``run`` of it, and whether that is one of
    the backend's own (declared on its plugin, ``builtin``) or one added with
    :func:`implement_fast_op`. Equal variants compare and hash equal (JAX keeps them as
    static module metadata, which keys its jit cache)."""

    name: str
    run: SiteRunner
    builtin: bool


def _vectors_on_output(s: SiteSpec) -> bool:
    return isinstance(s.expert, Vectors) and s.reads == "output"


_BUILTIN_RULES = (
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
)

_RULES: list[FastOp] = list(_BUILTIN_RULES)
_ADDED: dict[tuple[str, str], SiteRunner] = {}  # (backend, op name) -> implementation
_CORE_MATH_ONLY = contextvars.ContextVar("mixlight_core_math_only", default=False)


def fast_op(spec: SiteSpec) -> str | None:
    """The name of the first op that serves ``spec``, or None (the core math)."""
    return next((op.name for op in _RULES if op.applies(spec)), None)


def register_fast_op(name: str, applies: Callable[[SiteSpec], bool]) -> None:
    """Put an op before the built-in ones: sites for which ``applies(spec)`` is true run the
    backends' implementations of ``name``. Register before injecting: layers resolve their
    op when an adapter is added."""
    if not name.isidentifier():
        raise ValueError(f"register_fast_op: name {name!r} must be an identifier")
    _RULES[:] = [FastOp(name, applies), *(op for op in _RULES if op.name != name)]


def implement_fast_op(backend: str, name: str, op: SiteRunner) -> None:
    """Run sites that :func:`fast_op` assigns ``name`` with ``op`` in ``backend`` (before the
    backend's own implementation of that name, if it has one)."""
    _ADDED[(backend, name)] = op


def resolve_fast_op(spec: SiteSpec, backend: str) -> FastOpVariant | None:
    """What ``backend`` runs for ``spec``: the variant of the op :func:`fast_op` names, or
    None for the core math (no op serves the site, ``backend`` does not implement it, or
    within :func:`core_math_only`)."""
    name = fast_op(spec)
    if name is None or _CORE_MATH_ONLY.get():
        return None
    if (backend, name) in _ADDED:
        return FastOpVariant(name, _ADDED[(backend, name)], builtin=False)
    plugin = installed_backends().get(backend)
    run = None if plugin is None or plugin.fast_ops is None else plugin.fast_ops().get(name)
    return None if run is None else FastOpVariant(name, run, builtin=True)


def run_site(
    variant: FastOpVariant | None,
    spec: SiteSpec,
    params: Mapping[str, Any],
    x: Any,
    h: Any,
    mask: Any = None,
) -> SiteResult:
    """One site's ``(out, probs, logits)``: ``variant``'s op, or the core math
    (:func:`mixlight.extend.apply_site`, which alone reads the ``[batch, seq]`` ``mask``)
    when it is None. Shapes as :func:`mixlight.extend.apply_site`."""
    if variant is not None:
        return SiteResult(*variant.run(spec, params, x, h))
    return apply_site(spec, params, x, h, mask)


@contextlib.contextmanager
def core_math_only() -> Iterator[None]:
    """Adapters added within the block run the core math, as if no backend had fast ops
    (for comparisons: plain autodiff against the fused ops). It changes what
    :func:`resolve_fast_op` gives in this thread or task only, and nothing shared."""
    token = _CORE_MATH_ONLY.set(True)
    try:
        yield
    finally:
        _CORE_MATH_ONLY.reset(token)


@contextlib.contextmanager
def registry_restored() -> Iterator[None]:
    """The rules and added implementations as they were before the block, after it (for
    tests that register ops)."""
    rules, added = list(_RULES), dict(_ADDED)
    try:
        yield
    finally:
        _RULES[:] = rules
        _ADDED.clear()
        _ADDED.update(added)
