"""``check_on_devices("torch")`` checks what a model runs: the injected adapter layer with the
fast op the registry picks, eager and under ``torch.compile`` (aot_eager), forward and
gradients. A custom kind's fast op whose backward is off by a factor is caught on every
path and named; the same kind with a correct op passes, gradients included; an op that
fails with an error is raised at once; CUDA places appear only where CUDA is."""

from typing import ClassVar

import attrs
import numpy as np
import pytest
import torch

import mixlight.extend as mlx
from mixlight import fast_ops
from mixlight.math import merge_vectors
from mixlight.site_math import route
from mixlight.testing import (
    ConformanceError,
    PlaceError,
    check_on_devices,
    conformance,
    device_places,
    site_cases,
)
from mixlight.testing.pytest_plugin import mixlight_check  # noqa: F401  (the fixture)
from mixlight_torch import implement_fast_op


@mlx.register_expert
@attrs.frozen
class TorchCheckBiases(mlx.ExpertKind):
    """E bias vectors, soft-merged per token and added to the output."""

    kind: ClassVar[str] = "torch_check_biases"

    def param_specs(self, num_experts, d_in, d_out):
        return {"biases": mlx.ParamSpec((num_experts, d_out), "zeros", axes=("expert", "embed"))}

    def mix(self, params, probs, x, h, heads):
        return h + mlx.primitives_for(h).cast_like(merge_vectors(probs, params["biases"]), h)

    @staticmethod
    def loop_reference(params, probs, x, h, heads):
        biases, out = params["biases"], np.array(h, np.float64)
        weights = [1.0] * len(biases) if probs is None else probs
        for j in range(len(out)):
            out[j] += sum(w * biases[e][j] for e, w in enumerate(weights))
        return out


def fused_with_backward_times(factor):
    """A fused "merge" whose backward scales its gradient by ``factor`` (1: correct)."""

    class Merge(torch.autograd.Function):
        @staticmethod
        def forward(ctx, merged):
            return merged.clone()

        @staticmethod
        def backward(ctx, g):
            return g * factor

    def op(spec, params, x, h):
        probs = logits = None
        if spec.has_router:
            probs, logits = route(spec, params["router"], h if spec.reads == "output" else x)
        merged = Merge.apply(merge_vectors(probs, params["biases"]))
        return h + merged.to(h.dtype), probs, logits

    return op


@pytest.fixture
def registry():
    """Restores the core's fast-op registry after the test."""
    with fast_ops.registry_restored():
        yield


def plant(op):
    mlx.register_fast_op(
        "torch_check_op",
        lambda s: isinstance(s.expert, TorchCheckBiases) and s.routing == "token",
    )
    implement_fast_op("torch_check_op", op)


TOKEN_CASES = site_cases(
    expert=TorchCheckBiases(),
    max_experts=4,
    seqs=(1, 2, 3),
    routings=("token",),
    dtypes=("float32",),
)


def test_a_wrong_fused_backward_is_caught_on_every_path(registry):
    plant(fused_with_backward_times(1.5))
    with pytest.raises(ConformanceError) as caught:
        check_on_devices("torch", examples=10, cases=TOKEN_CASES, shrink_limit=5, show=False)
    paths = caught.value.paths
    want = {f"torch:{d}/{m}:fast:torch_check_op" for d in devices() for m in ("eager", "compiled")}
    assert set(paths) == want
    assert all(what.startswith("grad:") for what in paths.values())
    assert "on the smallest failing case found" in str(caught.value)


def test_a_custom_kind_with_gradients_passes(registry):
    plant(fused_with_backward_times(1.0))
    report = check_on_devices("torch", examples=4, cases=TOKEN_CASES, show=False)
    assert list(report) == [
        f"torch:{d}/{m}:fast:torch_check_op" for d in devices() for m in ("eager", "compiled")
    ]
    assert all(e.grad < 1e-5 for e in report.errors.values())


