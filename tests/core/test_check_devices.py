"""The device-check driver of ``mixlight.testing`` (no torch or JAX here: places built on
numpy): a planted wrong gradient is caught on every place and named by path, a failure that
is not a numerical mismatch is raised at once (counted, not timed), a mismatch is shrunk
within a budget, and a custom kind's reference gradients come from central differences."""

import math
from typing import ClassVar

import attrs
import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

import mixlight.extend as mlx
from mixlight.math import merge_vectors
from mixlight.testing import (
    ConformanceError,
    Outcome,
    Place,
    PlaceError,
    check_case_at,
    check_on_devices,
    loop_gradients,
    loop_reference,
    site_cases,
    tolerance,
    upstream,
)
from mixlight.testing._devices import _case_key, check_places, default_cases


@mlx.register_expert
@attrs.frozen
class CoreCheckBiases(mlx.ExpertKind):
    """A routed mixture of bias vectors, squared into the output (non-linear in its
    parameters, so central differences have something to find)."""

    kind: ClassVar[str] = "core_check_biases"

    def param_specs(self, num_experts, d_in, d_out):
        return {"biases": mlx.ParamSpec((num_experts, d_out), "zeros", axes=("expert", "embed"))}

    def mix(self, params, probs, x, h, heads):
        merged = merge_vectors(probs, params["biases"])
        return h + mlx.primitives_for(h).cast_like(merged * merged, h)

    @staticmethod
    def loop_reference(params, probs, x, h, heads):
        biases, out = params["biases"], np.array(h, np.float64)
        weights = [1.0] * len(biases) if probs is None else probs
        for j in range(len(out)):
            merged = sum(w * biases[e][j] for e, w in enumerate(weights))
            out[j] += merged * merged
        return out


def numpy_place(name="numpy", factor=1.0, data=1, calls=None, modes=("eager",)) -> Place:
    """The core math on numpy; gradients from the loop reference, the parameters' scaled by
    ``factor`` (a planted wrong backward when it is not 1)."""

    def run(case, g_out, mode):
        if calls is not None:
            calls.append(name)
        res = mlx.apply_site(case.spec, case.params, case.x, case.h, case.mask)
        grads = None
        if g_out is not None:
            grads = loop_gradients(case, g_out)
            grads = {n: g * (1 if n in "xh" else factor) for n, g in grads.items()}
        return Outcome(
            "core",
            np.asarray(res.out, np.float64),
            None if res.probs is None else np.asarray(res.probs, np.float64),
            None if res.logits is None else np.asarray(res.logits, np.float64),
            grads,
        )

    return Place(name, run, modes, data)


# --- reference gradients of custom kinds ---------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(site_cases(dtypes=("float32",), max_experts=4, seqs=(1, 2)))
def test_central_differences_equal_the_hand_derived_gradients(case):
    g = upstream(case)
    by_hand, numeric = loop_gradients(case, g), loop_gradients(case, g, numeric=True)
    for name, want in by_hand.items():
        scale = 1 + np.abs(want).max(initial=0)
        assert np.abs(numeric[name] - want).max(initial=0) / scale < 1e-7, name


@settings(max_examples=5, deadline=None)
@given(site_cases(expert=CoreCheckBiases(), dtypes=("float32",), max_experts=3, seqs=(1, 2)))
def test_a_custom_kind_gets_reference_gradients_not_a_refusal(case):
    g = upstream(case)
    grads = loop_gradients(case, g)
    assert set(grads) == {"x", "h", *case.params}
    # d/d biases of sum(g * (h + m^2)) = 2 m g p: check one entry against its own definition
    params = {n: p.astype(np.float64) for n, p in case.params.items()}
    step = 1e-6
    bumped = dict(params, biases=params["biases"].copy())
    bumped["biases"][0, 0] += step
    up = attrs.evolve(case, params={n: p for n, p in bumped.items()})
    slope = (np.sum(g * loop_reference(up).out) - np.sum(g * loop_reference(case).out)) / step
    assert math.isclose(slope, grads["biases"][0, 0], rel_tol=1e-4, abs_tol=1e-4)


# --- the driver ----------------------------------------------------------------------------------


def test_a_good_place_passes_and_reports_its_paths():
    places = [numpy_place("numpy:a"), numpy_place("numpy:b", modes=("eager", "jit"))]
    cases = default_cases(CoreCheckBiases())
    report = check_places(places, cases, examples=4)
    assert list(report) == ["numpy:a/eager:core", "numpy:b/eager:core", "numpy:b/jit:core"]
    assert report.places == ["numpy:a", "numpy:b"]
    assert all(e.examples >= 4 and e.ratio <= 1 for e in report.errors.values())
    assert "| numpy:b/jit:core | " in report.table()


def test_a_wrong_backward_is_caught_on_every_place_and_named():
    places = [numpy_place("numpy:a", 1.5), numpy_place("numpy:b", 1.5, modes=("eager", "jit"))]
    with pytest.raises(ConformanceError) as caught:
        check_places(places, default_cases(CoreCheckBiases()), examples=10, shrink_limit=10)
    err = caught.value
    assert set(err.paths) == {"numpy:a/eager:core", "numpy:b/eager:core", "numpy:b/jit:core"}
    assert all(what.startswith("grad:") for what in err.paths.values())
    assert "3 of 3 paths differ" in str(err) and "case: kind=CoreCheckBiases()" in str(err)


