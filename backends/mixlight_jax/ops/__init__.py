"""Fused, memory-lean MoV and MoLoRA ops: ``jax.custom_vjp`` with hand-written backward passes.

The forward of each op is the core math of :mod:`mixlight.math` (``router_logits``,
``router_probs``, ``mix_vectors``, ``lowrank_mixture``) on jax arrays, arranged for XLA on
CPU and equal to it up to float rounding: MoV sums ``probs @ vectors`` over E as a broadcast
product (fused with the scaling), MoLoRA scales the small ``B`` kernel rather than the
output and, with its own router on float32 ``x``, projects ``x`` onto the LoRA and router
kernels in one dot. What changes is what is kept for backward:

* :func:`fused_mov` keeps ``h``, the router kernel, the expert vectors and the ``[..., E]``
  probabilities. The merged ``[..., d]`` scaling vector (as wide as ``h``) is recomputed in
  backward, and so is the full softmax when the unrenormalised top-k backward needs it.
* :func:`fused_molora` keeps ``x``, ``probs`` and the two LoRA kernels; the ``[..., E*r]``
  low-rank activations are recomputed in backward. :func:`fused_routed_molora` also runs the
  token router on ``x``, so that ``x`` is kept once for both.

Both run under ``jax.jit``, ``vmap`` and ``grad``; routers compute in float32 (float64 under
``jax_enable_x64`` for float64 inputs), MoLoRA in ``x``'s dtype.

Layout, as the torch backend's: :mod:`.mov` (MoV), :mod:`.molora` (MoLoRA), the backward
pieces they share in :mod:`._grads`, and :mod:`._sites` (this backend's site runners by the
op names :mod:`mixlight.fast_ops` assigns, declared on its plugin).
"""

from mixlight_jax.ops._sites import implement_fast_op
from mixlight_jax.ops.molora import fused_molora, fused_routed_molora
from mixlight_jax.ops.mov import fused_mov

__all__ = ["fused_molora", "fused_mov", "fused_routed_molora", "implement_fast_op"]
