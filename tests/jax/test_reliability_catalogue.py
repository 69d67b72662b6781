"""The catalogue of bad inputs, JAX part: the model cases of
``tests/core/test_reliability_catalogue.py`` on Flax NNX modules."""

from __future__ import annotations

import pytest

import mixlight as ml

pytest.importorskip("jax")
pytest.importorskip("flax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from mixlight_jax import AdapterParam  # noqa: E402
from tests.core.test_reliability_catalogue import (  # noqa: E402
    Case,
    Kit,
    check_case,
    check_refused_loads_change_nothing,
    model_cases,  # noqa: E402
)


class Block(nnx.Module):
    def __init__(self, width: int, rngs: nnx.Rngs) -> None:
        self.n_heads = 2
        self.k, self.v = nnx.Linear(width, width, rngs=rngs), nnx.Linear(width, width, rngs=rngs)
        self.wi, self.wo = nnx.Linear(width, 16, rngs=rngs), nnx.Linear(16, width, rngs=rngs)
        self.act = Relu()

    def __call__(self, x):
        return self.wo(self.act(self.wi(self.k(x) + self.v(x))))


class Relu(nnx.Module):
    def __call__(self, x):
        return jax.nn.relu(x)


class Model(nnx.Module):
    def __init__(self, seed: int, width: int) -> None:
        rngs = nnx.Rngs(seed)
        self.layers = nnx.List([Block(width, rngs), Block(width, rngs)])

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def poison(m: nnx.Module) -> nnx.Module:
    for _, p in nnx.iter_graph(m):
        if isinstance(p, AdapterParam):
            p.set_value(jnp.full(p[...].shape, jnp.nan, p[...].dtype))
    return m


KIT = Kit(
    "jax",
    lambda seed=0, width=8: Model(seed, width),
    lambda: nnx.Linear(8, 8, rngs=nnx.Rngs(0)),
    poison,
    "torch",
    lambda m: (nnx.graphdef(m), jax.tree.map(jnp.shape, nnx.state(m))),
)


def nested_checkpoint(tmp):
    (tmp / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    return tmp


CASES: list[Case] = model_cases(KIT) + [
    Case(
        "jax: load_model of a config.json nested 100000 deep",
        lambda t: ml.load_model(nested_checkpoint(t), backend="jax"),
        ValueError,
        r"config\.json is not a readable JSON file \(JSON nested too deeply\)",
        "copy the checkpoint again",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_a_clear_error(case, tmp_path):
    check_case(case, tmp_path)


def test_a_refused_load_changes_nothing(tmp_path):
    check_refused_loads_change_nothing(KIT, tmp_path)
