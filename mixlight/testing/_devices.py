"""Conformance where a model runs: at every place (each local device; in JAX also a ``data``
mesh and a ``data x model`` mesh of all of them; in torch every CUDA device and, under
``torch.distributed``, a DDP group) the path a model would take there -- the adapter layer
as :func:`mixlight.inject` puts it in a tiny module, with the fast op the registry
(:mod:`mixlight.fast_ops`) picks, eager and compiled (``torch.compile``, ``jax.jit``) --
must equal the independent loop reference (:mod:`mixlight.testing._loops`), forward and
gradients, within the tolerance of the activations' dtype.

The driver here knows no framework: a :class:`Place` runs a :class:`SiteCase` in each of its
modes and hands back an :class:`Outcome` as numpy; ``_jax_places`` and ``_torch_places``
build the framework's places (imported only when a check runs).

Failing fast: a failure that is not a numerical mismatch (a shape, a placement, a batch the
mesh cannot split, an exception from the path) is raised at once as :class:`PlaceError`,
without hypothesis shrinking it. A mismatch is shrunk on one place and mode that failed,
within a budget of candidates, and reported as :class:`ConformanceError` with the smallest
case found and every path that differs on it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import attrs
import numpy as np

from mixlight.config import AdapterConfig
from mixlight.testing._loops import NEAR_TIE, LoopResult, loop_reference, top_k_margin
from mixlight.testing._strategies import round_to

FRAMEWORKS = ("jax", "torch")


# --- tolerances ------------------------------------------------------------------------------


@attrs.frozen
class Tolerance:
    """Relative tolerances of one dtype: ``out`` for outputs, ``grad`` for gradients,
    ``route`` for routing probabilities and logits. A value ``got`` passes against the
    reference ``want`` when ``|got - want| <= tol * (1 + max|want|) + tol * |want|``."""

    out: float
    grad: float
    route: float


TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(1e-5, 1e-4, 1e-5),
    "float16": Tolerance(4e-3, 1e-2, 1e-5),
    "bfloat16": Tolerance(2e-2, 5e-2, 1e-5),
}
"""By activation dtype. Routers compute in float32 whatever the activations' dtype, so
probabilities and logits keep float32's tolerance."""

MATMUL_TOLERANCES: dict[str, Tolerance] = {
    "float32": TOLERANCES["float32"],
    "tensorfloat32": Tolerance(5e-3, 1e-2, 5e-3),
    "bfloat16": Tolerance(2e-2, 5e-2, 2e-2),
}
"""By the precision a place gives float32 products (a :attr:`Place.matmul`): TF32 on
NVIDIA GPUs where enabled (JAX's default there), bf16 passes on TPUs."""

NEAR_TIES = {"float32": NEAR_TIE, "tensorfloat32": 1e-2, "bfloat16": 5e-2}
"""The top-k margin (see :func:`mixlight.testing.top_k_margin`) below which a case is
skipped, by :attr:`Place.matmul`: rounder products may order a closer tie differently."""


def tolerance(dtype: str, matmul: str = "float32") -> Tolerance:
    """The tolerance of ``dtype`` activations at a place with ``matmul`` float32 products."""
    if dtype not in TOLERANCES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(TOLERANCES)}")
    if matmul not in MATMUL_TOLERANCES:
        raise ValueError(f"matmul {matmul!r}: expected one of {', '.join(MATMUL_TOLERANCES)}")
    a, b = TOLERANCES[dtype], MATMUL_TOLERANCES[matmul]
    return Tolerance(max(a.out, b.out), max(a.grad, b.grad), max(a.route, b.route))


# --- places and what they return ---------------------------------------------------------------