def test_a_custom_kind_on_the_core_math_passes_eagerly_with_gradients():
    report = check_on_devices(
        "torch", examples=4, expert=TorchCheckBiases(), modes=("eager",), show=False
    )
    assert {p.rsplit(":", 1)[1] for p in report} == {"core"}


def test_an_error_in_the_op_is_raised_at_once(registry):
    calls = []

    def broken(spec, params, x, h):
        calls.append(1)
        return h[..., :0], None, None

    plant(broken)
    with pytest.raises(PlaceError, match=r"torch:cpu/eager:fast:torch_check_op: out has shape"):
        check_on_devices("torch", examples=20, cases=TOKEN_CASES, show=False)
    assert calls == [1]


def test_builtin_ops_eager_and_compiled_in_three_dtypes():
    cases = [
        (label, strategy)
        for label, strategy in default_cases_for(("float32", "bfloat16", "float16"))
        if label != "core"
    ]
    report = check_on_devices("torch", examples=3, cases=cases, show=False)
    ops = {p.split("/", 1)[1] for p in report if p.startswith("torch:cpu/")}
    assert {"eager:fast:mov", "compiled:fast:mov", "eager:fast:scale"} <= ops
    assert {"eager:fast:routed_molora", "compiled:fast:molora"} <= ops


def test_the_core_math_eagerly():
    cases = [c for c in default_cases_for(("float32",)) if c[0] == "core"]
    report = check_on_devices("torch", examples=3, cases=cases, modes=("eager",), show=False)
    assert "torch:cpu/eager:core" in report


def test_the_core_math_compiled():
    """Sequence routing and kinds without a fast op compile too (dynamo failed on the frozen
    attrs class ``SiteResult`` used to be, which ``mixlight check`` found)."""
    cases = [c for c in default_cases_for(("float32",)) if c[0] == "core"]
    report = check_on_devices("torch", examples=2, cases=cases, modes=("compiled",), show=False)
    assert "torch:cpu/compiled:core" in report


def test_places_and_cuda_rows():
    places = [p.name for p in device_places("torch")]
    assert places == ["torch:cpu"] + [f"torch:cuda:{i}" for i in range(torch.cuda.device_count())]
    assert device_places("torch", compile_backend=None)[0].modes == ("eager",)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_the_triton_kernel_for_a_soft_merge():
    pytest.importorskip("triton")
    cases = [c for c in default_cases_for(("float32", "bfloat16")) if c[0] == "mov"]
    report = check_on_devices("torch", examples=5, cases=cases, show=False)
    assert "torch:cuda:0/eager:triton:mov" in report


def test_conformance_in_one_line():
    reports = conformance("torch", examples=1, modes=("eager",), show=False)
    assert list(reports) == ["torch"] and "torch:cpu/eager:fast:mov" in reports["torch"]


def test_the_fixture_of_the_pytest_plugin(mixlight_check):  # noqa: F811
    report = mixlight_check("torch", examples=1, modes=("eager",))
    assert "torch:cpu/eager:fast:mov" in report


def devices():
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def default_cases_for(dtypes):
    from mixlight.testing._devices import default_cases

    return default_cases(dtypes=dtypes)


def torchrun(*args):
    import os
    import pathlib
    import subprocess

    from tests.torch.torchrun import torchrun_command

    root = pathlib.Path(__file__).resolve().parents[2]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    )
    command = [*torchrun_command(), "-m", "mixlight.cli", "check", "--framework", "torch", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=root, timeout=600)


def test_a_ddp_group_under_torchrun():
    done = torchrun("--examples", "1", "--compile-backend", "none", "--dtypes", "float32")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| torch:ddp(world=2)/eager:fast:mov |" in done.stdout
    assert done.stdout.count("every path equals the loop reference") == 2  # both processes


def test_a_wrong_backward_fails_every_process_together_under_torchrun():
    kind = "tests.torch.check_devices_planted:PlantedBiases"
    done = torchrun("--examples", "5", "--compile-backend", "none", "--kind", kind)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.count("a path differs") == 2  # both processes, neither hanging
    assert "torch:ddp(world=2)/eager:fast:planted_biases" in done.stderr
