"""What a benchmark case is made of: implementations under test, grouped by one setting."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from benchmarks import measure

Tensor = torch.Tensor
Pairs = list[tuple[str, str, tuple[str, ...]]]


def new_generator(seed: int, device: torch.device) -> torch.Generator:
    """A seeded generator on ``device`` (benchmarks never touch the global RNG)."""
    return torch.Generator(device=device).manual_seed(seed)


def randn(
    shape: Sequence[int], g: torch.Generator, std: float = 1.0, mean: float = 0.0, grad=False
) -> Tensor:
    """``mean + std * N(0, 1)`` on the generator's device, float32, optionally a leaf."""
    t = torch.randn(tuple(shape), generator=g, device=g.device) * std + mean
    return t.requires_grad_(grad)


@dataclass
class Impl:
    """One implementation.

    ``forward()`` builds the graph and returns the output; ``backward(out)`` returns
    ``{name: gradient}`` (None for an inference-only implementation: the step is the forward).
    ``frozen`` holds tensors that live anyway (weights), left out of the saved-bytes count.
    """

    forward: Callable[[], Tensor]
    backward: Callable[[Tensor], dict[str, Tensor]] | None = None
    frozen: Sequence[Tensor] = ()

    def step(self) -> dict[str, Tensor]:
        """One timed call: forward, then backward when there is one; ``{"out", grads...}``."""
        out = self.forward()
        grads = {} if self.backward is None else self.backward(out)
        return {"out": out.detach(), **grads}

    def saved_bytes(self) -> int | None:
        """Bytes autograd saves for backward in one forward (None without a backward)."""
        if self.backward is None:
            return None
        return measure.saved_bytes(self.forward, self.frozen)


def grads_of(inputs: Mapping[str, Tensor], g_out: Tensor | None = None):
    """A ``backward`` that returns the gradients of ``inputs`` (by name) without
    accumulating into ``.grad``; ``g_out`` is the output gradient (None: a scalar output)."""
    names, tensors = list(inputs), list(inputs.values())

    def backward(out: Tensor) -> dict[str, Tensor]:
        grads = torch.autograd.grad(out, tensors, g_out)
        return dict(zip(names, grads, strict=True))

    return backward


class Runnable(Protocol):
    """What a group times: :class:`Impl`, or another framework's implementation."""

    def step(self) -> Mapping[str, object]: ...

    def saved_bytes(self) -> int | None: ...


@dataclass
class Group:
    """Implementations compared under one setting (e.g. ``E=10``), ratios against
    ``baseline``; ``same`` lists pairs ``(a, b, keys)`` whose step results must agree."""

    label: str
    baseline: str
    impls: Mapping[str, Runnable]
    same: Pairs = field(default_factory=list)


def _as_tensor(a: object) -> Tensor:
    """A torch tensor of a result (JAX rows return jax arrays)."""
    return a if isinstance(a, Tensor) else torch.from_numpy(np.array(a))


def check_same(group: Group, rtol: float = 1e-4, atol: float = 1e-5) -> int:
    """Assert that every pair in ``group.same`` agrees (outputs and gradients, within
    tolerance; ``torch.testing.assert_close`` raises on a mismatch); the number of checks."""
    results = {name: group.impls[name].step() for pair in group.same for name in pair[:2]}
    checks = 0
    for a, b, keys in group.same:
        for key in keys:
            got, want = (_as_tensor(r[key]) for r in (results[a], results[b]))
            where = f"{group.label}: {a} vs {b}, {key}"
            torch.testing.assert_close(
                got,
                want.reshape(got.shape),
                rtol=rtol,
                atol=atol,
                msg=functools.partial("{}: {}".format, where),
            )
            checks += 1
    return checks