@dataclass
class Outcome:
    """What one path computed for a case, as float64 numpy.

    Attributes:
      op: what served the site: ``"fast:<name>"`` (a backend's fast op), ``"triton:mov"``
        (the CUDA kernel), ``"core"`` (the core math, :func:`mixlight.extend.apply_site`).
      out, probs, logits: the layer's output and, with a router, its recorded routing.
      grads: by name (``x``, ``h``, every adapter parameter) for ``L = sum(g_out * out)``;
        None when gradients were not asked for.
      rows: the batch rows these cover (a DDP rank's share); None for the whole batch.
        Parameter gradients always cover the whole batch.
      layout / expected: where the output lives and where it must (None: not checked).
      dtype: the output's dtype (``"float32"``, ``"bfloat16"``, ...), which must be the
        case's activation dtype (None: not checked).
    """

    op: str
    out: np.ndarray
    probs: np.ndarray | None
    logits: np.ndarray | None
    grads: Mapping[str, np.ndarray] | None
    rows: slice | None = None
    layout: str | None = None
    expected: str | None = None
    dtype: str | None = None


@dataclass(frozen=True)
class Place:
    """Somewhere a model runs, and how to run a case's site there.

    ``run(case, g_out, mode)`` builds the site's adapter layer there (as
    :func:`mixlight.inject` would), runs it in ``mode`` (one of ``modes``: ``"eager"``,
    ``"jit"``, ``"compiled"``) on the case's arrays in its dtype and returns an
    :class:`Outcome`; with ``g_out`` (``[batch, seq, d_out]``) also the gradients of
    ``sum(g_out * out)``. ``data`` is how many ways the batch is split there (a drawn batch
    must be a multiple). ``matmul`` is the precision of float32 products there (a key of
    :data:`MATMUL_TOLERANCES`). ``agree(status)``, for a place spanning processes, returns
    the worst status (0 passed, 1 mismatch, 2 error) of all of them, so that every process
    fails, shrinks and stops together.
    """

    name: str
    run: Callable[[Any, np.ndarray | None, str], Outcome]
    modes: tuple[str, ...] = ("eager",)
    data: int = 1
    matmul: str = "float32"
    agree: Callable[[int], int] | None = None


class PlaceError(RuntimeError):
    """A failure that is not a numerical mismatch (a shape, a placement, a batch the mesh
    cannot split, an error raised by the path): raised at once, not shrunk. ``path`` is the
    place (and mode) where it happened, ``case`` the case it happened on; ``report`` (set by
    the check) the :class:`DeviceReport` of what was checked before."""

    report: DeviceReport | None = None

    def __init__(self, message: str, path: str = "", case: Any = None) -> None:
        super().__init__(message)
        self.path = path
        self.case = case


class ConformanceError(AssertionError):
    """Paths whose numbers differ from the loop reference. ``paths`` maps each failing path
    to its worst quantity and error, on ``case``, the smallest failing case found; ``report``
    (set by the check) is the :class:`DeviceReport` of everything checked until then."""

    report: DeviceReport | None = None

    def __init__(self, message: str, paths: Mapping[str, str], case: Any) -> None:
        super().__init__(message)
        self.paths = dict(paths)
        self.case = case


@dataclass
class PathErrors:
    """The largest errors seen on one path: normalised ``max|got - want| / (1 + max|want|)``
    of the outputs and routing (``out``) and of the gradients (``grad``), and the worst
    ratio of an error to its tolerance (``ratio``; at most 1 passes), on ``worst``."""

    examples: int = 0
    dtypes: set[str] = field(default_factory=set)
    out: float = 0.0
    grad: float = 0.0
    ratio: float = 0.0
    worst: str = ""

    def add(self, dtype: str, errors: Mapping[str, tuple[float, float]]) -> None:
        self.examples += 1
        self.dtypes.add(dtype)
        for name, (err, ratio) in errors.items():
            if name.startswith("grad:"):
                self.grad = max(self.grad, err)
            else:
                self.out = max(self.out, err)
            if ratio > self.ratio:
                self.ratio, self.worst = ratio, name


