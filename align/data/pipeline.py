"""Grain pipelines: tokenize, truncate, pad and batch sft / prompt / pair / list records.

Dimension letters: B batch (per process), K responses per prompt, T tokens, P prompt tokens.

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
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Protocol, Sequence

import grain
import jax
import numpy as np


class TokenizerLike(Protocol):
    """What the pipeline needs; it also reads `eos_text` and `joint` when a tokenizer has them."""

    pad_id: int
    eos_id: int
    bos_id: int

    def encode(self, text: str) -> list[int]: ...


# ---------------------------------------------------------------- record fields


def _field(record: Mapping[str, Any], name: str, index: int) -> Any:
    if not isinstance(record, Mapping):
        raise ValueError(f"record {index}: expected a dict of fields, got {type(record).__name__}")
    if name not in record:
        raise ValueError(
            f"record {index}: missing field {name!r} (fields present: {sorted(record)})")
    return record[name]


def _as_text(value: Any, name: str, index: int) -> str:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"record {index}: field {name!r} is not valid UTF-8: {e}") from e
    if isinstance(value, str):
        return value
    raise ValueError(f"record {index}: field {name!r} must be text, got {type(value).__name__}")


def _as_float(value: Any, name: str, index: int) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating, np.ndarray)):
        raise ValueError(f"record {index}: field {name!r} must be a number, got {type(value).__name__}")
    if isinstance(value, np.ndarray):
        if value.ndim != 0 or not np.issubdtype(value.dtype, np.number):
            raise ValueError(
                f"record {index}: field {name!r} must be a number, got array {value.dtype}{value.shape}")
        value = value.item()
    return float(value)


def _as_list(value: Any, name: str, index: int) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, np.ndarray)):
        raise ValueError(f"record {index}: field {name!r} must be a list, got {type(value).__name__}")
    return list(value)


def _text(record, name, index) -> str:
    return _as_text(_field(record, name, index), name, index)


def _float(record, name, index) -> float:
    return _as_float(_field(record, name, index), name, index)


# ---------------------------------------------------------------- token layout


def check_lengths(max_len: int | None, max_prompt_len: int) -> None:
    """Errors unless 1 <= max_prompt_len < max_len (max_len None: prompts only)."""
    if max_prompt_len < 1:
        raise ValueError(f"max_prompt_len must be >= 1 (it counts the bos token), got {max_prompt_len}")
    if max_len is not None and max_len <= max_prompt_len:
        raise ValueError(
            f"max_len ({max_len}) must exceed max_prompt_len ({max_prompt_len}) so every "
            "sequence keeps at least one completion token")


def _joint(tokenizer: TokenizerLike, joint: bool | None) -> bool:
    return bool(getattr(tokenizer, "joint", False)) if joint is None else bool(joint)


def _bos(tokenizer: TokenizerLike) -> list[int]:
    # Some Hugging Face tokenizers have no bos (bos_id -1): their prompts start bare.
    return [tokenizer.bos_id] if tokenizer.bos_id >= 0 else []


def cut_prompt(tokenizer: TokenizerLike, ids: Sequence[int], max_prompt_len: int) -> list[int]:
    """`[bos] + ids`, cut from the left to at most `max_prompt_len` tokens."""
    bos = _bos(tokenizer)
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
        raise ValueError(f"record {index}: field {name!r} is empty (got {completion!r})")
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


# ---------------------------------------------------------------- per-record examples


def _pad(tokenizer: TokenizerLike, pad_id: int | None) -> int:
    return tokenizer.pad_id if pad_id is None else int(pad_id)


def _encode(tokenizer: TokenizerLike, index: int, prompt: str,
            completions: Sequence[tuple[str, Any]], *, max_prompt_len: int, joint: bool | None
            ) -> tuple[list[int], list[Completion], bool]:
    """(prefix, completions, prompt was cut) for one prompt and its (name, text) completions."""
    tokens = list(tokenizer.encode(prompt))
    joint = _joint(tokenizer, joint)
    encoded = [encode_completion(tokenizer, _as_text(text, name, index), name, index,
                                 prompt=prompt, prompt_tokens=tokens, joint=joint)
               for name, text in completions]
    prefix = cut_prompt(tokenizer, tokens, max_prompt_len)
    if not prefix:
        raise ValueError(f"record {index}: the prompt is empty and the tokenizer has no bos "
                         "token, so the completion would have nothing to follow")
    return prefix, encoded, len(prefix) - len(_bos(tokenizer)) < len(tokens)


def _tally(stats: dict | None, prefix: Sequence[int], completions: Sequence[Completion],
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


def sft_example(index: int, record: Mapping[str, Any], tokenizer: TokenizerLike, *,
                max_len: int, max_prompt_len: int, pad_id: int | None = None,
                joint: bool | None = None, stats: dict | None = None) -> dict[str, np.ndarray]:
    """One sft record -> tokens/input_mask/loss_mask [T], gold_reward if present, example_id."""
    prefix, (completion,), cut = _encode(
        tokenizer, index, _text(record, "prompt", index),
        [("completion", _field(record, "completion", index))],
        max_prompt_len=max_prompt_len, joint=joint)
    out = pack_sequence(prefix, completion.ids, max_len=max_len, pad_id=_pad(tokenizer, pad_id))
    if isinstance(record, Mapping) and "gold_reward" in record:
        out["gold_reward"] = np.float32(_float(record, "gold_reward", index))
    out["example_id"] = np.int32(index)
    _tally(stats, prefix, [completion], cut, max_len)
    return out


def prompt_example(index: int, record: Mapping[str, Any], tokenizer: TokenizerLike, *,
                   max_prompt_len: int, pad_id: int | None = None,
                   stats: dict | None = None) -> dict[str, Any]:
    """One prompt record -> left-padded prompt_tokens/prompt_mask [P], prompt_text, example_id."""
    text = _text(record, "prompt", index)
    tokens = tokenizer.encode(text)
    prefix = cut_prompt(tokenizer, tokens, max_prompt_len)
    if not prefix:
        raise ValueError(f"record {index}: the prompt is empty and the tokenizer has no bos token")
    tokens_P, mask_P = left_pad(prefix, length=max_prompt_len, pad_id=_pad(tokenizer, pad_id))
    if stats is not None:
        stats["prompts_truncated"] += int(len(prefix) - len(_bos(tokenizer)) < len(tokens))
    return {"prompt_tokens": tokens_P, "prompt_mask": mask_P, "prompt_text": text,
            "example_id": np.int32(index)}


def pair_example(index: int, record: Mapping[str, Any], tokenizer: TokenizerLike, *,
                 max_len: int, max_prompt_len: int, pad_id: int | None = None,
                 joint: bool | None = None, stats: dict | None = None) -> dict[str, np.ndarray]:
    """One pair record -> chosen_* and rejected_* [T] sharing the prompt, golds if present."""
    prompt = _text(record, "prompt", index)
    sides = ("chosen", "rejected")
    prefix, completions, cut = _encode(
        tokenizer, index, prompt, [(side, _field(record, side, index)) for side in sides],
        max_prompt_len=max_prompt_len, joint=joint)
    out = {}
    for side, completion in zip(sides, completions):
        seq = pack_sequence(prefix, completion.ids, max_len=max_len, pad_id=_pad(tokenizer, pad_id))
        out.update({f"{side}_{k}": v for k, v in seq.items()})
        if isinstance(record, Mapping) and f"{side}_gold" in record:
            out[f"{side}_gold"] = np.float32(_float(record, f"{side}_gold", index))
    out["example_id"] = np.int32(index)
    _tally(stats, prefix, completions, cut, max_len)
    if stats is not None:
        stats["pairs_identical"] += int(np.array_equal(out["chosen_tokens"], out["rejected_tokens"])
                                        and np.array_equal(out["chosen_input_mask"],
                                                           out["rejected_input_mask"]))
    return out


def list_example(index: int, record: Mapping[str, Any], tokenizer: TokenizerLike, *,
                 max_len: int, max_prompt_len: int, list_size: int,
                 pad_id: int | None = None, joint: bool | None = None,
                 stats: dict | None = None) -> dict[str, np.ndarray]:
    """One list record -> tokens/masks [K,T], labels/list_mask (and gold) [K], example_id."""
    prompt = _text(record, "prompt", index)
    texts = _as_list(_field(record, "completions", index), "completions", index)
    labels = _as_list(_field(record, "labels", index), "labels", index)
    golds = (_as_list(_field(record, "gold", index), "gold", index)
             if isinstance(record, Mapping) and "gold" in record else None)
    k = len(texts)
    if not 1 <= k <= list_size:
        raise ValueError(f"record {index}: field 'completions' has {k} items; expected 1..{list_size}")
    for name, values in (("labels", labels), ("gold", golds)):
        if values is not None and len(values) != k:
            raise ValueError(
                f"record {index}: field {name!r} has {len(values)} items but 'completions' has {k}")
    prefix, completions, cut = _encode(
        tokenizer, index, prompt, [(f"completions[{i}]", t) for i, t in enumerate(texts)],
        max_prompt_len=max_prompt_len, joint=joint)
    tokens_KxT = np.full((list_size, max_len), _pad(tokenizer, pad_id), np.int32)
    input_mask_KxT = np.zeros((list_size, max_len), np.int32)
    loss_mask_KxT = np.zeros((list_size, max_len), np.int32)
    for i, completion in enumerate(completions):
        seq = pack_sequence(prefix, completion.ids, max_len=max_len, pad_id=_pad(tokenizer, pad_id))
        tokens_KxT[i], input_mask_KxT[i], loss_mask_KxT[i] = (
            seq["tokens"], seq["input_mask"], seq["loss_mask"])
    labels_K = np.zeros((list_size,), np.float32)
    labels_K[:k] = [_as_float(v, f"labels[{i}]", index) for i, v in enumerate(labels)]
    list_mask_K = np.zeros((list_size,), np.int32)
    list_mask_K[:k] = 1
    out = {"tokens": tokens_KxT, "input_mask": input_mask_KxT, "loss_mask": loss_mask_KxT,
           "labels": labels_K, "list_mask": list_mask_K}
    if golds is not None:
        gold_K = np.zeros((list_size,), np.float32)
        gold_K[:k] = [_as_float(v, f"gold[{i}]", index) for i, v in enumerate(golds)]
        out["gold"] = gold_K
    out["example_id"] = np.int32(index)
    _tally(stats, prefix, completions, cut, max_len)
    return out


# ---------------------------------------------------------------- batching and iteration


def stack_examples(examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Stacks examples into a batch; text fields become numpy object arrays."""
    keys = set(examples[0])
    for ex in examples[1:]:
        if set(ex) != keys:
            raise ValueError(
                f"records {int(examples[0]['example_id'])} and {int(ex['example_id'])} have "
                f"different fields: {sorted(keys)} vs {sorted(ex)}")
    batch = {}
    for key in examples[0]:
        values = [ex[key] for ex in examples]
        if isinstance(values[0], str):
            arr = np.empty((len(values),), object)
            arr[:] = values
            batch[key] = arr
        else:
            batch[key] = np.stack(values)
    return batch


