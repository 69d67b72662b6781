"""T5 hyper-parameters parsed from a HuggingFace ``config.json`` dict."""

import dataclasses
from collections.abc import Mapping
from typing import Any

from .activations import ACTIVATIONS

T5_MODEL_TYPES = ("t5", "mt5")
"""``model_type`` values whose architecture this package implements."""

_REQUIRED_INT_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")


class T5ConfigError(ValueError):
    """A config dict is not a (supported) T5 config; the message names the field."""


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Architecture of a T5 encoder-decoder, with HF's field names and defaults.

    ``num_decoder_layers`` defaults to ``num_layers``, ``scale_decoder_outputs`` to
    ``tie_word_embeddings`` (HF >= 5 writes it explicitly) and ``decoder_start_token_id``
    to ``pad_token_id``. ``eos_token_id`` is always a tuple (HF allows an int or a list).
    """

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    num_decoder_layers: int | None = None
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    scale_decoder_outputs: bool | None = None
    layer_norm_epsilon: float = 1e-6
    dropout_rate: float = 0.1  # applied only when a call gets a dropout key (see dropout.py)
    pad_token_id: int = 0
    eos_token_id: tuple[int, ...] = (1,)
    decoder_start_token_id: int | None = None

    def __post_init__(self):
        defaults = {
            "num_decoder_layers": self.num_layers,
            "scale_decoder_outputs": self.tie_word_embeddings,
            "decoder_start_token_id": self.pad_token_id,
        }
        for name, default in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        if isinstance(self.eos_token_id, int):
            object.__setattr__(self, "eos_token_id", (self.eos_token_id,))
        _parse_feed_forward_proj(self.feed_forward_proj)

    @property
    def is_gated_act(self) -> bool:
        """True for ``gated-*`` (v1.1 ``T5DenseGatedActDense`` with ``wi_0``/``wi_1``)."""
        return _parse_feed_forward_proj(self.feed_forward_proj)[0]

    @property
    def dense_act_fn(self) -> str:
        """HF activation name; ``gated-gelu`` means ``gelu_new`` (tanh approximation)."""
        return _parse_feed_forward_proj(self.feed_forward_proj)[1]

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "T5Config":
        """Build from a parsed ``config.json``; raises :class:`T5ConfigError` naming the field."""
        model_type = raw.get("model_type")
        if model_type not in T5_MODEL_TYPES:
            raise T5ConfigError(
                f"config field 'model_type' is {model_type!r}, expected one of {T5_MODEL_TYPES}"
            )
        for name in _REQUIRED_INT_FIELDS:
            if name not in raw:
                raise T5ConfigError(f"config field {name!r} is missing")
        for name in (*_REQUIRED_INT_FIELDS, "num_decoder_layers"):
            value = raw.get(name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value <= 0
            ):
                raise T5ConfigError(
                    f"config field {name!r} must be a positive integer, got {value!r}"
                )
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {name: raw[name] for name in fields if raw.get(name) is not None}
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = tuple(kwargs["eos_token_id"])
        return cls(**kwargs)


def _parse_feed_forward_proj(feed_forward_proj: str) -> tuple[bool, str]:
    """``"gated-gelu"`` -> ``(True, "gelu_new")``; ``"relu"`` -> ``(False, "relu")`` (as HF)."""
    parts = feed_forward_proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise T5ConfigError(
            f"config field 'feed_forward_proj' is {feed_forward_proj!r}, "
            "expected '{act}' or 'gated-{act}'"
        )
    act = "gelu_new" if feed_forward_proj == "gated-gelu" else parts[-1]
    if act not in ACTIVATIONS:
        raise T5ConfigError(
            f"config field 'feed_forward_proj' is {feed_forward_proj!r}: "
            f"unknown activation {act!r}, known: {sorted(ACTIVATIONS)}"
        )
    return len(parts) == 2, act