class DeviceReport(list[str]):
    """The paths checked (``"<place>/<mode>:<op>"``, e.g. ``"jax:cpu:0/jit:fast:mov"``,
    ``"torch:cuda:0/eager:triton:mov"``), as a list, with ``places`` (the places visited)
    and ``errors`` (the largest errors per path, :class:`PathErrors`); :meth:`table`
    formats them."""

    def __init__(self, places: Sequence[str], errors: Mapping[str, PathErrors]) -> None:
        super().__init__(errors)
        self.places = list(places)
        self.errors = dict(errors)

    def table(self, title: str = "") -> str:
        """The largest errors per path as a markdown table (readable as plain text)."""
        rows = [
            "| path | examples | dtypes | max out err | max grad err | worst / tol |",
            "|---|---:|---|---:|---:|---|",
        ]
        for path, e in self.errors.items():
            dtypes = ",".join(sorted(e.dtypes))
            worst = f"{e.ratio:.2f} ({e.worst})" if e.worst else "0"
            rows.append(
                f"| {path} | {e.examples} | {dtypes} | {e.out:.1e} | {e.grad:.1e} | {worst} |"
            )
        return "\n".join(([title, ""] if title else []) + rows)


def config_for(spec: Any, path: str = "proj") -> AdapterConfig:
    """The one-site config that gives a module at ``path`` the site of ``spec``."""
    return AdapterConfig(
        [attrs.evolve(spec.site, pattern=path)], spec.num_experts, spec.router, spec.routing
    )


def same_site(got: Any, want: Any) -> bool:
    """Whether the injected site is the case's (all but the path and pattern)."""
    keys = ("num_experts", "router", "routing", "d_in", "d_out", "heads", "expert", "reads")
    return all(getattr(got, k) == getattr(want, k) for k in keys)


# --- comparing one path's outcome with the reference -------------------------------------------


def _measure(got: np.ndarray, want: np.ndarray, tol: float) -> tuple[float, float]:
    """``(normalised error, worst error / tolerance)``; non-finite values count as inf."""
    scale = 1.0 + float(np.abs(want).max(initial=0.0))
    diff = np.abs(np.asarray(got, np.float64) - want)
    diff = np.where(np.isfinite(diff), diff, np.inf)
    if diff.size == 0:
        return 0.0, 0.0
    bound = tol * scale + tol * np.abs(want)
    return float(diff.max()) / scale, float((diff / bound).max())


def _quantities(
    want: LoopResult, want_grads: Mapping[str, np.ndarray] | None, got: Outcome
) -> Iterable[tuple[str, Any, np.ndarray, str]]:
    """``(name, got, want, kind)`` of every compared quantity; kind ``out``/``route``/``grad``."""
    rows = got.rows if got.rows is not None else slice(None)
    yield "out", got.out, want.out[rows], "out"
    if want.probs is not None and want.logits is not None:
        yield "probs", got.probs, want.probs[rows], "route"
        yield "logits", got.logits, want.logits[rows], "route"
    if want_grads is not None and got.grads is not None:
        for name, w in want_grads.items():
            yield f"grad:{name}", got.grads.get(name), w[rows] if name in "xh" else w, "grad"


def compare(
    case: Any,
    want: LoopResult,
    want_grads: Mapping[str, np.ndarray] | None,
    got: Outcome,
    tol: Tolerance,
    path: str,
) -> dict[str, tuple[float, float]]:
    """``{quantity: (normalised error, error / tolerance)}`` of one path's outcome.

    Raises :class:`PlaceError` for what is not a numerical mismatch: the output living
    elsewhere than it must, a missing quantity or a shape that differs from the reference.
    """
    if got.expected is not None and got.layout != got.expected:
        raise PlaceError(
            f"{path}: the output lives on {got.layout}, expected {got.expected} (the batch "
            "must stay where its inputs were put: a placement or sharding rule moved it)",
            path,
            case,
        )
    if got.dtype is not None and got.dtype != case.dtype:
        raise PlaceError(
            f"{path}: the output is {got.dtype} for {case.dtype} activations (an adapted "
            "layer must return its activations' dtype)",
            path,
            case,
        )
    if want_grads is not None and got.grads is not None and set(got.grads) != set(want_grads):
        raise PlaceError(
            f"{path}: gradients for {sorted(got.grads)}, expected {sorted(want_grads)}",
            path,
            case,
        )
    errors = {}
    for name, value, reference, kind in _quantities(want, want_grads, got):
        if value is None:
            raise PlaceError(
                f"{path}: no {name} from this path (the reference has one)", path, case
            )
        value = np.asarray(value)
        if value.shape != reference.shape:
            raise PlaceError(
                f"{path}: {name} has shape {list(value.shape)}, the reference "
                f"{list(reference.shape)}",
                path,
                case,
            )
        errors[name] = _measure(value, reference, getattr(tol, kind))
    return errors