def test_only_the_wrong_place_is_named():
    places = [numpy_place("numpy:good"), numpy_place("numpy:bad", 0.5)]
    with pytest.raises(ConformanceError) as caught:
        check_places(places, default_cases(CoreCheckBiases()), examples=5, shrink_limit=5)
    assert list(caught.value.paths) == ["numpy:bad/eager:core"]
    assert "1 of 2 paths differ" in str(caught.value)


def test_a_mismatch_shrinks_within_its_budget_on_the_failing_paths_only():
    calls: list[str] = []
    places = [numpy_place("good", calls=calls), numpy_place("bad", 2.0, calls=calls)]
    with pytest.raises(ConformanceError):
        check_places(places, default_cases(CoreCheckBiases()), examples=10, shrink_limit=7)
    first = calls.index("bad")
    shrinking = calls[first + 1 :]
    # after the first failure: at most 7 shrink candidates, on the failing place only, then
    # one run of every place on the smallest case found
    assert shrinking[-2:] == ["good", "bad"]
    assert set(shrinking[:-2]) <= {"bad"} and len(shrinking[:-2]) <= 7


def test_a_batch_the_mesh_cannot_split_is_refused_at_once():
    calls: list[str] = []
    drawn: list[int] = []
    place = numpy_place("mesh(data=4)", data=4, calls=calls)
    cases = site_cases(dtypes=("float32",), batches=(3,)).map(lambda c: drawn.append(1) or c)
    with pytest.raises(PlaceError, match=r"a batch of 3 rows cannot be split over its 4 data"):
        check_on_devices("numpy", examples=20, cases=cases, places=[place], show=False)
    assert len(drawn) == 1 and calls == []  # the first case; nothing ran, nothing shrank


def test_an_error_in_a_path_is_raised_at_once_with_the_place():
    calls: list[int] = []

    def run(case, g_out, mode):
        calls.append(1)
        raise ValueError("shapes (2, 3) and (4,) do not broadcast")

    with pytest.raises(PlaceError) as caught:
        check_places([Place("numpy:broken", run)], default_cases(CoreCheckBiases()), examples=20)
    assert calls == [1]  # raised on the first example: no more examples, no shrinking
    message = str(caught.value)
    assert message.startswith("numpy:broken/eager: ValueError: shapes (2, 3) and (4,)")
    assert "not a numerical mismatch" in message and caught.value.path == "numpy:broken/eager"


def test_a_wrong_shape_or_placement_is_not_a_mismatch():
    case = find(site_cases(dtypes=("float32",), min_experts=2), lambda c: True)
    good = numpy_place()
    out = good.run(case, None, "eager")
    short = Place("short", lambda c, g, m: attrs_evolve(out, out=out.out[:, :0]))
    with pytest.raises(PlaceError, match="out has shape"):
        check_case_at(case, short, grads=False)
    moved = Place("moved", lambda c, g, m: attrs_evolve(out, layout="cpu", expected="cuda:0"))
    with pytest.raises(PlaceError, match="lives on cpu, expected cuda:0"):
        check_case_at(case, moved, grads=False)


def attrs_evolve(outcome, **changes):
    import dataclasses

    return dataclasses.replace(outcome, **changes)


def test_tolerances_by_dtype_and_product_precision():
    assert tolerance("float32").grad == 1e-4
    assert tolerance("bfloat16").out > tolerance("float16").out > tolerance("float32").out
    assert tolerance("float32", "tensorfloat32").route > tolerance("float32").route
    with pytest.raises(ValueError, match="float64"):
        tolerance("float64")


def test_default_cases_cover_every_builtin_op_with_batches_of_the_mesh():
    labels = [label for label, _ in default_cases(batches=(4, 8))]
    assert labels == ["mov", "ia3", "molora", "lora", "core"]
    for _label, strategy in default_cases(batches=(4, 8), dtypes=("float16",)):
        case = find(strategy, lambda c: c.h.shape[0] > 4 and np.abs(c.h).max() > 0)
        assert case.h.shape[0] in (4, 8) and case.dtype == "float16"
        assert np.array_equal(case.h, case.h.astype(np.float16).astype(np.float32))


def test_case_keys_tell_cases_apart():
    a, b = find(st.tuples(site_cases(), site_cases()), lambda ab: ab[0].spec != ab[1].spec)
    assert _case_key(a) == _case_key(attrs.evolve(a)) and _case_key(a) != _case_key(b)


def test_frameworks_are_imported_only_when_a_check_runs():
    import subprocess
    import sys

    code = (
        "import sys, mixlight.testing; "
        "assert 'torch' not in sys.modules and 'jax' not in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_an_unknown_framework_is_refused():
    with pytest.raises(ValueError, match="expected one of jax, torch"):
        check_on_devices("tensorflow", show=False)
