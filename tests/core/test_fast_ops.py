"""The core decides which fast op serves each site (mixlight.fast_ops), once for every
backend."""

import mixlight as ml
import mixlight.extend as mlx
from mixlight import fast_ops
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


def test_a_registered_op_goes_first_and_can_be_replaced(monkeypatch):
    monkeypatch.setattr(fast_ops, "_OPS", list(fast_ops._OPS))  # restored after the test
    fast_ops.fast_op.cache_clear()
    mlx.register_fast_op("my_mov", lambda s: s.path.endswith(".k"))
    assert ops(ml.MoV(4)) == {"k": "my_mov", "act": "mov"}
    mlx.register_fast_op("my_mov", lambda s: False)  # the same name replaces the rule
    assert ops(ml.MoV(4)) == {"k": "mov", "act": "mov"}
    fast_ops.fast_op.cache_clear()
