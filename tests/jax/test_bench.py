"""The JAX benchmark cases (6: sites, 8: NNX T5 training step) on tiny shapes: compared
implementations compute the same numbers. No speed assertions: those live in
``benchmarks/RESULTS.md``."""

from __future__ import annotations

import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")
torch = pytest.importorskip("torch")

import benchmarks.cases as cases  # noqa: E402
import mixlight as ml  # noqa: E402
import mixlight.extend as mlx  # noqa: E402
from benchmarks.impl import check_same  # noqa: E402
from mixlight import fast_ops  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def t5_group():
    """Case 8's one group at ``--quick`` shapes (built once: each step compiles)."""
    groups, shapes = cases.CASES[8].build(True, CPU)
    assert "naive-mov-10" in shapes and len(groups) == 1
    return groups[0]


def test_case_6_pairs_agree():
    groups, _ = cases.CASES[6].build(True, CPU)
    pairs = [pair for g in groups for pair in g.same]
    assert {pair[:2] for pair in pairs} == {("fused", "unfused"), ("fused", "loop")}
    assert sum(check_same(g) for g in groups) == sum(len(keys) for _, _, keys in pairs)


def test_case_8_naive_and_fused_mov_agree(t5_group):
    """Loss and every adapter gradient of the fused MoV-10 step equal plain autodiff's."""
    (pair,) = t5_group.same
    assert pair[:2] == ("mov-10", "naive-mov-10")
    assert "out" in pair[2] and len(pair[2]) > 1  # the loss and the gradients
    assert check_same(t5_group) == len(pair[2])


def test_case_8_methods_start_from_the_same_loss(t5_group):
    """Every adapter is the identity at initialisation, so all losses equal."""
    losses = {name: float(impl.step()["out"]) for name, impl in t5_group.impls.items()}
    assert set(losses) == {"ia3", "mov-10", "naive-mov-10", "lora-r40", "molora-10-r4"}
    assert max(losses.values()) - min(losses.values()) < 1e-4 * abs(losses["ia3"])


def test_naive_mov_step_runs_without_the_fused_op(t5_group):
    """The naive step really is plain autodiff: it keeps the merged vectors (more residual
    bytes than the fused op, which recomputes them), and the fused op serves MoV after it."""
    impls = t5_group.impls
    assert impls["naive-mov-10"].saved_bytes() > impls["mov-10"].saved_bytes()
    (spec,) = mlx.plan_sites(ml.MoV(10, targets=[r"a\.k"]), {"a.k": mlx.ModuleShape(8, 8)})
    assert fast_ops.resolve_fast_op(spec, "jax").name == "mov"
