"""Activation functions named as in HuggingFace's ``ACT2FN`` and the module wrapping them."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx


def _gelu_exact(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=True)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": _gelu_exact,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}
"""HF activation name -> function; ``gelu_new`` is the tanh approximation used by T5 v1.1."""


class Activation(nnx.Module):
    """Elementwise activation as a submodule (HF's ``DenseReluDense.act``).

    Being a module lets adapters replace it in place (``ff.act = Wrapper(ff.act)``).
    """

    def __init__(self, function_name: str):
        if function_name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {function_name!r}; known: {sorted(ACTIVATIONS)}")
        self.function_name = function_name

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x`` of any shape -> same shape."""
        return ACTIVATIONS[self.function_name](x)
