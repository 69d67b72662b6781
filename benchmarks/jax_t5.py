"""Case 8: a whole NNX T5 training step in JAX, per adaptation method, under ``jax.jit``.

One random-weight t5-v1_1-layout model (:mod:`mixlight_jax.t5`, dropout off); each method
adapts its own clone with :func:`mixlight.inject` (seed 0, so equal configs start equal). A
step is one compiled ``value_and_grad`` of the mean token cross-entropy with respect to the
adapter parameters only (``nnx.split`` on :class:`mixlight_jax.AdapterParam`). ``naive-mov-10``
is the same MoV-10 injected with the fast ops off (:func:`mixlight.fast_ops.core_math_only`):
the core math under plain autodiff, no ``custom_vjp``, what writing MoV in JAX by hand gives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import mixlight as ml
from benchmarks.impl import Group, Pairs
from benchmarks.jax_sites import residual_bytes
from benchmarks.t5 import T5Shape
from mixlight.fast_ops import core_math_only
from mixlight_jax import AdapterParam, no_routing_trace, t5

Batch = dict[str, jax.Array]


def base_model(shape: T5Shape, seed: int = 0) -> t5.T5ForConditionalGeneration:
    """A random-weight gated-gelu T5 with untied embeddings (the v1.1 layout)."""
    config = t5.T5Config.from_dict({"model_type": "t5", **shape.config_fields()})
    return t5.T5ForConditionalGeneration(config, rngs=nnx.Rngs(seed))


def make_batch(shape: T5Shape, config: t5.T5Config, seed: int = 1) -> Batch:
    """Random ids: ``input_ids [B, src]``, ``decoder_input_ids``/``labels [B, tgt]``."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, shape.vocab, (shape.batch, shape.src_len), dtype=np.int32)
    labels = rng.integers(2, shape.vocab, (shape.batch, shape.tgt_len), dtype=np.int32)
    return {
        "input_ids": jnp.asarray(ids),
        "decoder_input_ids": t5.shift_right(jnp.asarray(labels), config),
        "labels": jnp.asarray(labels),
    }


def _loss(model: Any, batch: Batch) -> jax.Array:
    """Mean token cross-entropy of the teacher-forced logits ``[B, tgt, vocab]``."""
    logits = model(input_ids=batch["input_ids"], decoder_input_ids=batch["decoder_input_ids"])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, batch["labels"][..., None], axis=-1)
    return -jnp.mean(picked)


class JaxTrainStep:
    """One adapted model's step: ``loss, grads = value_and_grad(loss)(adapter params)``,
    compiled ahead of time. Split without routing traces (``jax.grad`` of a merged model
    cannot record them; the step does not read them)."""

    def __init__(self, model: Any, batch: Batch):
        with no_routing_trace(model):
            graphdef, params, rest = nnx.split(model, AdapterParam, ...)
        self._params, self._rest, self._batch = params, rest, batch

        def loss_of(params, rest, batch):
            return _loss(nnx.merge(graphdef, params, rest), batch)

        self._step = jax.jit(jax.value_and_grad(loss_of)).lower(params, rest, batch).compile()
        self._forward = jax.jit(loss_of)  # traced on first use, below
        self._saved = self._count_saved()

    def step(self) -> dict[str, object]:
        loss, grads = jax.block_until_ready(self._step(self._params, self._rest, self._batch))
        flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(grads)}
        return {"out": loss, **flat}

    def saved_bytes(self) -> int:
        return self._saved

    def _count_saved(self) -> int:
        """Bytes of the distinct residual buffers of ``jax.vjp`` through the jitted loss, the
        model's own weights and the batch excluded (an upper bound on what the step keeps)."""
        _, vjp = jax.vjp(lambda p: self._forward(p, self._rest, self._batch), self._params)
        return residual_bytes(vjp, jax.tree.leaves((self._params, self._rest, self._batch)))


def training_methods() -> dict[str, tuple[Callable[[], ml.AdapterConfig], Callable[[], Any]]]:
    """Case 8's methods: name -> (adapter config, the context it is injected in)."""
    plain = contextlib.nullcontext
    return {
        "ia3": (ml.IA3, plain),
        "mov-10": (lambda: ml.MoV(10), plain),
        "naive-mov-10": (lambda: ml.MoV(10), core_math_only),
        "lora-r40": (lambda: ml.LoRA(40), plain),
        "molora-10-r4": (lambda: ml.MoLoRA(10, rank=4), plain),
    }


def training_group(shape: T5Shape) -> Group:
    """Case 8: one jitted training step per method; baseline ``ia3``. ``mov-10`` and
    ``naive-mov-10`` compute the same loss and gradients."""
    base = base_model(shape)
    batch = make_batch(shape, base.config)
    impls = {}
    for name, (config, added_in) in training_methods().items():
        model = nnx.clone(base)
        with added_in():
            ml.inject(model, config(), seed=0)
        impls[name] = JaxTrainStep(model, batch)
    same: Pairs = [("mov-10", "naive-mov-10", tuple(impls["mov-10"].step()))]
    return Group("train step", "ia3", impls, same)
