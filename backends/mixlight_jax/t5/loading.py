"""``from_pretrained``: an NNX T5 from a HuggingFace checkpoint directory."""

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .checkpoint import CheckpointError, checkpoint_directory, read_config, read_state_dict
from .config import T5Config
from .model import T5EncoderModel, T5ForConditionalGeneration
from .paths import hf_state_key

_EMBEDDING_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_UNUSED_BY_HF = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def from_pretrained(
    path: str | Path, dtype: jnp.dtype = jnp.float32, *, encoder_only: bool | None = None
) -> T5ForConditionalGeneration | T5EncoderModel:
    """Load ``config.json`` and weights from a HF T5 checkpoint directory, parameters in ``dtype``.

    ``encoder_only=None`` picks :class:`T5EncoderModel` when ``config.json`` says
    ``"architectures": ["T5EncoderModel"]``. A tied config whose checkpoint has an
    ``lm_head.weight`` different from ``shared.weight`` is loaded untied, as HF does.

    Raises ``FileNotFoundError`` (directory, config or weights missing), ``T5ConfigError``
    (not a T5 config; names the field) and ``CheckpointError`` (missing, unexpected or
    wrongly shaped weights; names the key and both shapes, in HF's ``[out, in]`` layout).
    """
    directory = checkpoint_directory(path)
    raw_config = read_config(directory)
    config = T5Config.from_dict(raw_config)
    state_dict = _with_single_embedding(read_state_dict(directory))
    if encoder_only is None:
        encoder_only = raw_config.get("architectures") == ["T5EncoderModel"]
    model_class: type[T5EncoderModel | T5ForConditionalGeneration]
    if encoder_only:
        model_class = T5EncoderModel
    else:
        model_class = T5ForConditionalGeneration
        config = _untie_distinct_lm_head(config, state_dict)
    abstract_model = nnx.eval_shape(lambda: model_class(config, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract_model)
    used_keys = set()
    for param_path, variable in nnx.to_flat_state(state):
        key, transposed = hf_state_key(tuple(map(str, param_path)))
        variable.set_value(_converted(state_dict, key, variable.get_value(), transposed))
        used_keys.add(key)
    unused_keys = set(state_dict) - used_keys
    if encoder_only:
        unused_keys = {key for key in unused_keys if not key.startswith("decoder.")}
    _check_unexpected(unused_keys, lm_head_unused=encoder_only or config.tie_word_embeddings)
    model = nnx.merge(graphdef, state)
    # As HF's ``name_or_path``: saved adapters record it as the base model's name, the same
    # string torch records for the same checkpoint path.
    model.name_or_path = str(path)
    return model


def _with_single_embedding(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Ensure ``shared.weight`` exists and that ``*.embed_tokens.weight`` copies equal it."""
    state_dict = dict(state_dict)
    if "shared.weight" not in state_dict and _EMBEDDING_COPIES[0] in state_dict:
        state_dict["shared.weight"] = state_dict[_EMBEDDING_COPIES[0]]
    for key in _EMBEDDING_COPIES:
        if key in state_dict and "shared.weight" in state_dict:
            if not _same(state_dict[key], state_dict["shared.weight"]):
                raise CheckpointError(
                    f"weight {key!r} differs from 'shared.weight': "
                    "separate embeddings are unsupported"
                )
            del state_dict[key]
    return state_dict


def _untie_distinct_lm_head(config: T5Config, state_dict: dict[str, Any]) -> T5Config:
    """``config`` untied when it says tied but ``lm_head.weight`` differs from ``shared.weight``."""
    lm_head = state_dict.get("lm_head.weight")
    if not config.tie_word_embeddings or lm_head is None:
        return config
    if "shared.weight" in state_dict and _same(lm_head, state_dict["shared.weight"]):
        return config
    return dataclasses.replace(config, tie_word_embeddings=False)


def _same(a: Any, b: Any) -> bool:
    """Equal shapes and values."""
    return a.shape == b.shape and bool(jnp.array_equal(jnp.asarray(a), jnp.asarray(b)))


def _converted(
    state_dict: dict[str, Any], key: str, abstract: jax.ShapeDtypeStruct, transposed: bool
) -> jax.Array:
    """``state_dict[key]`` checked against HF's shape for ``abstract``, as an NNX array."""
    expected = tuple(reversed(abstract.shape)) if transposed else tuple(abstract.shape)
    if key not in state_dict:
        raise CheckpointError(f"missing weight {key!r} (expected shape {expected})")
    array = state_dict[key]
    if tuple(array.shape) != expected:
        raise CheckpointError(
            f"weight {key!r}: expected shape {expected}, found {tuple(array.shape)}"
        )
    array = jnp.asarray(array)
    return (array.T if transposed else array).astype(abstract.dtype)


def _check_unexpected(unused_keys: set[str], lm_head_unused: bool) -> None:
    """Raise on unused keys, except HF's known-unused ones and ``lm_head.weight`` when
    ``lm_head_unused`` (encoder-only, or tied and equal to ``shared.weight``)."""

    def ignorable(key: str) -> bool:
        return key in _UNUSED_BY_HF or (lm_head_unused and key == "lm_head.weight")

    unexpected = sorted(key for key in unused_keys if not ignorable(key))
    if unexpected:
        raise CheckpointError(
            f"unexpected weights (config does not match checkpoint): {unexpected[:5]}"
        )
