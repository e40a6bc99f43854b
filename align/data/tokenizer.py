"""SentencePiece tokenizer with fixed special ids (pad 0, eos 1, bos 2, unk 3).

Dimension letters: none (token ids are plain lists here).

Besides encode/decode and the special ids, a tokenizer carries two things the pipeline's
tokenization rules read (align/data/encoding.py): `eos_text`, the eos piece as text
("</s>"), so a completion that already ends with it gets no second eos; and `joint`,
whether prompt and completion are encoded as one text (set per data source by
align/data/sources.py; False unless asked for).
"""
from __future__ import annotations

import io
import os
import uuid
from typing import Callable, Iterable, Sequence

import sentencepiece as spm

from align import errors

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
_SUFFIX = ".model"


class Tokenizer:
    """Thin wrapper over a SentencePiece model: encode/decode and special ids."""

    def __init__(self, processor: spm.SentencePieceProcessor, path: str = "<memory>", *,
                 joint: bool = False):
        self._sp = processor
        self.path = path
        self.joint = bool(joint)

    @classmethod
    def train(
            cls,
            lines: Iterable[str],
            path_prefix: str,
            *,
            vocab_size: int,
            model_type: str = "unigram",
            character_coverage: float = 1.0,
    ) -> "Tokenizer":
        """Trains on in-memory lines and writes `<path_prefix>.model` atomically.

        character_coverage < 1 lets the rarest characters map to unk, so that a corpus with
        more distinct characters than vocab_size (public text) still trains.
        """
        if model_type not in ("unigram", "bpe", "char", "word"):
            raise errors.ConfigError(
                    f"model_type must be one of unigram, bpe, char, word; got {model_type!r}",
                    key="data.tokenizer_type",
            )
        # Reading the whole iterator up front gives a clear error on an empty corpus
        # and makes training independent of how `lines` is produced.
        corpus = [str(line) for line in lines if str(line).strip()]
        if not corpus:
            raise errors.DataError(f"no non-empty lines to train the tokenizer {path_prefix}{_SUFFIX}")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                    sentence_iterator=iter(corpus),
                    model_writer=model,
                    vocab_size=vocab_size,
                    model_type=model_type,
                    pad_id=PAD_ID,
                    eos_id=EOS_ID,
                    bos_id=BOS_ID,
                    unk_id=UNK_ID,
                    # Determinism: use every sentence, in order, on one thread.
                    input_sentence_size=0,
                    shuffle_input_sentence=False,
                    num_threads=1,
                    # Identity normalisation so decode(encode(text)) gives the text the
                    # gold reward scored; by default every character of the corpus gets a piece.
                    normalization_rule_name="identity",
                    character_coverage=character_coverage,
                    minloglevel=2,
            )
        except RuntimeError as e:
            raise errors.DataError(
                    f"training the tokenizer {path_prefix}{_SUFFIX} failed "
                    f"(vocab_size={vocab_size}, model_type={model_type}, {len(corpus)} lines): {e}"
            ) from e
        path = path_prefix + _SUFFIX
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        # A killed run leaves only the temp file behind, never a truncated model.
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(model.getvalue())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return cls.load(path)

    @classmethod
    def load(cls, path: str, *, joint: bool = False) -> "Tokenizer":
        """Loads a `.model` file; names the path if it is missing or corrupt."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer model not found: {path}")
        with open(path, "rb") as f:
            proto = f.read()
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(proto)
        except (RuntimeError, OSError, TypeError) as e:
            raise errors.DataError(
                f"tokenizer model {path} is corrupt or not a SentencePiece model: {e}") from e
        if processor.GetPieceSize() == 0:
            raise errors.DataError(f"tokenizer model {path} is corrupt: it has an empty vocabulary")
        return cls(processor, path, joint=joint)

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    @property
    def pad_id(self) -> int:
        return self._sp.pad_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def eos_text(self) -> str:
        """The eos piece as text; SentencePiece encodes this text as characters, not as eos."""
        return self._sp.IdToPiece(self.eos_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without bos or eos."""
        return self._sp.EncodeAsIds(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; special ids decode to nothing, callers cut at eos."""
        return self._sp.DecodeIds([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"Tokenizer(path={self.path!r}, vocab_size={self.vocab_size}, joint={self.joint})"


def get_or_train_tokenizer(
        path: str,
        lines_fn: Callable[[], Iterable[str]],
        *,
        vocab_size: int,
        model_type: str = "unigram",
        character_coverage: float = 1.0,
) -> Tokenizer:
    """Loads `path` (a `.model` file) if it exists, else trains it from `lines_fn()`."""
    if not path.endswith(_SUFFIX):
        raise errors.ConfigError(f"tokenizer path must end in {_SUFFIX!r}, got {path!r}",
                                 key="data.tokenizer_path")
    if os.path.exists(path):
        tok = Tokenizer.load(path)
        if tok.vocab_size != vocab_size:
            raise errors.ConfigError(
                    f"tokenizer {path} has vocab_size {tok.vocab_size} but {vocab_size} was "
                    "asked for; delete the file or point to another path",
                    key="data.vocab_size",
            )
        return tok
    return Tokenizer.train(
            lines_fn(), path[: -len(_SUFFIX)], vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage,
    )