def _with_record_index(example_fn, num_records: int, index: int, record: Any) -> dict:
    return example_fn(index % num_records, record)


def make_batches(source: Sequence[Any], example_fn: Callable[[int, Any], dict], *,
                 batch_size: int, seed: int, shuffle: bool = True, num_epochs: int | None = None,
                 drop_remainder: bool = True, process_index: int | None = None,
                 process_count: int | None = None, num_threads: int = 2,
                 prefetch: int = 4) -> grain.DatasetIterator:
    """Checkpointable iterator of this process's rows of each global batch of `example_fn(index, record)`.

    One global order of records (shuffled from `seed`, reshuffled each epoch when
    `num_epochs=None` repeats forever) is cut into global batches of
    `batch_size * process_count` rows; process p takes every process_count-th record of it.
    So the examples in global batch k do not depend on how many processes share the work,
    and a run on several hosts sees the same data as a run on one.
    """
    if process_index is None:
        process_index = jax.process_index()
    if process_count is None:
        process_count = jax.process_count()
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be None (forever) or >= 1, got {num_epochs}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    shard = len(source) // process_count
    if shard == 0:
        raise ValueError(f"source has {len(source)} records, fewer than {process_count} processes")
    if num_epochs is not None and drop_remainder and shard * num_epochs < batch_size:
        raise ValueError(
            f"each process's shard has {shard} records x {num_epochs} epochs, fewer than "
            f"batch_size {batch_size}: no batch would be produced")

    ds = grain.MapDataset.source(source)
    # Map before shuffling so the index seen is the record's index in `source`;
    # grain hands later epochs `epoch * len(source) + index`, hence the modulo.
    ds = ds.map_with_index(functools.partial(_with_record_index, example_fn, len(source)))
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    if num_epochs is not None:
        # Equal shares, so every process yields the same number of batches.
        ds = ds[:len(ds) - len(ds) % process_count]
    ds = ds[process_index::process_count]
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=stack_examples)
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(ds.to_iter_dataset(read_options))


