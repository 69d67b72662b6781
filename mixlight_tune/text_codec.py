"""How an example's prompt and answer become token ids, for each kind of model.

An encoder-decoder (T5) reads the prompt and writes the answer: both are tokenised on their
own, EOS appended, as seqio tokenises T0's inputs and targets. A decoder-only (causal) LM
reads one row, the prompt followed by the answer, and is trained and scored on the answer's
tokens alone. Its row is the tokenisation of the joined text (``prompt + " " + answer``, the
space left out when the prompt ends in whitespace), split where the prompt's own tokens stop
matching, so a merge across the boundary belongs to the answer; EOS closes the answer. The
prompt keeps the tokenizer's leading special tokens (BOS) and never ends in EOS.

Both kinds produce the same :data:`~mixlight_tune.steps.Pair` (``(prompt ids, answer
ids)``); the backends join a causal pair into one row when they batch it. Truncation keeps a
prompt's first tokens (an encoder prompt's EOS stays last) and an answer's first tokens with
EOS last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Encode = Callable[[str], list[int]]
Pair = tuple[list[int], list[int]]
"""One tokenised example: ``(prompt ids, answer ids)``, each truncated (the answer ends in
EOS)."""


def truncate(ids: list[int], limit: int | None) -> list[int]:
    """The first ``limit`` ids, keeping the last one (EOS) last; all of them when it fits."""
    return ids if limit is None or len(ids) <= limit else ids[: limit - 1] + ids[-1:]


def as_encode(tokenizer_or_encode_fn: Any) -> Encode:
    """A text -> ids function from a tokenizer with ``.encode`` or a callable."""
    encode = getattr(tokenizer_or_encode_fn, "encode", tokenizer_or_encode_fn)
    if not callable(encode):
        raise TypeError("expected a tokenizer with .encode or a text -> ids function")
    return lambda text: list(encode(text))


def joined(prompt: str, answer: str) -> str:
    """The text a causal LM reads: the prompt, a space unless it ends in whitespace, the
    answer."""
    return prompt + answer if not prompt or prompt[-1].isspace() else f"{prompt} {answer}"


@dataclass(frozen=True)
class TextCodec:
    """Token ids for ``(prompt, answer)`` texts.

    ``encode``: text -> ids as the model's tokenizer encodes a whole text (T5: EOS appended;
    a causal LM's tokenizer: its leading specials, no EOS). ``causal`` marks a decoder-only
    model, whose answers are cut from the joined text and closed by ``eos_id``; its
    ``start_id`` opens a prompt that would otherwise be empty (an answer's first token needs
    a position to be predicted from).
    """

    encode: Encode
    causal: bool = False
    eos_id: int | None = None
    start_id: int | None = None

    def pair(
        self, prompt: str, answer: str, max_prompt: int | None, max_answer: int | None
    ) -> Pair:
        """``(prompt ids, answer ids)``, each within its limit (``None``: no limit)."""
        if not self.causal:
            ids = self.encode(prompt), self.encode(answer)
            return truncate(ids[0], max_prompt), truncate(ids[1], max_answer)
        whole = self._without_eos(self.encode(joined(prompt, answer)))
        alone = self._without_eos(self.encode(prompt))
        cut = 0
        while cut < min(len(alone), len(whole)) and alone[cut] == whole[cut]:
            cut += 1
        head = whole[:cut] or [self._start()]
        tail = [*whole[cut:], self._eos()]
        return head[:max_prompt] if max_prompt is not None else head, truncate(tail, max_answer)

    def _without_eos(self, ids: list[int]) -> list[int]:
        return ids[:-1] if ids and ids[-1] == self.eos_id else ids

    def _eos(self) -> int:
        if self.eos_id is None:
            raise ValueError(
                "the tokenizer has no EOS token: a causal LM's answers end in EOS; set "
                "eos_token_id in the model's config.json or the tokenizer"
            )
        return self.eos_id

    def _start(self) -> int:
        return self.start_id if self.start_id is not None else self._eos()


def codec_for(
    tokenizer_or_encode_fn: Any,
    *,
    causal: bool,
    eos_id: int | None = None,
    start_id: int | None = None,
) -> TextCodec:
    """The codec of a tokenizer (an HF tokenizer, :class:`~mixlight_tune.tokenizer.Tokenizer`
    or a text -> ids function); its own EOS and BOS ids win over ``eos_id``/``start_id``
    (the model config's)."""
    if isinstance(tokenizer_or_encode_fn, TextCodec):
        return tokenizer_or_encode_fn
    tok = tokenizer_or_encode_fn
    eos = getattr(tok, "eos_token_id", getattr(tok, "eos_id", None))
    start = getattr(tok, "bos_token_id", None)
    return TextCodec(
        as_encode(tok),
        causal=causal,
        eos_id=eos_id if eos is None else eos,
        start_id=start_id if start is None else start,
    )