# --- the driver --------------------------------------------------------------------------------


def describe_case(case: Any) -> str:
    """One line naming what a case draws (not its numbers)."""
    spec = case.spec
    batch, seq = case.h.shape[:2]
    return (
        f"kind={spec.expert!r} E={spec.num_experts} router={spec.router!r} "
        f"routing={spec.routing} reads={spec.reads} heads={spec.heads} d_in={spec.d_in} "
        f"d_out={spec.d_out} batch={batch} seq={seq} dtype={case.dtype} "
        f"padded_rows={int((case.mask.min(axis=1) == 0).sum()) if case.mask.size else 0}"
    )


def _case_key(case: Any) -> str:
    digest = hashlib.sha256(repr((case.spec, case.dtype)).encode())
    for a in (case.x, case.h, case.mask, *(case.params[n] for n in sorted(case.params))):
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


class _Stop(BaseException):
    """Carries a :class:`PlaceError` out of hypothesis, which shrinks only ``Exception``s."""

    def __init__(self, error: PlaceError) -> None:
        super().__init__(str(error))
        self.error = error


def _upstream(case: Any) -> np.ndarray:
    """The case's cotangent, representable in its dtype (so every path sees the same one)."""
    from mixlight.testing._conformance import upstream

    return round_to(upstream(case), case.dtype)


@dataclass
class _Run:
    """One hypothesis run's state: the first failure, what failed, the shrink budget."""

    shrink_limit: int
    examples: int = 0
    shrinks: int = 0
    failing: dict[str, ConformanceError] = field(default_factory=dict)
    failed_pairs: list[tuple[Place, str]] | None = None
    last_failing: Any = None


def _tolerance_at(case: Any, place: Place, tolerances: Mapping[str, Tolerance] | None) -> Tolerance:
    if tolerances is not None and case.dtype in tolerances:
        return tolerances[case.dtype]
    return tolerance(case.dtype, place.matmul)


def _check_batch(case: Any, places: Sequence[Place]) -> None:
    batch = case.h.shape[0]
    for place in places:
        if batch % place.data:
            raise PlaceError(
                f"{place.name}: a batch of {batch} rows cannot be split over its {place.data} "
                f"data shards; draw batches that are multiples of {place.data}, e.g. "
                f"site_cases(..., batches=({place.data}, {2 * place.data})) (the default "
                "cases do)",
                place.name,
                case,
            )


def check_case(
    case: Any,
    places: Sequence[Place],
    grads: bool = True,
    tolerances: Mapping[str, Tolerance] | None = None,
    errors: dict[str, PathErrors] | None = None,
    pairs: Sequence[tuple[Place, str]] | None = None,
) -> dict[str, str]:
    """Run one case on every place and mode (or on ``pairs``); record the errors of each
    path into ``errors``; return the failing paths, each with its worst quantity.

    Raises :class:`PlaceError` at once for a failure that is not a numerical mismatch; a
    near-tie that some place's float32 products could order either way is rejected
    (hypothesis' ``reject``).
    """
    _check_batch(case, places)
    want = loop_reference(case)
    if want.logits is not None:
        margin = max(NEAR_TIES[p.matmul] for p in places)
        if top_k_margin(case.spec, want.logits) < margin:
            from hypothesis import reject

            reject()
    g_out = _upstream(case) if grads else None
    want_grads = None
    if g_out is not None:
        from mixlight.testing._loop_grads import loop_gradients

        want_grads = loop_gradients(case, g_out)
    errors = errors if errors is not None else {}
    if pairs is None:
        pairs = [(place, mode) for place in places for mode in place.modes]
    failing: dict[str, str] = {}
    agree = _agreement(places)
    for place, mode in pairs:
        where = f"{place.name}/{mode}"
        if place.agree is not None and agree is not None and agree(0) == 2:
            # enter a place spanning processes together, or not at all
            raise PlaceError(f"{where}: another process failed with an error", where, case)
        try:
            try:
                outcome = place.run(case, g_out, mode)
            except PlaceError:
                raise
            except Exception as err:
                raise PlaceError(
                    f"{where}: {type(err).__name__}: {err}\n  on the case {describe_case(case)}"
                    "\n  (an error, not a numerical mismatch: fix the path, or narrow the cases "
                    "it is given)",
                    where,
                    case,
                ) from err
            path = f"{where}:{outcome.op}"
            found = compare(
                case, want, want_grads, outcome, _tolerance_at(case, place, tolerances), path
            )
        except PlaceError:
            if agree is not None:
                agree(2)
            raise
        entry = errors.setdefault(path, PathErrors())
        entry.add(case.dtype, found)
        bad = {name: e for name, e in found.items() if not e[1] <= 1.0}
        if bad:
            name, (size, ratio) = max(bad.items(), key=lambda kv: kv[1][1])
            failing[path] = f"{name} error {size:.2e} ({ratio:.3g} x its tolerance)"
    if agree is not None:  # every process passes, fails (and so shrinks) or stops together
        worst = agree(1 if failing else 0)
        if worst == 2:
            raise PlaceError("another process failed with an error", "", case)
        if worst == 1 and not failing:
            failing["(another process)"] = "a path differs on another process"
    return failing


