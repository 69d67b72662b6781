"""Compact T5 in Flax NNX whose module paths mirror HuggingFace's torch T5.

Joining an NNX path with ``"."`` gives HF's module name
(``encoder.block.0.layer.0.SelfAttention.k``), so adapters can replace submodules in place;
forward code always calls submodules.
"""

from .activations import ACTIVATIONS, Activation
from .attention import (
    T5Attention,
    T5LayerCrossAttention,
    T5LayerSelfAttention,
    relative_position_bucket,
)
from .checkpoint import CheckpointError
from .config import T5Config, T5ConfigError
from .dropout import set_dropout, set_gradient_checkpointing
from .generate import greedy_generate
from .layers import T5DenseActDense, T5DenseGatedActDense, T5LayerFF, T5LayerNorm
from .loading import from_pretrained
from .model import T5EncoderModel, T5ForConditionalGeneration
from .paths import hf_state_key, module_paths
from .shift import shift_right
from .stack import DecoderCache, LayerCache, T5Block, T5Stack

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "CheckpointError",
    "DecoderCache",
    "LayerCache",
    "T5Attention",
    "T5Block",
    "T5Config",
    "T5ConfigError",
    "T5DenseActDense",
    "T5DenseGatedActDense",
    "T5EncoderModel",
    "T5ForConditionalGeneration",
    "T5LayerCrossAttention",
    "T5LayerFF",
    "T5LayerNorm",
    "T5LayerSelfAttention",
    "T5Stack",
    "from_pretrained",
    "greedy_generate",
    "hf_state_key",
    "module_paths",
    "relative_position_bucket",
    "set_dropout",
    "set_gradient_checkpointing",
    "shift_right",
]
