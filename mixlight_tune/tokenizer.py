"""An offline SentencePiece tokenizer for the demo, trained in memory in well under a second.

Ids follow T5: pad 0, eos 1, unk 2, no bos. The sentinels ``<extra_id_0>`` ...
``<extra_id_{n-1}>`` are user-defined symbols (ids 3 ... n + 2), so ``sentinel_ids[0]`` is
``<extra_id_0>``. ``sentencepiece`` is imported only when a tokenizer is trained or loaded.
"""

from __future__ import annotations

import io
import os
import string
from collections.abc import Iterable
from pathlib import Path

from ._files import atomic_write

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
NUM_SENTINELS = 20
# Always in the character set, so prompts with unseen punctuation do not hit <unk>.
REQUIRED_CHARS = string.ascii_letters + string.digits + string.punctuation


def _sentencepiece():
    try:
        import sentencepiece
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the demo tokenizer needs sentencepiece: pip install sentencepiece"
        ) from err
    return sentencepiece


def sentinel_token(i: int) -> str:
    """The text of sentinel ``i``: ``<extra_id_i>``."""
    return f"<extra_id_{i}>"


class Tokenizer:
    """A trained SentencePiece model with T5's special ids."""

    def __init__(self, model_proto: bytes):
        """Wrap a serialized SentencePiece model (the bytes ``save`` writes)."""
        self._proto = bytes(model_proto)
        self._sp = _sentencepiece().SentencePieceProcessor(model_proto=self._proto)
        self.pad_id = self._sp.pad_id()
        self.eos_id = self._sp.eos_id()
        self.unk_id = self._sp.unk_id()
        self.sentinel_ids: list[int] = []
        while (i := self._sp.piece_to_id(sentinel_token(len(self.sentinel_ids)))) != self.unk_id:
            self.sentinel_ids.append(i)

    @property
    def vocab_size(self) -> int:
        """Number of pieces, special tokens and sentinels included."""
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` followed by EOS."""
        return [*self._sp.encode(text, out_type=int), self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, skipping pad and EOS."""
        return self._sp.decode([int(i) for i in ids if i not in (self.pad_id, self.eos_id)])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the serialized model to ``path`` atomically (temp file, then rename)."""
        return atomic_write(path, self._proto)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Read a model written by ``save`` (or any SentencePiece ``.model`` file)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer model at {path}")
        return cls(path.read_bytes())


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 512,
    path: str | os.PathLike[str] | None = None,
    num_sentinels: int = NUM_SENTINELS,
) -> Tokenizer:
    """Train a unigram SentencePiece model on ``texts`` in memory, deterministically.

    ``vocab_size`` is an upper bound: a small corpus yields fewer pieces rather than an
    error. When ``path`` is given the model is also saved there.
    """
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("train_tokenizer needs at least one non-empty text")
    model = io.BytesIO()
    _sentencepiece().SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        required_chars=REQUIRED_CHARS,
        split_digits=True,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        user_defined_symbols=[sentinel_token(i) for i in range(num_sentinels)],
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    tokenizer = Tokenizer(model.getvalue())
    if path is not None:
        tokenizer.save(path)
    return tokenizer
