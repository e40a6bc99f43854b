"""Token layout of one record: its fields read, its prompt and completions encoded and packed.

Dimension letters: T tokens, P prompt tokens.

Every sequence is `[bos] + prompt + completion + [eos]`, right-padded to max_len (no bos
when the tokenizer has none, bos_id < 0). Rules:
- Truncation: the prefix `[bos] + prompt` is at most `max_prompt_len` tokens and keeps the
  END of the prompt (the part nearest the completion); then the sequence is cut at
  `max_len`, keeping the START of the completion (a cut completion loses its eos).
  `align.data.token_report` counts truncated prompts and completions, and records the
  pipeline cannot use, over a whole source.
- Encoding: by default the prompt and each completion are encoded separately. With
  `joint=True` (or a tokenizer whose `joint` attribute is true, when `joint=None`), the
  text `prompt + completion` is encoded as one, so the completion's first tokens are the
  ones the model sees after that prompt; the prompt's own tokens must be a prefix of that
  encoding, and the completion's tokens are the rest. Where they are not a prefix (a
  token spans the boundary), that completion falls back to separate encoding, and
  the token report counts it as a joint fallback. The prompt tokens are always those of
  the prompt alone, so every completion of a prompt shares one prefix and sampling starts
  from the same tokens training saw.
- EOS: appended exactly once. A completion whose text ends with the tokenizer's
  `eos_text` (when it has one) loses that text first, and a completion whose encoding
  already ends with the eos id gets no second one. The eos is a trained-on token: it is
  inside the loss mask even when the pad id equals the eos id, because masks come from
  lengths, never from the pad id.

A data kind's example function (align/data/pipeline.py, which re-exports these names) reads
its record with `text_field` / `float_field`, applies the rules above with `encode_record`,
packs each completion with `pack_sequence` (a prompt alone with `left_pad`) and counts what
was cut with `tally`. They live apart from the kinds and the batching so that a kind an
objective adds from its own file lays out tokens exactly as the built-in kinds do.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from align import errors


class TokenizerLike(Protocol):
    """What the pipeline needs; it also reads `eos_text` and `joint` when a tokenizer has them."""

    pad_id: int
    eos_id: int
    bos_id: int

    def encode(self, text: str) -> list[int]: ...


# ---------------------------------------------------------------- record fields


def get_field(record: Mapping[str, Any], name: str, index: int) -> Any:
    """record[name], as stored; a non-dict record or a missing field is an error naming both."""
    if not isinstance(record, Mapping):
        raise errors.DataError(f"record {index}: expected a dict of fields, got {type(record).__name__}")
    if name not in record:
        raise errors.DataError(
            f"record {index}: missing field {name!r} (fields present: {sorted(record)})")
    return record[name]


def _as_text(value: Any, name: str, index: int) -> str:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise errors.DataError(f"record {index}: field {name!r} is not valid UTF-8: {e}") from e
    if isinstance(value, str):
        return value
    raise errors.DataError(f"record {index}: field {name!r} must be text, got {type(value).__name__}")


def as_float(value: Any, name: str, index: int) -> float:
    """`value` (field `name` of record `index`) as a float; a non-number is an error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating, np.ndarray)):
        raise errors.DataError(
            f"record {index}: field {name!r} must be a number, got {type(value).__name__}")
    if isinstance(value, np.ndarray):
        if value.ndim != 0 or not np.issubdtype(value.dtype, np.number):
            raise errors.DataError(
                f"record {index}: field {name!r} must be a number, got array {value.dtype}{value.shape}")
        value = value.item()
    return float(value)


def as_list(value: Any, name: str, index: int) -> list[Any]:
    """`value` (field `name` of record `index`) as a list; text or a non-sequence is an error."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, np.ndarray)):
        raise errors.DataError(
            f"record {index}: field {name!r} must be a list, got {type(value).__name__}")
    return list(value)


def text_field(record: Mapping[str, Any], name: str, index: int) -> str:
    """Field `name` of record `index` as text; a missing or non-text field is an error naming both."""
    return _as_text(get_field(record, name, index), name, index)


def float_field(record: Mapping[str, Any], name: str, index: int) -> float:
    """Field `name` of record `index` as a float; a missing or non-numeric one is an error."""
    return as_float(get_field(record, name, index), name, index)


# ---------------------------------------------------------------- token layout


def check_lengths(max_len: int | None, max_prompt_len: int) -> None:
    """Errors unless 1 <= max_prompt_len < max_len (max_len None: prompts only)."""
    if max_prompt_len < 1:
        raise errors.ConfigError(
            f"max_prompt_len must be >= 1 (it counts the bos token), got {max_prompt_len}",
            key="data.max_prompt_len")
    if max_len is not None and max_len <= max_prompt_len:
        raise errors.ConfigError(
            f"max_len ({max_len}) must exceed max_prompt_len ({max_prompt_len}) so every "
            "sequence keeps at least one completion token", key="data.max_len")


def _joint(tokenizer: TokenizerLike, joint: bool | None) -> bool:
    return bool(getattr(tokenizer, "joint", False)) if joint is None else bool(joint)


def bos_ids(tokenizer: TokenizerLike) -> list[int]:
    """`[bos]`, or `[]` for a tokenizer without one."""
    # Some Hugging Face tokenizers have no bos (bos_id -1): their prompts start bare.
    return [tokenizer.bos_id] if tokenizer.bos_id >= 0 else []


def cut_prompt(tokenizer: TokenizerLike, ids: Sequence[int], max_prompt_len: int) -> list[int]:
    """`[bos] + ids`, cut from the left to at most `max_prompt_len` tokens."""
    bos = bos_ids(tokenizer)
    keep = max_prompt_len - len(bos)
    ids = list(ids)
    return bos + (ids[len(ids) - keep:] if len(ids) > keep else ids)


def prompt_ids(tokenizer: TokenizerLike, prompt: str, max_prompt_len: int) -> list[int]:
    """`[bos] + encode(prompt)`, cut from the left to at most `max_prompt_len` tokens."""
    return cut_prompt(tokenizer, tokenizer.encode(prompt), max_prompt_len)


@dataclasses.dataclass(frozen=True)
class Completion:
    """A completion's token ids (eos last, exactly once) and how they were made."""

    ids: list[int]
    joint: bool  # taken from the joint encoding of prompt + completion
    fallback: bool  # joint encoding asked for, but the prompt's tokens were not its prefix
    eos_in_text: bool  # the text already ended with the eos (text or token); not added again


