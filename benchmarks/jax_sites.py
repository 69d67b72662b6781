"""Case 6: the JAX rows of cases 1 and 2, each step one ``jax.jit``-compiled forward + backward.

The same shapes and implementations as :mod:`benchmarks.sites`: MoV site (fused
``custom_vjp`` op, autodiff through :mod:`mixlight.math`, an (IA)³ site) and MoLoRA site
(fused op with its token router inside against one LoRA of rank ``E*r``, and in a second
group against a per-expert loop). *Saved for
backward* counts the distinct buffers among the residuals of an eager ``jax.vjp``, excluding
the weights' own buffers, as the torch rows exclude parameters. It is an upper bound on what a
jitted step keeps: XLA may share a buffer that eager residuals hold twice (the loop's ``x``,
kept by the router and by each expert).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.impl import Group, Pairs
from benchmarks.sites import MOLORA_SCALE
from mixlight.math import mix_vectors, router_logits, router_probs
from mixlight_jax.ops import fused_mov, fused_routed_molora


@dataclass
class JaxImpl:
    """One implementation: ``fn(*args) -> out``, differentiated for ``names`` (the first
    ``len(names)`` arguments) against the output gradient ``g_out``; ``weights`` index the
    arguments that live anyway (their buffers are left out of the saved bytes)."""

    fn: Callable[..., jax.Array]
    args: Sequence[jax.Array]
    names: Sequence[str]
    g_out: jax.Array
    weights: Sequence[int] = ()

    def __post_init__(self) -> None:
        def step(args, g_out):
            out, vjp = jax.vjp(self.fn, *args)
            return out, vjp(g_out)

        self._step = jax.jit(step)

    def step(self) -> dict[str, jax.Array]:
        out, grads = jax.block_until_ready(self._step(tuple(self.args), self.g_out))
        return {"out": out, **dict(zip(self.names, grads, strict=True))}

    def saved_bytes(self) -> int:
        """Bytes of the distinct ``jax.vjp`` residual buffers, weights excluded."""
        _, vjp = jax.vjp(self.fn, *self.args)
        return residual_bytes(vjp, [self.args[i] for i in self.weights])


def residual_bytes(vjp: Callable[..., Any], exclude: Iterable[jax.Array]) -> int:
    """Bytes of the distinct buffers among the residuals a ``jax.vjp`` function holds,
    leaving out those of ``exclude`` (arrays that live anyway: weights, inputs)."""
    skip = {a.unsafe_buffer_pointer() for a in exclude}
    seen: dict[int, int] = {}
    for leaf in jax.tree.leaves(vjp):
        if isinstance(leaf, jax.Array) and leaf.unsafe_buffer_pointer() not in skip:
            seen[leaf.unsafe_buffer_pointer()] = leaf.size * leaf.dtype.itemsize
    return sum(seen.values())


def _randn(key: jax.Array, shape: tuple[int, ...], std: float = 1.0, mean: float = 0.0):
    return jax.random.normal(key, shape, jnp.float32) * std + mean


def mov_group(tokens: int, d: int, n_experts: int, seed: int = 0) -> Group:
    """Case 1 in JAX at one expert count; baseline ``ia3``."""
    k = jax.random.split(jax.random.key(seed), 4)
    h, g_out = _randn(k[0], (tokens, d)), _randn(k[3], (tokens, d))
    w = _randn(k[1], (d, n_experts), std=0.1)
    v = _randn(k[2], (n_experts, d), std=0.1, mean=1.0)
    names = ("h", "router", "v")
    impls = {
        "ia3": JaxImpl(lambda h, v: h * v, (h, v[0]), ("h", "v"), g_out, (1,)),
        "unfused": JaxImpl(
            lambda h, w, v: mix_vectors(h, router_probs(router_logits(h, w)), v),
            (h, w, v),
            names,
            g_out,
            (1, 2),
        ),
        "fused": JaxImpl(lambda h, w, v: fused_mov(h, w, v)[0], (h, w, v), names, g_out, (1, 2)),
    }
    same: Pairs = [("fused", "unfused", ("out", "h", "router", "v"))]
    return Group(f"MoV E={n_experts}", "ia3", impls, same)


def _loop_molora(x, w, lora_A, lora_B):
    probs = router_probs(router_logits(x, w))
    out = jnp.zeros((), x.dtype)
    for e in range(lora_A.shape[0]):
        out = out + probs[:, e : e + 1] * ((x @ lora_A[e]) @ lora_B[e])
    return out * MOLORA_SCALE


def molora_groups(tokens: int, d: int, n_experts: int, rank: int, seed: int = 0) -> list[Group]:
    """Case 2 in JAX at one expert count: ``fused`` against ``lora`` (rank ``E*r``), then
    against ``loop`` in a group of its own. Timed together, the step after ``loop`` (whose
    temporaries run to ~1 GB at E=16) was ~70 ms slower than alone whichever step it was, and
    the rotation puts ``fused`` there in two rounds of three."""
    k = jax.random.split(jax.random.key(seed), 5)
    x, g_out = _randn(k[0], (tokens, d)), _randn(k[4], (tokens, d))
    w = _randn(k[1], (d, n_experts), std=0.1)
    a = _randn(k[2], (n_experts, d, rank), std=0.02)
    b = _randn(k[3], (n_experts, rank, d), std=0.02)
    a_cat = np.asarray(a).transpose(1, 0, 2).reshape(d, n_experts * rank)
    b_cat = np.asarray(b).reshape(n_experts * rank, d) / n_experts
    names = ("x", "router", "lora_A", "lora_B")
    lora = JaxImpl(
        lambda x, a, b: (x @ a) @ b * MOLORA_SCALE,
        (x, jnp.asarray(a_cat), jnp.asarray(b_cat)),
        ("x", "lora_A", "lora_B"),
        g_out,
        (1, 2),
    )
    loop = JaxImpl(_loop_molora, (x, w, a, b), names, g_out, (1, 2, 3))
    fused = JaxImpl(
        lambda *t: fused_routed_molora(*t, MOLORA_SCALE)[0], (x, w, a, b), names, g_out, (1, 2, 3)
    )
    same: Pairs = [("fused", "loop", ("out", "x", "router", "lora_A", "lora_B"))]
    label = f"MoLoRA E={n_experts}"
    return [
        Group(label, "lora", {"lora": lora, "fused": fused}),
        Group(f"{label} vs loop", "loop", {"loop": loop, "fused": fused}, same),
    ]