def sft_batches(source, tokenizer: TokenizerLike, *, batch_size: int, max_len: int,
                max_prompt_len: int, seed: int, shuffle: bool = True,
                num_epochs: int | None = None, drop_remainder: bool = True,
                pad_id: int | None = None, joint: bool | None = None,
                process_index: int | None = None,
                process_count: int | None = None) -> grain.DatasetIterator:
    """Batches of tokens/input_mask/loss_mask [B,T], gold_reward [B] if present, example_id [B]."""
    check_lengths(max_len, max_prompt_len)
    fn = functools.partial(sft_example, tokenizer=tokenizer, max_len=max_len,
                           max_prompt_len=max_prompt_len, pad_id=pad_id, joint=joint)
    return make_batches(source, fn, batch_size=batch_size, seed=seed, shuffle=shuffle,
                        num_epochs=num_epochs, drop_remainder=drop_remainder,
                        process_index=process_index, process_count=process_count)


def prompt_batches(source, tokenizer: TokenizerLike, *, batch_size: int, max_prompt_len: int,
                   seed: int, shuffle: bool = True, num_epochs: int | None = None,
                   drop_remainder: bool = True, pad_id: int | None = None,
                   process_index: int | None = None,
                   process_count: int | None = None) -> grain.DatasetIterator:
    """Left-padded prompt_tokens/prompt_mask [B,P], prompt_text [B] (object), example_id [B]."""
    check_lengths(None, max_prompt_len)
    fn = functools.partial(prompt_example, tokenizer=tokenizer, max_prompt_len=max_prompt_len,
                           pad_id=pad_id)
    return make_batches(source, fn, batch_size=batch_size, seed=seed, shuffle=shuffle,
                        num_epochs=num_epochs, drop_remainder=drop_remainder,
                        process_index=process_index, process_count=process_count)