def encode_completion(tokenizer: TokenizerLike, completion: str, name: str, index: int, *,
                      prompt: str = "", prompt_tokens: Sequence[int] | None = None,
                      joint: bool = False) -> Completion:
    """A completion's ids + [eos] by the module's rules; an empty one is an error naming the record."""
    eos_text = getattr(tokenizer, "eos_text", None)
    eos_in_text = bool(eos_text) and completion.endswith(eos_text)
    if eos_in_text:
        completion = completion[:-len(eos_text)]
    ids, used_joint, fallback = None, False, False
    if joint and completion.strip():
        prompt_tokens = list(tokenizer.encode(prompt) if prompt_tokens is None else prompt_tokens)
        full = list(tokenizer.encode(prompt + completion))
        n = len(prompt_tokens)
        if len(full) > n and full[:n] == prompt_tokens:
            ids, used_joint = full[n:], True
        else:
            fallback = True
    if ids is None:
        ids = list(tokenizer.encode(completion))
    if not completion.strip() or not ids:
        raise errors.DataError(f"record {index}: field {name!r} is empty (got {completion!r})")
    if ids[-1] == tokenizer.eos_id:
        eos_in_text = True
    else:
        ids = ids + [tokenizer.eos_id]
    return Completion(ids, used_joint, fallback, eos_in_text)


def completion_ids(tokenizer: TokenizerLike, completion: str, name: str, index: int, *,
                   prompt: str = "", joint: bool = False) -> list[int]:
    """`encode(completion) + [eos]` (eos once); `joint`: split from `encode(prompt + completion)`."""
    return encode_completion(tokenizer, completion, name, index, prompt=prompt, joint=joint).ids


def pack_sequence(prefix: Sequence[int], completion: Sequence[int], *, max_len: int,
                  pad_id: int) -> dict[str, np.ndarray]:
    """Right-pads `prefix + completion` to `max_len`: tokens_T, input_mask_T, loss_mask_T."""
    ids = (list(prefix) + list(completion))[:max_len]
    n, n_prefix = len(ids), min(len(prefix), max_len)
    tokens_T = np.full((max_len,), pad_id, np.int32)
    tokens_T[:n] = ids
    input_mask_T = np.zeros((max_len,), np.int32)
    input_mask_T[:n] = 1
    loss_mask_T = np.zeros((max_len,), np.int32)
    loss_mask_T[n_prefix:n] = 1
    return {"tokens": tokens_T, "input_mask": input_mask_T, "loss_mask": loss_mask_T}


def left_pad(ids: Sequence[int], *, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads `ids` to `length`: (tokens_P, mask_P)."""
    if len(ids) > length:
        raise ValueError(f"{len(ids)} tokens do not fit in {length}")
    tokens_P = np.full((length,), pad_id, np.int32)
    mask_P = np.zeros((length,), np.int32)
    if ids:
        tokens_P[length - len(ids):] = ids
        mask_P[length - len(ids):] = 1
    return tokens_P, mask_P


# ---------------------------------------------------------------- one record


def pad_value(tokenizer: TokenizerLike, pad_id: int | None) -> int:
    """`pad_id`, or the tokenizer's when None."""
    return tokenizer.pad_id if pad_id is None else int(pad_id)


def encode_record(tokenizer: TokenizerLike, index: int, prompt: str,
                  completions: Sequence[tuple[str, Any]], *, max_prompt_len: int,
                  joint: bool | None) -> tuple[list[int], list[Completion], bool]:
    """(prefix, completions, prompt was cut) for one prompt and its (name, text) completions.

    The module's rules for one record (truncation, joint encoding, eos); an example function
    of a registered kind builds on it, then packs each completion with `pack_sequence`.
    """
    tokens = list(tokenizer.encode(prompt))
    joint = _joint(tokenizer, joint)
    encoded = [encode_completion(tokenizer, _as_text(text, name, index), name, index,
                                 prompt=prompt, prompt_tokens=tokens, joint=joint)
               for name, text in completions]
    prefix = cut_prompt(tokenizer, tokens, max_prompt_len)
    if not prefix:
        raise errors.DataError(f"record {index}: the prompt is empty and the tokenizer has no "
                               "bos token, so the completion would have nothing to follow")
    return prefix, encoded, len(prefix) - len(bos_ids(tokenizer)) < len(tokens)


def tally(stats: dict | None, prefix: Sequence[int], completions: Sequence[Completion],
          prompt_cut: bool, max_len: int) -> None:
    """Adds one record's truncation and encoding counts to `stats` (see align.data.token_report)."""
    if stats is None:
        return
    stats["prompts_truncated"] += int(prompt_cut)
    for c in completions:
        stats["completions"] += 1
        stats["completions_truncated"] += int(len(prefix) + len(c.ids) > max_len)
        stats["joint_fallbacks"] += int(c.fallback)
        stats["eos_in_text"] += int(c.eos_in_text)
        stats["completion_tokens_max"] = max(stats["completion_tokens_max"], len(c.ids))
