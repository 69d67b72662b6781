"""Fused, memory-lean MoV and MoLoRA ops with hand-written backward passes.

Each op computes exactly the core math of :mod:`mixlight.math` (``router_logits``,
``router_probs``, ``mix_vectors``, ``lowrank_mixture``) but keeps only its inputs and the
``[..., E]`` routing probabilities alive for backward; everything wider is recomputed:

* :func:`fused_mov` saves ``h``, the router kernel, the vectors and ``probs``; the merged
  ``[..., d]`` vector is recomputed in backward (one ``[.., E] x [E, d]`` contraction). Plain
  autograd would keep the merged vector (as wide as ``h``) and the logits besides.
* :func:`fused_molora` (external probabilities) and :func:`fused_routed_molora` (its own token
  router) save ``x``, the probabilities and the kernels; the ``[..., E*r]`` low-rank
  activations are recomputed in backward.

They also allocate as few activation-sized (``[tokens, d]``) tensors as they can, which on a
CPU costs as much as the arithmetic (fresh pages): MoV allocates one such tensor in forward and
one in backward, where the merged vector is rebuilt in the buffer of ``g_out * h`` once that
is consumed; MoLoRA adds the frozen output, the scale and the router's input gradient inside
one matrix product each.

The ops run with autocast disabled, so that forward and the backward recomputation see the
same dtypes: the router is always computed in float32 (float64 for float64 inputs), the LoRA
products in ``x``'s dtype. All are ``torch.compile(fullgraph=True)``-clean. On CUDA, with
triton installed, the soft-merge MoV runs as one Triton kernel per pass instead
(:mod:`mixlight_torch.ops.triton_mov`; ``MIXLIGHT_TRITON=0`` turns it off); the torch code
runs on every device.

Layout: :mod:`.mov` (MoV), :mod:`.molora` (MoLoRA), :mod:`.triton_mov` (the CUDA kernel,
imported only when it runs), :mod:`._sites` (this backend's site runners by the op names
:mod:`mixlight.fast_ops` assigns, declared on its plugin), the token router they share in
:mod:`._routing`, and the dtype, autocast and size policies in :mod:`._precision`. Argument
checks are shape-only and live in the core (:mod:`mixlight._op_checks`), shared with the JAX
backend.
"""

from mixlight_torch.ops._sites import implement_fast_op
from mixlight_torch.ops.molora import FusedMoLoRA, fused_molora, fused_routed_molora
from mixlight_torch.ops.mov import FusedMoV, fused_mov

__all__ = [
    "FusedMoLoRA",
    "FusedMoV",
    "fused_molora",
    "fused_mov",
    "fused_routed_molora",
    "implement_fast_op",
]
