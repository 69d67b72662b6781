"""Decoder inputs from labels, as HF's ``T5PreTrainedModel._shift_right``.

Teacher forcing feeds position ``t`` the token of position ``t - 1``, so the logits at ``t``
never see the label they are scored against. Feeding the labels unshifted trains the model
to copy its input (a loss near 0 that teaches nothing).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import T5Config

IGNORE_INDEX = -100
"""HF's label value for positions the loss skips; the decoder sees padding there instead."""


def shift_right(labels: jax.Array, config: T5Config) -> jax.Array:
    """``[decoder_start_token_id] + labels[:, :-1]`` with ``-100`` replaced by ``pad_token_id``.

    ``labels`` ``[batch, tgt_len]`` integer ids; the result has the same shape and dtype.
    """
    labels = jnp.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(
            f"shift_right expects labels of shape [batch, tgt_len], got shape {labels.shape}"
        )
    start = config.decoder_start_token_id
    if start is None:
        raise ValueError("shift_right needs config.decoder_start_token_id (HF T5 uses 0)")
    first = jnp.full((labels.shape[0], 1), start, labels.dtype)
    shifted = jnp.concatenate([first, labels[:, :-1]], axis=1)
    return jnp.where(
        shifted == IGNORE_INDEX, jnp.asarray(config.pad_token_id, labels.dtype), shifted
    )