def _agreement(places: Sequence[Place]) -> Callable[[int], int] | None:
    """The ``agree`` of the first place spanning processes, if any."""
    return next((p.agree for p in places if p.agree is not None), None)


def _failure_message(failing: Mapping[str, str], case: Any, total: int, run: _Run) -> str:
    width = max(len(p) for p in failing)
    lines = [
        f"{len(failing)} of {total} paths differ from the loop reference on the smallest "
        f"failing case found (after {run.examples} examples and {run.shrinks} shrink "
        "candidates):"
    ]
    lines += [f"  {path:<{width}}  {what}" for path, what in failing.items()]
    lines.append(f"  case: {describe_case(case)}")
    return "\n".join(lines)


def check_places(
    places: Sequence[Place],
    cases: Any,
    examples: int = 10,
    grads: bool = True,
    tolerances: Mapping[str, Tolerance] | None = None,
    shrink_limit: int = 25,
    derandomize: bool = False,
    errors: dict[str, PathErrors] | None = None,
) -> DeviceReport:
    """Drive hypothesis over ``cases`` (a strategy of :class:`SiteCase`, or a list of
    ``(label, strategy)``, each run for ``examples``) on every place and mode.

    A numerical mismatch is shrunk, re-running one place and mode that failed, for at most
    ``shrink_limit`` candidates; then every path runs on the smallest failing case
    found and a :class:`ConformanceError` names each that differs. Anything else is a
    :class:`PlaceError`, raised at once.
    """
    families = cases if isinstance(cases, list) else [("cases", cases)]
    errors = errors if errors is not None else {}
    try:
        _check_families(
            places, families, examples, grads, tolerances, shrink_limit, derandomize, errors
        )
    except (PlaceError, ConformanceError) as err:
        err.report = _report(places, errors)  # what passed before
        raise
    return _report(places, errors)


def _report(places: Sequence[Place], errors: Mapping[str, PathErrors]) -> DeviceReport:
    ordered = {p: errors[p] for p in _order(errors, places)}
    return DeviceReport([p.name for p in places], ordered)


def _check_families(
    places: Sequence[Place],
    families: Sequence[tuple[str, Any]],
    examples: int,
    grads: bool,
    tolerances: Mapping[str, Tolerance] | None,
    shrink_limit: int,
    derandomize: bool,
    errors: dict[str, PathErrors],
) -> None:
    from hypothesis import strategies as st

    for _label, strategy in families:
        if not isinstance(strategy, st.SearchStrategy):
            raise TypeError(f"cases: expected a hypothesis strategy, got {type(strategy)}")
        state = _Run(shrink_limit)
        check = _hypothesis_check(
            state, strategy, places, grads, tolerances, errors, examples, derandomize
        )
        try:
            check()
        except _Stop as stop:
            raise stop.error from stop.error.__cause__
        except ConformanceError:
            case = state.last_failing
            every: dict[str, PathErrors] = {}
            failing = check_case(case, places, grads, tolerances, every)
            if not failing:  # only the shrink's subset of paths saw it: report that
                raise
            message = _failure_message(failing, case, len(every), state)
            raise ConformanceError(message, failing, case) from None


