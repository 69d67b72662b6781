"""``check_on_devices("jax")`` on 4 forced CPU devices (in a subprocess: ``XLA_FLAGS`` must be
set before JAX is imported) checks what a model runs at every place: each device (the
first also eagerly), a ``data`` mesh and a ``data x model`` mesh, jitted, with the fast op
the registry picks. A custom kind's ``custom_vjp`` op whose backward is off by a factor is
caught on every place and named; a fast op with a wrong sharding rule (experts split over
``model``, softmax per shard) is caught on the ``data x model`` mesh alone; a custom kind
passes with gradients; a batch the mesh cannot split and an op that raises are reported at
once, without shrinking (counted).

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/jax/test_check_devices.py
"""

import json
import os
import subprocess
import sys
import time
from typing import ClassVar

import pytest

pytest.importorskip("jax")

PLACES = ["jax:cpu:0", "jax:cpu:1", "jax:cpu:2", "jax:cpu:3"]
MESHES = ["jax:mesh(data=4)", "jax:mesh(data=2,model=2)"]


def main() -> dict:
    """Run in a process with 4 forced CPU devices; returns what it saw."""
    import contextlib

    import attrs
    import jax
    import numpy as np
    from jax.sharding import PartitionSpec as P

    import mixlight.extend as mlx
    import mixlight_jax
    from mixlight import fast_ops
    from mixlight.math import merge_vectors
    from mixlight.site_math import route
    from mixlight.testing import (
        ConformanceError,
        PlaceError,
        check_on_devices,
        device_places,
        site_cases,
    )
    from mixlight_jax.ops._sites import BUILTIN_OPS

    @mlx.register_expert
    @attrs.frozen
    class JaxCheckBiases(mlx.ExpertKind):
        kind: ClassVar[str] = "jax_check_biases"

        def param_specs(self, num_experts, d_in, d_out):
            return {
                "biases": mlx.ParamSpec((num_experts, d_out), "zeros", axes=("expert", "embed"))
            }

        def mix(self, params, probs, x, h, heads):
            merged = merge_vectors(probs, params["biases"])
            return h + mlx.primitives_for(h).cast_like(merged, h)

        @staticmethod
        def loop_reference(params, probs, x, h, heads):
            biases, out = params["biases"], np.array(h, np.float64)
            weights = [1.0] * len(biases) if probs is None else probs
            for j in range(len(out)):
                out[j] += sum(w * biases[e][j] for e, w in enumerate(weights))
            return out

    def backward_times(factor):
        @jax.custom_vjp
        def merge(m):
            return m

        merge.defvjp(lambda m: (m, None), lambda _, g: (g * factor,))

        def op(spec, params, x, h):
            probs = logits = None
            if spec.has_router:
                probs, logits = route(spec, params["router"], h if spec.reads == "output" else x)
            return h + merge(merge_vectors(probs, params["biases"])).astype(h.dtype), probs, logits

        return op

    @contextlib.contextmanager
    def planted(name, applies, op):
        """Within the block, sites for which ``applies`` holds run ``op`` (adapters added in
        it: each check injects its own)."""
        with fast_ops.registry_restored():
            if applies is not None:
                mlx.register_fast_op(name, applies)
            mixlight_jax.implement_fast_op(name, op)
            yield

    report: dict = {"places": [p.name for p in device_places("jax")]}
    token = dict(routings=("token",), dtypes=("float32",), batches=(4, 8), seqs=(1, 2))
    kind_cases = site_cases(expert=JaxCheckBiases(), max_experts=4, **token)
    is_kind = lambda s: isinstance(s.expert, JaxCheckBiases) and s.routing == "token"  # noqa: E731

    # 1. a wrong fused backward: caught on every place, each path named
    start = time.perf_counter()
    try:
        with planted("jax_check_op", is_kind, backward_times(1.5)):
            check_on_devices("jax", examples=10, cases=kind_cases, shrink_limit=5, show=False)
    except ConformanceError as err:
        report["wrong_backward"] = {"paths": err.paths, "message": str(err)}
    report["wrong_backward_seconds"] = time.perf_counter() - start

    # 2. the same kind, op correct: passes with gradients everywhere; then on the core math
    with planted("jax_check_op", is_kind, backward_times(1.0)):
        checked = check_on_devices("jax", examples=3, cases=kind_cases, show=False)
    report["custom_op"] = list(checked)
    checked = check_on_devices("jax", examples=3, expert=JaxCheckBiases(), show=False)
    report["custom_core"] = list(checked)

    # 3. a wrong sharding rule: experts split over "model", softmax over each shard's experts
    original = BUILTIN_OPS["mov"]

    def sharded_mov(spec, params, x, h):
        mesh = jax.sharding.get_abstract_mesh()
        split = not mesh.empty and "model" in mesh.axis_names
        if not split or spec.num_experts % mesh.shape["model"] or spec.heads:
            return original(spec, params, x, h)

        def local(h, router, vectors):
            logits = h.astype(np.float32) @ router
            probs = jax.nn.softmax(logits, axis=-1)  # wrong: over this shard's experts only
            merged = jax.lax.psum(probs @ vectors, "model")
            return h * merged.astype(h.dtype), probs, logits

        routed = P("data", None, "model")
        return jax.shard_map(
            local,
            in_specs=(P("data"), P(None, "model"), P("model")),
            out_specs=(P("data"), routed, routed),
        )(h, params["router"], params["vectors"])

    mov_cases = site_cases(
        expert=mlx.Vectors(), min_experts=2, max_experts=6, reads=("output",), heads=(None,),
        **token,
    )  # fmt: skip
    try:
        with planted("mov", None, sharded_mov):  # before the backend's own "mov"
            check_on_devices("jax", examples=10, cases=mov_cases, shrink_limit=5, show=False)
    except ConformanceError as err:
        report["wrong_sharding"] = {"paths": err.paths, "message": str(err)}

    # 4. failures that are not mismatches: raised at once, never shrunk
    drawn: list[int] = []
    odd = site_cases(batches=(3,), dtypes=("float32",)).map(lambda c: drawn.append(1) or c)
    try:
        check_on_devices("jax", examples=20, cases=odd, show=False)
    except PlaceError as err:
        report["indivisible"] = {"message": str(err), "drawn": len(drawn)}
    calls: list[int] = []

    def raising(spec, params, x, h):
        calls.append(1)
        raise ValueError("planted: this op refuses its site")

    try:
        with planted("jax_check_op", is_kind, raising):
            check_on_devices("jax", examples=20, cases=kind_cases, show=False)
    except PlaceError as err:
        report["raising"] = {"message": str(err), "calls": len(calls)}
    return report


