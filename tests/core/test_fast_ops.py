"""The core decides which fast op serves each site (mixlight.fast_ops), once for every
backend, and resolves it against a backend's implementations (declared on its plugin, or
added) into the variant an adapter keeps."""

import threading

import numpy as np
import pytest

import mixlight as ml
import mixlight.extend as mlx
from mixlight import _backend_registry, fast_ops
from mixlight.site_planning import ModuleShape, plan_sites

PATHS = ["encoder.block.0.layer.0.SelfAttention.k", "encoder.block.0.layer.1.DenseReluDense.act"]
SHAPES = {
    PATHS[0]: ModuleShape(32, 32, 4),
    PATHS[1]: ModuleShape(64, 64, None),
}


def ops(config):
    specs = plan_sites(config, SHAPES)
    return {s.path.rsplit(".", 1)[1]: fast_ops.fast_op(s) for s in specs}


def test_each_preset_gets_its_op():
    assert ops(ml.IA3()) == {"k": "scale", "act": "scale"}
    assert ops(ml.MoV(4)) == {"k": "mov", "act": "mov"}
    assert ops(ml.MoV(4, routing="sequence")) == {"k": None, "act": None}
    assert ops(ml.LoRA(2, targets=[r".*\.k"])) == {"k": "molora"}
    assert ops(ml.MoLoRA(3, rank=2, targets=[r".*\.k"])) == {"k": "routed_molora"}
    on_output = ml.AdapterConfig([ml.Site(r".*\.k", mlx.LowRank(2), router_input="output")], 3)
    assert ops(on_output) == {"k": "molora"}  # routed on the output: outside the op


def test_a_registered_op_goes_first_and_can_be_replaced():
    with fast_ops.registry_restored():
        mlx.register_fast_op("my_mov", lambda s: s.path.endswith(".k"))
        assert ops(ml.MoV(4)) == {"k": "my_mov", "act": "mov"}
        mlx.register_fast_op("my_mov", lambda s: False)  # the same name replaces the rule
        assert ops(ml.MoV(4)) == {"k": "mov", "act": "mov"}
    assert ops(ml.MoV(4)) == {"k": "mov", "act": "mov"}


def _plugin_mov(spec, params, x, h):
    return h, None, None


@pytest.fixture
def fake_backend():
    """A backend ``fake`` whose plugin declares one op, ``mov``; the registry restored."""
    plugin = mlx.BackendPlugin("fake", "numpy", "fake", lambda: None, lambda: {"mov": _plugin_mov})
    with _backend_registry._isolated_registry(), fast_ops.registry_restored():
        mlx.register_backend(plugin)
        yield "fake"


def mov_spec():
    return plan_sites(ml.MoV(4), SHAPES)[0]


def test_resolution_gives_the_plugins_op_an_added_one_or_the_core_math(fake_backend):
    spec = mov_spec()
    assert fast_ops.resolve_fast_op(spec, fake_backend) == fast_ops.FastOpVariant(
        "mov", _plugin_mov, builtin=True
    )
    assert fast_ops.resolve_fast_op(spec, "numpy") is None  # the plugin declares no ops
    assert fast_ops.resolve_fast_op(spec, "no_such_backend") is None
    lora = plan_sites(ml.LoRA(2, targets=[r".*\.k"]), SHAPES)[0]
    assert fast_ops.resolve_fast_op(lora, fake_backend) is None  # "molora": not implemented

    def added(spec, params, x, h):
        return h, None, None

    fast_ops.implement_fast_op(fake_backend, "mov", added)  # goes before the plugin's own
    assert fast_ops.resolve_fast_op(spec, fake_backend) == fast_ops.FastOpVariant(
        "mov", added, builtin=False
    )


def test_core_math_only_is_seen_by_its_own_thread_alone(fake_backend):
    spec, seen = mov_spec(), {}
    inside, checked = threading.Event(), threading.Event()

    def other_thread():
        inside.wait(10)
        seen["other"] = fast_ops.resolve_fast_op(spec, fake_backend)
        checked.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with fast_ops.core_math_only():
        inside.set()
        checked.wait(10)
        seen["inside"] = fast_ops.resolve_fast_op(spec, fake_backend)
    thread.join(10)
    assert seen["inside"] is None
    assert seen["other"] is not None and seen["other"].name == "mov"
    assert fast_ops.resolve_fast_op(spec, fake_backend) is not None


def test_core_math_only_ends_with_its_block_on_error(fake_backend):
    with pytest.raises(RuntimeError), fast_ops.core_math_only():
        assert fast_ops.resolve_fast_op(mov_spec(), fake_backend) is None
        raise RuntimeError
    assert fast_ops.resolve_fast_op(mov_spec(), fake_backend) is not None


def test_run_site_runs_the_variant_or_the_core_math(fake_backend):
    spec = mov_spec()
    rng = np.random.default_rng(0)
    params = {n: rng.normal(size=p.shape) for n, p in spec.param_specs().items()}
    x, h = rng.normal(size=(2, 3, 32)), rng.normal(size=(2, 3, 32))
    core = fast_ops.run_site(None, spec, params, x, h)
    np.testing.assert_allclose(core.out, mlx.apply_site(spec, params, x, h).out)
    ran = fast_ops.run_site(fast_ops.resolve_fast_op(spec, fake_backend), spec, params, x, h)
    assert ran.out is h and ran.probs is None
