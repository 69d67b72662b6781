"""PEFT's adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``) in numpy:
read PEFT (IA)³ and LoRA adapters as mixlight experts, and write one-expert mixlight adapters
in PEFT's layout. Backend-neutral (numpy; weights are read by
:mod:`mixlight._safetensors_floats`, bf16, f16 and f64 upcast to float32); the model-facing
functions are in :mod:`mixlight._peft.api`.

The correspondence (PEFT 0.21 keys, ``P`` a module path; mixlight arrays from
:mod:`mixlight.experts`):

* (IA)³, ``base_model.model.P.ia3_l`` ``[d_out, 1]`` scales P's output:
  ``P.vectors[e] = ia3_l[:, 0]``.
* (IA)³ on a PEFT *feed-forward* module, ``ia3_l`` ``[1, d_in]`` scales P's input: the
  mixlight site at P that adapts its input, ``Site(P, Vectors(), tensor="input")``, with
  ``P.vectors[e] = ia3_l[0, :]`` (Llama's ``mlp.down_proj``, GPT-2's ``mlp.c_proj``, BERT's
  ``output.dense``: the mixlight presets' FFN site of those families). T5 keeps its own
  layout: ``X.DenseReluDense.wo``'s input is ``X.DenseReluDense.act``'s output (times
  ``wi_1``'s in gated T5, and elementwise scaling commutes with that product), the mixlight
  T5 presets' FFN site, so ``wo`` maps to ``act`` both ways.
* LoRA, ``P.lora_A.weight`` ``[r, d_in]`` and ``P.lora_B.weight`` ``[d_out, r]``, scaling
  ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``; ``rank_pattern`` / ``alpha_pattern``
  per module): ``P.lora_A[e] = A.T``, ``P.lora_B[e] = B.T``; a one-expert import sets
  ``LowRank(r, alpha)`` with ``alpha / r`` equal to PEFT's scaling (a negative or zero
  scaling: its magnitude, or 1, with the sign or zero folded into ``lora_B``), an upcycled
  expert of another scale gets PEFT's scaling folded into ``lora_B``.

Anything that changes the forward beyond these (DoRA, biases, modules_to_save, trainable
tokens, aLoRA, other variants) is refused, naming the PEFT key or config field; so is a
directory that is not what PEFT writes (a malformed config field, a damaged weights file,
non-finite weights), and, on export, what PEFT would load with other outputs or not at all.
"""

from mixlight._peft.api import load_peft_adapter, save_peft_adapter
from mixlight._peft.exporting import peft_state, write_peft
from mixlight._peft.importing import check_upcycle, exact_pattern, fill_experts, one_expert_config
from mixlight._peft.reading import PeftAdapter, read_peft

__all__ = [
    "PeftAdapter",
    "check_upcycle",
    "exact_pattern",
    "fill_experts",
    "load_peft_adapter",
    "one_expert_config",
    "peft_state",
    "read_peft",
    "save_peft_adapter",
    "write_peft",
]
