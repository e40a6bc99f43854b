"""Grain pipelines: tokenize, truncate, pad and batch sft / prompt / pair / list records.

A data kind is an entry of KINDS: the function that turns one record into one example and the
settings it takes. `batches(kind, source, tokenizer, ...)` batches any kind; an objective
that reads another kind of record adds it with `register_kind` from its own file.

Dimension letters: B batch (per process), K responses per prompt, T tokens, P prompt tokens.

How one record becomes tokens (truncation, joint encoding, eos: the rules) is
align/data/encoding.py. Its readers and layout functions are re-exported here, so an
objective's own example function needs only `from align.data import pipeline`; this module
holds the built-in kinds' example functions, the kind table and the batching.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Mapping, Sequence

import grain
import jax
import numpy as np

from align import errors
from align.data.encoding import (Completion, TokenizerLike, as_float, as_list, bos_ids,
                                 check_lengths, completion_ids, cut_prompt, encode_completion,
                                 encode_record, float_field, get_field, left_pad, pack_sequence,
                                 pad_value, prompt_ids, tally, text_field)

__all__ = [
    "Completion", "DataKind", "KINDS", "TokenizerLike", "batches", "check_lengths",
    "completion_ids", "cut_prompt", "encode_completion", "encode_record", "float_field",
    "get_kind", "kind_example", "left_pad", "list_example", "make_batches", "pack_sequence",
    "pair_example", "prompt_example", "prompt_ids", "register_kind", "sft_example",
    "stack_examples", "tally", "text_field",
]


# ---------------------------------------------------------------- per-record examples


def sft_example(index: int, record: Mapping[str, Any], tokenizer: TokenizerLike, *,
                max_len: int, max_prompt_len: int, pad_id: int | None = None,
                joint: bool | None = None, stats: dict | None = None) -> dict[str, np.ndarray]:
    """One sft record -> tokens/input_mask/loss_mask [T], gold_reward if present, example_id."""
    prefix, (completion,), cut = encode_record(
        tokenizer, index, text_field(record, "prompt", index),
        [("completion", get_field(record, "completion", index))],
        max_prompt_len=max_prompt_len, joint=joint)
    out = pack_sequence(prefix, completion.ids, max_len=max_len,
                        pad_id=pad_value(tokenizer, pad_id))
    if isinstance(record, Mapping) and "gold_reward" in record:
        out["gold_reward"] = np.float32(float_field(record, "gold_reward", index))
    out["example_id"] = np.int32(index)
    tally(stats, prefix, [completion], cut, max_len)
    return out


def prompt_example(index: int, record: Mapping[str, Any], tokenizer: TokenizerLike, *,
                   max_prompt_len: int, pad_id: int | None = None,
                   stats: dict | None = None) -> dict[str, Any]:
    """One prompt record -> left-padded prompt_tokens/prompt_mask [P], prompt_text, example_id."""
    text = text_field(record, "prompt", index)
    tokens = tokenizer.encode(text)
    prefix = cut_prompt(tokenizer, tokens, max_prompt_len)
    if not prefix:
        raise errors.DataError(
            f"record {index}: the prompt is empty and the tokenizer has no bos token")
    tokens_P, mask_P = left_pad(prefix, length=max_prompt_len, pad_id=pad_value(tokenizer, pad_id))
    if stats is not None:
        stats["prompts_truncated"] += int(len(prefix) - len(bos_ids(tokenizer)) < len(tokens))
    return {"prompt_tokens": tokens_P, "prompt_mask": mask_P, "prompt_text": text,
            "example_id": np.int32(index)}


def pair_example(index: int, record: Mapping[str, Any], tokenizer: TokenizerLike, *,
                 max_len: int, max_prompt_len: int, pad_id: int | None = None,
                 joint: bool | None = None, stats: dict | None = None) -> dict[str, np.ndarray]:
    """One pair record -> chosen_* and rejected_* [T] sharing the prompt, golds if present."""
    prompt = text_field(record, "prompt", index)
    sides = ("chosen", "rejected")
    prefix, completions, cut = encode_record(
        tokenizer, index, prompt, [(side, get_field(record, side, index)) for side in sides],
        max_prompt_len=max_prompt_len, joint=joint)
    out = {}
    for side, completion in zip(sides, completions):
        seq = pack_sequence(prefix, completion.ids, max_len=max_len,
                            pad_id=pad_value(tokenizer, pad_id))
        out.update({f"{side}_{k}": v for k, v in seq.items()})
        if isinstance(record, Mapping) and f"{side}_gold" in record:
            out[f"{side}_gold"] = np.float32(float_field(record, f"{side}_gold", index))
    out["example_id"] = np.int32(index)
    tally(stats, prefix, completions, cut, max_len)
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
    prompt = text_field(record, "prompt", index)
    texts = as_list(get_field(record, "completions", index), "completions", index)
    labels = as_list(get_field(record, "labels", index), "labels", index)
    golds = (as_list(get_field(record, "gold", index), "gold", index)
             if isinstance(record, Mapping) and "gold" in record else None)
    k = len(texts)
    if not 1 <= k <= list_size:
        raise errors.DataError(
            f"record {index}: field 'completions' has {k} items; expected 1..{list_size}")
    for name, values in (("labels", labels), ("gold", golds)):
        if values is not None and len(values) != k:
            raise errors.DataError(
                f"record {index}: field {name!r} has {len(values)} items but 'completions' has {k}")
    prefix, completions, cut = encode_record(
        tokenizer, index, prompt, [(f"completions[{i}]", t) for i, t in enumerate(texts)],
        max_prompt_len=max_prompt_len, joint=joint)
    tokens_KxT = np.full((list_size, max_len), pad_value(tokenizer, pad_id), np.int32)
    input_mask_KxT = np.zeros((list_size, max_len), np.int32)
    loss_mask_KxT = np.zeros((list_size, max_len), np.int32)
    for i, completion in enumerate(completions):
        seq = pack_sequence(prefix, completion.ids, max_len=max_len,
                            pad_id=pad_value(tokenizer, pad_id))
        tokens_KxT[i], input_mask_KxT[i], loss_mask_KxT[i] = (
            seq["tokens"], seq["input_mask"], seq["loss_mask"])
    labels_K = np.zeros((list_size,), np.float32)
    labels_K[:k] = [as_float(v, f"labels[{i}]", index) for i, v in enumerate(labels)]
    list_mask_K = np.zeros((list_size,), np.int32)
    list_mask_K[:k] = 1
    out = {"tokens": tokens_KxT, "input_mask": input_mask_KxT, "loss_mask": loss_mask_KxT,
           "labels": labels_K, "list_mask": list_mask_K}
    if golds is not None:
        gold_K = np.zeros((list_size,), np.float32)
        gold_K[:k] = [as_float(v, f"gold[{i}]", index) for i, v in enumerate(golds)]
        out["gold"] = gold_K
    out["example_id"] = np.int32(index)
    tally(stats, prefix, completions, cut, max_len)
    return out


# ---------------------------------------------------------------- batching and iteration


def stack_examples(examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Stacks examples into a batch; text fields become numpy object arrays."""
    keys = set(examples[0])
    for ex in examples[1:]:
        if set(ex) != keys:
            raise errors.DataError(
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
        raise errors.ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if num_epochs is not None and num_epochs < 1:
        raise errors.ConfigError(f"num_epochs must be None (forever) or >= 1, got {num_epochs}")
    if not 0 <= seed < 2**32:
        raise errors.ConfigError(f"seed must be in [0, 2**32), got {seed}")
    shard = len(source) // process_count
    if shard == 0:
        raise errors.DataError(
            f"source has {len(source)} records, fewer than {process_count} processes")
    if num_epochs is not None and drop_remainder and shard * num_epochs < batch_size:
        raise errors.ConfigError(
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


# ---------------------------------------------------------------- data kinds


@dataclasses.dataclass(frozen=True)
class DataKind:
    """A kind of data: how one record becomes one example row, and what settings that takes.

    `example_fn(index, record, tokenizer, *, max_prompt_len, pad_id, stats, [max_len],
    [joint], **settings)` returns one example (a dict of arrays, plus text fields and
    `example_id`); `batches` stacks them into [B, ...]. It raises errors.DataError naming the
    record for one it cannot use, and adds its counts to `stats` (a dict, or None) with
    `tally`, which is how `align.data.token_report` counts truncations over a source.
    """

    name: str
    example_fn: Callable[..., dict]
    settings: tuple[str, ...] = ()  # the kind's own keyword settings, e.g. ("list_size",)
    needs_max_len: bool = True  # False: no completion (prompts); max_len is then not passed
    takes_joint: bool = True  # whether `joint` is passed to example_fn
    check: Callable[[Mapping[str, Any]], None] | None = None  # raises on bad settings
    fields: str = ""  # what a batch holds, with shapes

    def required_settings(self) -> tuple[str, ...]:
        """The settings example_fn has no default for."""
        params = inspect.signature(self.example_fn).parameters
        return tuple(s for s in self.settings
                     if s in params and params[s].default is inspect.Parameter.empty)


KINDS: dict[str, DataKind] = {}


def _check_signature(name: str, example_fn: Callable, keywords: Sequence[str]) -> None:
    """Errors unless example_fn takes (index, record, tokenizer) and the given keywords.

    The tokenizer is passed by keyword (the pipeline binds it ahead of index and record).
    """
    try:
        params = inspect.signature(example_fn).parameters
    except (TypeError, ValueError) as e:
        raise ValueError(f"data kind {name!r}: cannot read example_fn's signature: {e}") from e
    positional = [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    if positional[2:3] != ["tokenizer"]:
        raise ValueError(f"data kind {name!r}: example_fn must take (index, record, tokenizer); "
                         f"its parameters: {list(params)}")
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    missing = [k for k in keywords if k not in params]
    if missing:
        raise ValueError(f"data kind {name!r}: example_fn takes no keyword(s) {missing}; "
                         f"its parameters: {list(params)}")


def register_kind(name: str, example_fn: Callable[..., dict], *, settings: Sequence[str] = (),
                  needs_max_len: bool = True, takes_joint: bool | None = None,
                  check: Callable[[Mapping[str, Any]], None] | None = None, fields: str = "",
                  replace: bool = False) -> DataKind:
    """Adds a data kind that `batches(name, ...)` and `token_report` serve; returns its entry.

    settings: keyword settings of the kind beyond the common ones (`batches` takes them as
    **kind_settings; those without a default in example_fn are required). needs_max_len:
    whether example sequences are packed to max_len (False only for prompt-only kinds).
    takes_joint: whether example_fn takes `joint` (default: needs_max_len). check: called
    with the given settings, raises ValueError on bad ones. Registering a taken name is an
    error unless `replace`. See DataKind for what example_fn takes and returns.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a data kind's name must be an identifier, got {name!r}")
    if name in KINDS and not replace:
        raise ValueError(f"data kind {name!r} is already registered "
                         f"(by {KINDS[name].example_fn.__module__}); replace=True replaces it")
    takes_joint = needs_max_len if takes_joint is None else bool(takes_joint)
    settings = tuple(settings)
    common = {"max_prompt_len", "pad_id", "max_len", "joint", "stats"}
    clash = sorted(set(settings) & common)
    if clash:
        raise ValueError(f"data kind {name!r}: {clash} are common settings (every kind gets "
                         "them as keywords), not kind settings")
    keywords = (["max_prompt_len", "pad_id", "stats"] + ["max_len"] * needs_max_len
                + ["joint"] * takes_joint + list(settings))
    _check_signature(name, example_fn, keywords)
    kind = DataKind(name, example_fn, settings, bool(needs_max_len), takes_joint, check, fields)
    KINDS[name] = kind
    return kind


def get_kind(name: str) -> DataKind:
    """The registered data kind `name`; an unknown one is an error naming the valid kinds."""
    if name not in KINDS:
        raise ValueError(f"unknown data kind {name!r}; valid: {', '.join(KINDS)} (a new one is "
                         "added with align.data.pipeline.register_kind)")
    return KINDS[name]


def kind_example(kind: str, tokenizer: TokenizerLike, *, max_len: int | None = None,
                 max_prompt_len: int, pad_id: int | None = None, joint: bool | None = None,
                 **kind_settings) -> Callable[..., dict]:
    """`fn(index, record, stats=None)`: the kind's example function, its settings checked, bound.

    max_len and joint are not passed to a kind that does not take them (prompts), so one set
    of settings serves every kind; a setting the kind does not take is an error.
    """
    entry = get_kind(kind)
    if entry.needs_max_len and max_len is None:
        raise ValueError(f"data kind {kind!r} needs max_len")
    check_lengths(max_len if entry.needs_max_len else None, max_prompt_len)
    unknown = sorted(set(kind_settings) - set(entry.settings))
    if unknown:
        raise ValueError(f"data kind {kind!r} takes no setting(s) {unknown}; its settings: "
                         f"{list(entry.settings) or 'none'}")
    missing = [s for s in entry.required_settings() if s not in kind_settings]
    if missing:
        raise ValueError(f"data kind {kind!r} needs the setting(s) {missing}")
    if entry.check is not None:
        entry.check(kind_settings)
    settings = dict(kind_settings, max_prompt_len=max_prompt_len,
                    pad_id=pad_value(tokenizer, pad_id))
    if entry.needs_max_len:
        settings["max_len"] = max_len
    if entry.takes_joint:
        settings["joint"] = joint
    return functools.partial(entry.example_fn, tokenizer=tokenizer, **settings)


def batches(kind: str, source, tokenizer: TokenizerLike, *, batch_size: int,
            max_len: int | None = None, max_prompt_len: int, seed: int, shuffle: bool = True,
            num_epochs: int | None = None, drop_remainder: bool = True,
            pad_id: int | None = None, joint: bool | None = None,
            process_index: int | None = None, process_count: int | None = None,
            **kind_settings) -> grain.DatasetIterator:
    """Checkpointable iterator of batches of `kind` records (see `make_batches` for the order).

    kind: a name in KINDS; what its batches hold is `KINDS[kind].fields`. Built in:
      sft: tokens/input_mask/loss_mask [B,T], gold_reward [B] if present, example_id [B];
      prompts: left-padded prompt_tokens/prompt_mask [B,P], prompt_text [B] (object),
        example_id [B];
      pairs: {chosen,rejected}_{tokens,input_mask,loss_mask} [B,T], *_gold [B], example_id [B];
      lists (list_size=K): tokens/input_mask/loss_mask [B,K,T], labels/list_mask/gold [B,K],
        example_id [B].
    max_len: needed by every kind but prompts (ignored there, as joint is); pad_id: default
    the tokenizer's; joint: see align/data/encoding.py; kind_settings: the kind's own settings
    (lists: list_size).
    """
    fn = kind_example(kind, tokenizer, max_len=max_len, max_prompt_len=max_prompt_len,
                      pad_id=pad_id, joint=joint, **kind_settings)
    return make_batches(source, fn, batch_size=batch_size, seed=seed, shuffle=shuffle,
                        num_epochs=num_epochs, drop_remainder=drop_remainder,
                        process_index=process_index, process_count=process_count)


def _check_list_settings(settings: Mapping[str, Any]) -> None:
    if settings["list_size"] < 1:
        raise errors.ConfigError(f"list_size must be >= 1, got {settings['list_size']}",
                                 key="data.list_size")


register_kind("sft", sft_example,
              fields="tokens/input_mask/loss_mask [B,T], gold_reward [B] if present, example_id [B]")
register_kind("prompts", prompt_example, needs_max_len=False,
              fields="left-padded prompt_tokens/prompt_mask [B,P], prompt_text [B] (object), "
                     "example_id [B]")
register_kind("pairs", pair_example,
              fields="{chosen,rejected}_{tokens,input_mask,loss_mask} [B,T], *_gold [B] if "
                     "present, example_id [B]")
register_kind("lists", list_example, settings=("list_size",), check=_check_list_settings,
              fields="tokens/input_mask/loss_mask [B,K,T], labels/list_mask [B,K], gold [B,K] "
                     "if present, example_id [B]")
