"""Hugging Face `tokenizer.json` tokenizers behind the interface of align's SentencePiece Tokenizer.

Dimension letters: none (token ids are plain lists here).
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import tokenizers

from align import errors
from align.data.tokenizer import Tokenizer

TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
_KINDS = ("eos", "pad", "bos", "unk")
# Where HF checkpoints keep special tokens, most specific first.
_SOURCES = ("tokenizer_config.json", "special_tokens_map.json", "config.json")


class HFTokenizer:
    """A `tokenizers` tokenizer with special ids from the files beside it; pad may equal eos."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, eos_id: int, pad_id: int,
                 bos_id: int = -1, unk_id: int = -1, path: str = "<memory>"):
        # Fixed-shape batches are made by the data pipeline; padding or truncation stored in
        # the file would silently change encode's output.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tok = tokenizer
        self.eos_id, self.pad_id, self.bos_id, self.unk_id = eos_id, pad_id, bos_id, unk_id
        self.path = path

    @classmethod
    def load(cls, path: str, **special: str | int | None) -> "HFTokenizer":
        """Loads `tokenizer.json` (or a directory holding it) with special ids from its siblings."""
        # `special` may set eos/pad/bos/unk (a token string or an id); otherwise the first of
        # tokenizer_config.json, special_tokens_map.json and config.json that sets one wins.
        unknown = sorted(set(special) - set(_KINDS))
        if unknown:
            raise ValueError(f"HFTokenizer.load: unknown special token kind(s) {unknown}; "
                             f"valid: {list(_KINDS)}")
        file = os.path.join(path, TOKENIZER_JSON) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"tokenizer file not found: {file}")
        try:
            with open(file, encoding="utf-8") as f:
                text = f.read()
            model = json.loads(text).get("model") or {}
            tokenizer = tokenizers.Tokenizer.from_str(text)
        except Exception as e:  # tokenizers reports parse errors as a plain Exception
            raise errors.DataError(
                f"tokenizer file {file} is corrupt or not a tokenizer.json: {e}") from e
        directory = os.path.dirname(os.path.abspath(file))
        ids = {kind: _special_id(tokenizer, kind, special.get(kind), directory, file, model)
               for kind in _KINDS}
        if ids["eos"] < 0:
            raise errors.DataError(
                f"no eos token for {file}: set eos_token in {' or '.join(_SOURCES[:2])}, "
                f"eos_token_id in config.json (all in {directory}), or pass eos=")
        pad = ids["eos"] if ids["pad"] < 0 else ids["pad"]
        return cls(tokenizer, eos_id=ids["eos"], pad_id=pad, bos_id=ids["bos"],
                   unk_id=ids["unk"], path=file)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without bos/eos; special-token strings in it map to their ids."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; special ids decode to nothing, callers cut at eos."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"HFTokenizer(path={self.path!r}, vocab_size={self.vocab_size})"


def _token_id(tokenizer, value: Any, where: str) -> int:
    if isinstance(value, dict):  # a serialised AddedToken
        value = value.get("content")
    if isinstance(value, list):  # config.json may list several eos ids; the first is canonical
        value = value[0] if value else None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise errors.DataError(f"{where}: expected a token string or id, got {value!r}")
    if isinstance(value, str):
        token_id = tokenizer.token_to_id(value)
        if token_id is None:
            raise errors.DataError(f"{where}: token {value!r} is not in the tokenizer's vocabulary")
        return token_id
    if not 0 <= value < tokenizer.get_vocab_size(with_added_tokens=True):
        raise errors.DataError(f"{where}: id {value} is outside the vocabulary "
                               f"[0, {tokenizer.get_vocab_size(with_added_tokens=True)})")
    return int(value)


def _special_id(tokenizer, kind: str, explicit, directory: str, file: str, model: dict) -> int:
    """The id of one special token from the first source that sets it, or -1."""
    if explicit is not None:
        return _token_id(tokenizer, explicit, f"HFTokenizer.load({kind}=...)")
    for source in _SOURCES:
        path = os.path.join(directory, source)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise errors.DataError(f"{path} is not valid JSON: {e}") from e
        key = f"{kind}_token_id" if source == "config.json" else f"{kind}_token"
        if isinstance(data, dict) and data.get(key) not in (None, [], ""):
            return _token_id(tokenizer, data[key], f"{path}: {key}")
    if kind == "unk" and model.get("unk_token") is not None:
        return _token_id(tokenizer, model["unk_token"], f"{file}: model.unk_token")
    if kind == "unk" and model.get("unk_id") is not None:
        return _token_id(tokenizer, model["unk_id"], f"{file}: model.unk_id")
    return -1


def load_tokenizer(path: str) -> Tokenizer | HFTokenizer:
    """A SentencePiece `.model` or an HF `tokenizer.json`, or a directory holding one of them."""
    # A directory holding both gives the tokenizer.json: it carries the normaliser, added
    # tokens and special tokens that transformers itself uses for the checkpoint.
    if os.path.isdir(path):
        for name in (TOKENIZER_JSON, SENTENCEPIECE_MODEL):
            if os.path.isfile(os.path.join(path, name)):
                return load_tokenizer(os.path.join(path, name))
        raise FileNotFoundError(f"no {TOKENIZER_JSON} or {SENTENCEPIECE_MODEL} in {path}")
    if path.endswith(".json"):
        return HFTokenizer.load(path)
    if path.endswith(".model"):
        return Tokenizer.load(path)
    raise errors.ConfigError(f"unknown tokenizer file {path}: expected a SentencePiece .model or a "
                             f"{TOKENIZER_JSON}", key="data.tokenizer_path")