def _hypothesis_check(
    state: _Run,
    strategy: Any,
    places: Sequence[Place],
    grads: bool,
    tolerances: Mapping[str, Tolerance] | None,
    errors: dict[str, PathErrors],
    examples: int,
    derandomize: bool,
) -> Callable[[], None]:
    """The hypothesis test of one case family (see :func:`check_places`)."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings

    def one(case: Any) -> None:
        if state.failed_pairs is not None:
            key = _case_key(case)
            if key in state.failing:  # a failing case again (hypothesis' final replay)
                state.last_failing = case
                raise state.failing[key]
            if state.shrinks >= state.shrink_limit:
                return  # the budget is spent: no candidate is tried any more
            state.shrinks += 1
        else:
            state.examples += 1
        try:
            failing = check_case(case, places, grads, tolerances, errors, state.failed_pairs)
        except PlaceError as err:
            raise _Stop(err) from err
        if not failing:
            return
        if state.failed_pairs is None:
            state.failed_pairs = _shrink_on(places, failing)
        error = ConformanceError(
            _failure_message(failing, case, len(failing), state), failing, case
        )
        state.failing[_case_key(case)] = error
        state.last_failing = case
        raise error

    return settings(  # type: ignore[no-any-return]
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        print_blob=False,
        verbosity=Verbosity.quiet,  # the errors raised say what failed, on which case
    )(given(strategy)(one))  # type: ignore[no-untyped-call]


def _shrink_on(places: Sequence[Place], failing: Mapping[str, str]) -> list[tuple[Place, str]]:
    """Where shrinking re-runs candidates: one place and mode that failed, compiled rather
    than eager (cheaper per candidate); across processes every place, as every process must
    run the same ones whatever failed where."""
    pairs = [(p, m) for p in places for m in p.modes]
    if _agreement(places) is not None:
        return pairs
    where = {_place_mode(path) for path in failing}
    failed = [(p, m) for p, m in pairs if f"{p.name}/{m}" in where]
    return [min(failed, key=lambda pm: pm[1] == "eager")][:1] if failed else pairs


def _place_mode(path: str) -> str:
    """``"<place>/<mode>"`` of a path ``"<place>/<mode>:<op>"``."""
    place, _, rest = path.rpartition("/")
    return f"{place}/{rest.partition(':')[0]}"


def _order(paths: Iterable[str], places: Sequence[Place]) -> list[str]:
    rank = {p.name: i for i, p in enumerate(places)}
    modes = {(p.name, m): j for p in places for j, m in enumerate(p.modes)}

    def key(path: str) -> tuple[int, int, str]:
        place, _, rest = path.partition("/")
        mode, _, op = rest.partition(":")
        return rank.get(place, len(rank)), modes.get((place, mode), 0), op

    return sorted(paths, key=key)


# --- the public entry points -------------------------------------------------------------------


def device_places(
    framework: str,
    modes: Sequence[str] | None = None,
    compile_backend: str | None = "aot_eager",
    rules: Sequence[tuple[str, str | None]] | None = None,
) -> list[Place]:
    """The places :func:`check_on_devices` visits for ``framework``.

    ``"jax"``: every local device (jitted; the first device of each platform also eager),
    then, with several devices, a ``data`` mesh of all of them (batch split, adapters
    replicated) and a ``data x model`` mesh (``model=2``; adapters split by ``rules``,
    logical axis rules, default experts over ``model``), both jitted under
    ``jax.set_mesh``. ``"torch"``: the CPU and every CUDA device (under an initialised
    ``torch.distributed``, the process's own), eager and compiled with
    ``torch.compile(backend=compile_backend)`` (``fullgraph=True`` for the backend's own
    fast ops, which promise it; None: eager only); under an initialised
    ``torch.distributed``, also a DDP group of all processes (eager).
    ``modes`` narrows or widens the modes of every place (``"eager"``, ``"jit"``,
    ``"compiled"``).
    """
    if framework == "jax":
        from mixlight.testing._jax_places import jax_places

        return jax_places(modes, rules)
    if framework == "torch":
        from mixlight.testing._torch_places import torch_places

        return torch_places(modes, compile_backend)
    raise ValueError(f"framework {framework!r}: expected one of {', '.join(FRAMEWORKS)}")


def default_cases(
    expert: Any = None,
    dtypes: Sequence[str] = ("float32",),
    batches: Sequence[int] = (1, 2),
) -> list[tuple[str, Any]]:
    """The case families a check draws from: for a custom ``expert``, its sites (small:
    its gradients come from central differences); else one family per built-in fast op
    (``mov``, ``ia3``, ``molora``: MoLoRA routed on its input, ``lora``: LoRA and MoLoRA
    routed on its output) and ``core``, sites no fast op serves (sequence routing, vectors
    routed on the input), with ``batches`` rows (multiples of the places' data shards)."""
    from hypothesis import strategies as st

    from mixlight.experts import LowRank, Vectors
    from mixlight.testing._strategies import site_cases

    common: dict[str, Any] = dict(dtypes=tuple(dtypes), batches=tuple(batches))
    if expert is not None:
        return [
            (
                getattr(expert, "kind", "custom"),
                site_cases(expert=expert, max_experts=4, seqs=(1, 2, 3), **common),
            )
        ]
    low_rank = st.builds(LowRank, st.integers(1, 4), st.sampled_from([1.0, 8.0, 16.0]))
    token: dict[str, Any] = dict(routings=("token",), **common)
    routed: dict[str, Any] = dict(min_experts=2, max_experts=8, **token)
    return [
        ("mov", site_cases(expert=Vectors(), reads=("output",), **routed)),
        ("ia3", site_cases(expert=Vectors(), max_experts=1, reads=("output",), **token)),
        ("molora", site_cases(expert=low_rank, reads=("input",), heads=(None,), **routed)),
        (
            "lora",
            st.one_of(
                site_cases(expert=low_rank, max_experts=1, **token),
                site_cases(expert=low_rank, reads=("output",), **routed),
            ),
        ),
        (
            "core",
            st.one_of(
                site_cases(min_experts=2, max_experts=6, routings=("sequence",), **common),
                site_cases(expert=Vectors(), reads=("input",), **token),
            ),
        ),
    ]


def _lcm(values: Iterable[int]) -> int:
    out = 1
    for v in values:
        out = out * v // math.gcd(out, v)
    return out


def check_on_devices(
    framework: str = "jax",
    examples: int = 10,
    cases: Any = None,
    grads: bool = True,
    rtol: float | None = None,
    grad_tol: float | None = None,
    *,
    expert: Any = None,
    dtypes: Sequence[str] = ("float32",),
    modes: Sequence[str] | None = None,
    compile_backend: str | None = "aot_eager",
    rules: Sequence[tuple[str, str | None]] | None = None,
    places: Sequence[Place] | None = None,
    shrink_limit: int = 25,
    show: bool = True,
) -> DeviceReport:
    """Check, at every place ``framework`` runs on this machine, the path a model takes
    there against the independent loop reference, forward and gradients (of the input, the
    frozen output, the router and the experts), eager and compiled; print and return the
    largest errors per path.

    At each place (see :func:`device_places`) a case's site is injected into a tiny module
    with :func:`mixlight.inject`, so the adapter layer runs with the fast op the registry
    picks for it (``fast:<op>``: the torch autograd Functions, the JAX ``custom_vjp``
    ops, a custom kind's registered op; ``triton:mov`` on CUDA; ``core``: the core math).

    Args:
      framework: ``"jax"`` or ``"torch"``.
      examples: hypothesis examples per case family (one family per built-in fast op, or
        one for ``expert`` or ``cases``); each runs on every path.
      cases: a strategy of :class:`SiteCase` (or a list of ``(label, strategy)``); its
        batches must be multiples of the mesh's data axis (:class:`PlaceError` at once
        otherwise; the default cases draw ``n`` and ``2n`` rows on ``n`` devices).
      grads: check gradients too; a custom kind's reference gradients come from central
        differences of its loop (:func:`loop_gradients`).
      rtol / grad_tol: override the output / gradient tolerance of every dtype (default:
        :data:`TOLERANCES` by dtype, widened where a place rounds float32 products).
      expert: check a custom expert kind (with its fast op, if it registered one).
      dtypes: activation dtypes to draw (``"float32"``, ``"bfloat16"``, ``"float16"``).
      modes / compile_backend / rules: see :func:`device_places`.
      places: check these places instead of the framework's (e.g. a third-party backend's).
      shrink_limit: how many smaller candidates a mismatch is shrunk over.
      show: print the table of largest errors.

    Returns:
      a :class:`DeviceReport`: the paths checked (``"jax:cpu:0/jit:fast:mov"``,
      ``"jax:mesh(data=2,model=2)/jit:fast:mov"``, ``"torch:cpu/compiled:fast:mov"``, ...),
      with ``.places`` and ``.errors``; ``.table()`` formats them.

    Raises:
      ConformanceError: (an ``AssertionError``) paths that differ, on the smallest case.
      PlaceError: at once, for failures that are not numerical mismatches.

    To simulate several CPU devices in JAX, set
    ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before JAX is first imported
    (e.g. in a subprocess).
    """
    where = (
        list(places)
        if places is not None
        else device_places(framework, modes, compile_backend, rules)
    )
    if not where:
        raise ValueError(f"check_on_devices: no places to check for {framework!r}")
    data = _lcm(p.data for p in where)
    if cases is None:
        cases = default_cases(expert, dtypes, (data, 2 * data))
    elif expert is not None:
        raise ValueError("check_on_devices: give cases or expert, not both")
    tolerances = None
    if rtol is not None or grad_tol is not None:
        tolerances = {}
        for dtype, tol in TOLERANCES.items():
            tolerances[dtype] = Tolerance(
                rtol if rtol is not None else tol.out,
                grad_tol if grad_tol is not None else tol.grad,
                tol.route,
            )
    distributed = any(p.agree is not None for p in where)
    report = check_places(
        where, cases, examples, grads, tolerances, shrink_limit, derandomize=distributed
    )
    if show:
        print(report.table(f"mixlight check: {framework} ({', '.join(report.places)})"))
    return report


def check_case_at(
    case: Any,
    place: Place,
    grads: bool = True,
    rtol: float | None = None,
    grad_tol: float | None = None,
) -> DeviceReport:
    """Check one :class:`SiteCase` at ``place``, in each of its modes, against the loop
    reference; raise :class:`ConformanceError` naming the paths that differ (or
    :class:`PlaceError` for anything else). Returns the paths checked and their errors."""
    tolerances = None
    if rtol is not None or grad_tol is not None:
        base = tolerance(case.dtype, place.matmul)
        tolerances = {
            case.dtype: Tolerance(
                rtol if rtol is not None else base.out,
                grad_tol if grad_tol is not None else base.grad,
                base.route,
            )
        }
    errors: dict[str, PathErrors] = {}
    failing = check_case(case, [place], grads, tolerances, errors)
    if failing:
        width = max(len(p) for p in failing)
        lines = [f"{len(failing)} of {len(errors)} paths differ from the loop reference:"]
        lines += [f"  {path:<{width}}  {what}" for path, what in failing.items()]
        lines.append(f"  case: {describe_case(case)}")
        raise ConformanceError("\n".join(lines), failing, case)
    return DeviceReport([place.name], errors)


def conformance(
    frameworks: Sequence[str] | str | None = None, examples: int = 5, **options: Any
) -> dict[str, DeviceReport]:
    """:func:`check_on_devices` for each of ``frameworks`` (default: every one installed
    here), for a test in a user's suite: one line, ``conformance()``, or with a custom kind,
    ``conformance(expert=MyKind())``. Returns the report of each framework checked; raises
    as :func:`check_on_devices` does. A framework asked for by name must be installed."""
    import importlib.util

    if frameworks is None:
        names = [f for f in FRAMEWORKS if importlib.util.find_spec(f) is not None]
    else:
        names = [frameworks] if isinstance(frameworks, str) else list(frameworks)
    return {name: check_on_devices(name, examples, **options) for name in names}