def pair_batches(source, tokenizer: TokenizerLike, *, batch_size: int, max_len: int,
                 max_prompt_len: int, seed: int, shuffle: bool = True,
                 num_epochs: int | None = None, drop_remainder: bool = True,
                 pad_id: int | None = None, joint: bool | None = None,
                 process_index: int | None = None,
                 process_count: int | None = None) -> grain.DatasetIterator:
    """{chosen,rejected}_{tokens,input_mask,loss_mask} [B,T], *_gold [B], example_id [B]."""
    check_lengths(max_len, max_prompt_len)
    fn = functools.partial(pair_example, tokenizer=tokenizer, max_len=max_len,
                           max_prompt_len=max_prompt_len, pad_id=pad_id, joint=joint)
    return make_batches(source, fn, batch_size=batch_size, seed=seed, shuffle=shuffle,
                        num_epochs=num_epochs, drop_remainder=drop_remainder,
                        process_index=process_index, process_count=process_count)


def list_batches(source, tokenizer: TokenizerLike, *, batch_size: int, list_size: int,
                 max_len: int, max_prompt_len: int, seed: int, shuffle: bool = True,
                 num_epochs: int | None = None, drop_remainder: bool = True,
                 pad_id: int | None = None, joint: bool | None = None,
                 process_index: int | None = None,
                 process_count: int | None = None) -> grain.DatasetIterator:
    """tokens/input_mask/loss_mask [B,K,T], labels/list_mask/gold [B,K], example_id [B]."""
    check_lengths(max_len, max_prompt_len)
    if list_size < 1:
        raise ValueError(f"list_size must be >= 1, got {list_size}")
    fn = functools.partial(list_example, tokenizer=tokenizer, max_len=max_len,
                           max_prompt_len=max_prompt_len, list_size=list_size, pad_id=pad_id,
                           joint=joint)
    return make_batches(source, fn, batch_size=batch_size, seed=seed, shuffle=shuffle,
                        num_epochs=num_epochs, drop_remainder=drop_remainder,
                        process_index=process_index, process_count=process_count)