@pytest.fixture(scope="module")
def seen():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, env=env, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_places_are_every_device_and_two_meshes(seen):
    assert seen["places"] == PLACES + MESHES


def test_a_wrong_fused_backward_is_caught_on_every_place(seen):
    paths = seen["wrong_backward"]["paths"]
    op = "fast:jax_check_op"
    want = {f"jax:cpu:0/eager:{op}"} | {f"{p}/jit:{op}" for p in PLACES + MESHES}
    assert set(paths) == want
    assert all(what.startswith("grad:") for what in paths.values())
    assert f"{len(want)} of {len(want)} paths differ" in seen["wrong_backward"]["message"]


def test_a_wrong_sharding_rule_is_caught_on_the_model_mesh_alone(seen):
    paths = seen["wrong_sharding"]["paths"]
    assert list(paths) == ["jax:mesh(data=2,model=2)/jit:fast:mov"]
    assert "1 of 7 paths differ" in seen["wrong_sharding"]["message"]


def test_a_custom_kind_passes_with_gradients_on_four_devices(seen):
    op = "fast:jax_check_op"
    assert seen["custom_op"] == [f"jax:cpu:0/eager:{op}"] + [
        f"{p}/jit:{op}" for p in PLACES + MESHES
    ]
    assert seen["custom_core"] == ["jax:cpu:0/eager:core"] + [
        f"{p}/jit:core" for p in PLACES + MESHES
    ]


def test_errors_that_are_not_mismatches_surface_at_once(seen):
    indivisible = seen["indivisible"]
    assert indivisible["drawn"] == 1
    want = "jax:mesh(data=4): a batch of 3 rows cannot be split over its 4 data shards"
    assert want in indivisible["message"]
    raising = seen["raising"]
    assert raising["calls"] == 1
    assert raising["message"].startswith(
        "jax:cpu:0/eager: ValueError: planted: this op refuses its site"
    )


if __name__ == "__main__":
    print(json.dumps(main()))
