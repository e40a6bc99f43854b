"""Hugging Face safetensors checkpoints (Llama, Mistral, Qwen2, Gemma): import onto a mesh, export.

Causal LMs load with `load_pretrained`; `...ForSequenceClassification` checkpoints with one
label (reward models) load with `load_reward_model` as a ScalarModel.

Import reads each parameter's shards straight from memory-mapped files, so no whole-model
copy is ever held on the host; export streams one tensor at a time into `model.safetensors`.
Dimension letters: L layers (the leading axis of parameters stacked for scan_layers).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import struct
import tempfile
from typing import Any, Mapping, NamedTuple

import jax
import ml_dtypes
import numpy as np

from align import atomic
from align import mesh as mesh_lib
from align.errors import CheckpointError
from align.models import transformer
from align.models import specs as state_lib
from third_party import hf_layouts

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_ST_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_FLOAT_DTYPES = {_ST_DTYPES[k] for k in ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")}
_PARAM_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
# Fields of the imported config that do not change parameter shapes or the function computed.
_OVERRIDABLE = ("dtype", "remat", "attention", "scan_layers", "max_len")


def _read_config_json(path: str) -> tuple[str, dict[str, Any]]:
    """(file, parsed object) of a checkpoint directory's config.json (or its path)."""
    where = os.path.join(path, CONFIG_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(where):
        raise FileNotFoundError(f"no {CONFIG_FILE} at {path}")
    try:
        with open(where) as f:
            hf = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{where} is not valid JSON: {e}") from e
    if not isinstance(hf, dict):
        raise CheckpointError(f"{where} must hold a JSON object, got {type(hf).__name__}")
    return where, hf


def read_hf_config(path: str) -> tuple[str, transformer.TransformerConfig]:
    """(family, TransformerConfig) from a checkpoint directory's config.json (or its path)."""
    where, hf = _read_config_json(path)
    try:
        family, kwargs = hf_layouts.config_from_hf(hf, where)  # its messages name `where`
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    try:
        return family, transformer.TransformerConfig(**kwargs)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from e


class _Entry(NamedTuple):
    file: str
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int  # byte offsets in the file
    stop: int


def read_safetensors_header(path: str) -> dict[str, _Entry]:
    """Tensor name -> where its bytes are; a malformed header is an error naming the file."""
    size = os.path.getsize(path)

    def corrupt(why):
        return CheckpointError(f"corrupt safetensors file {path}: {why}")

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise corrupt(f"only {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise corrupt(f"header length {n} exceeds the file size {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise corrupt(f"the header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise corrupt("the header is not a JSON object")
    base, data_size = 8 + n, size - 8 - n
    entries = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _ST_DTYPES[meta["dtype"]]
            shape = tuple(int(s) for s in meta["shape"])
            start, stop = (int(o) for o in meta["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise corrupt(f"bad header entry for tensor {name!r}: {meta!r}") from e
        nbytes = math.prod(shape) * dtype.itemsize
        bad_span = not 0 <= start <= stop <= data_size or stop - start != nbytes
        if min(shape, default=0) < 0 or bad_span:
            raise corrupt(f"tensor {name!r} has shape {list(shape)} {meta['dtype']} and data "
                          f"offsets {[start, stop]}, inconsistent with {data_size} data bytes")
        entries[name] = _Entry(path, dtype, shape, base + start, base + stop)
    return entries


class _Reader:
    """Every tensor of a checkpoint directory, one or several files, as memory-mapped arrays."""

    def __init__(self, directory: str):
        self.directory = directory
        single, index = os.path.join(directory, WEIGHTS_FILE), os.path.join(directory, INDEX_FILE)
        if os.path.isfile(index):
            self.source = index
            weight_map = self._weight_map(index)
            headers = {file: read_safetensors_header(os.path.join(directory, file))
                       for file in sorted(set(weight_map.values()))}
            self.entries = {}
            for name, file in weight_map.items():
                if name not in headers[file]:
                    raise CheckpointError(f"{index} puts tensor {name!r} in {file}, which "
                                          "does not contain it")
                self.entries[name] = headers[file][name]
            for file, header in headers.items():
                for name in sorted(set(header) - set(weight_map)):
                    raise CheckpointError(f"unexpected tensor {name!r} in {file}: it is not "
                                          f"listed in {index}")
        elif os.path.isfile(single):
            self.source = single
            self.entries = read_safetensors_header(single)
        else:
            raise FileNotFoundError(f"no {WEIGHTS_FILE} or {INDEX_FILE} in {directory}")
        self._maps: dict[str, np.memmap] = {}

    @staticmethod
    def _weight_map(index: str) -> dict[str, str]:
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a safetensors index with a weight_map: "
                                  f"{e}") from e
        directory = os.path.dirname(index)
        for name, file in weight_map.items():
            if not isinstance(file, str) or not os.path.isfile(os.path.join(directory, file)):
                raise FileNotFoundError(f"{index} puts tensor {name!r} in {file!r}, which is "
                                        f"not a file in {directory}")
        return weight_map

    def array(self, name: str) -> np.ndarray:
        """The tensor as a read-only view of the mapped file (nothing is read yet)."""
        e = self.entries[name]
        if e.start == e.stop:
            return np.zeros(e.shape, e.dtype)
        if e.file not in self._maps:
            self._maps[e.file] = np.memmap(e.file, dtype=np.uint8, mode="r")
        return self._maps[e.file][e.start:e.stop].view(e.dtype).reshape(e.shape)


def _check_tensors(reader: _Reader, layout: Mapping[tuple, hf_layouts.Tensor], tied: bool):
    """Missing, unexpected or wrong-shape tensors are errors naming the tensor and file."""
    expected = {t.name: t for t in layout.values()}
    missing = sorted(set(expected) - set(reader.entries))
    if missing:
        raise CheckpointError(f"checkpoint {reader.source} is missing tensor(s) {missing}")
    for name, e in reader.entries.items():
        if name in expected:
            t = expected[name]
            if e.shape != t.shape:
                raise CheckpointError(f"tensor {name!r} in {e.file} has shape "
                                      f"{list(e.shape)}, expected {list(t.shape)}")
            if e.dtype not in _FLOAT_DTYPES:
                raise CheckpointError(f"tensor {name!r} in {e.file} has dtype {e.dtype}, "
                                      "expected a floating-point type")
        elif name.endswith(hf_layouts.IGNORED_SUFFIXES) or (tied and name == hf_layouts.LM_HEAD):
            continue  # buffers, or a duplicate of the tied embedding that HF also ignores
        else:
            raise CheckpointError(f"unexpected tensor {name!r} in {e.file} for this model "
                                  "config")


def _leaf_tensors(path: tuple, cfg, layout) -> tuple[list[hf_layouts.Tensor], bool]:
    """The HF tensors behind one align parameter, and whether they stack along a layer axis."""
    if cfg.scan_layers and path[0] == "layers":
        return [layout[("layers", i, *path[1:])] for i in range(cfg.n_layers)], True
    return [layout[path]], False


def _read_fn(reader: _Reader, tensors, stacked: bool, dtype: np.dtype):
    # Reshape and transpose of a memory map are views: indexing them reads just the shard.
    views = [reader.array(t.name).reshape(t.view).transpose(t.perm) for t in tensors]

    def read(index):
        index = tuple(index) if index is not None else (slice(None),) * (views[0].ndim + stacked)
        if not stacked:
            return np.array(views[0][index], dtype=dtype)
        layers = range(len(views))[index[0]]
        return np.stack([views[i][index[1:]] for i in layers]).astype(dtype, copy=False)

    return read


def _model_def(cfg: transformer.TransformerConfig) -> state_lib.ModelDef:
    return state_lib.describe(lambda rngs: transformer.Transformer(cfg, rngs=rngs))


def _path(key_path) -> tuple:
    return tuple(k.key for k in key_path)


def _load_options(cfg: transformer.TransformerConfig, dtype: str | None,
                  overrides: Mapping[str, Any] | None, who: str):
    """(cfg with `overrides` applied, parameter dtype); errors name the caller `who`."""
    overrides = dict(overrides or {})
    bad = sorted(set(overrides) - set(_OVERRIDABLE))
    if bad:
        raise ValueError(f"{who}: cannot override {bad}; allowed: {list(_OVERRIDABLE)}")
    if overrides.get("max_len", cfg.max_len) > cfg.max_len:
        raise CheckpointError(f"{who}: max_len {overrides['max_len']} exceeds the "
                              f"checkpoint's {cfg.max_len}")
    cfg = dataclasses.replace(cfg, **overrides)
    param_dtype = _PARAM_DTYPES.get(dtype or "float32")
    if param_dtype is None:
        raise ValueError(f"{who}: dtype must be one of {list(_PARAM_DTYPES)}, got {dtype!r}")
    return cfg, param_dtype


def _transformer_loader(reader: _Reader, cfg, layout, param_dtype: np.dtype):
    """(Transformer param path, abstract, sharding) -> that parameter read onto its shards."""

    def load(path, abstract, sharding):
        tensors, stacked = _leaf_tensors(path, cfg, layout)
        shape = (len(tensors),) * stacked + tensors[0].align_shape
        assert shape == abstract.shape, (path, shape, abstract.shape)
        read = _read_fn(reader, tensors, stacked, param_dtype)
        return jax.make_array_from_callback(shape, sharding, read, dtype=param_dtype)

    return load


def _zeros(shape: tuple[int, ...], sharding, dtype: np.dtype) -> jax.Array:
    """A zero array built shard by shard (no whole-array host copy)."""
    return jax.make_array_from_callback(
        shape, sharding, lambda index: np.zeros(sharding.shard_shape(shape), dtype), dtype=dtype)


def _architectures(hf: Mapping[str, Any]) -> list[str]:
    archs = hf.get("architectures") or []
    return [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []


def _is_sequence_classification(hf: Mapping[str, Any], reader: _Reader) -> bool:
    return (hf_layouts.SCORE in reader.entries
            or any(a.endswith(hf_layouts.SEQUENCE_CLASSIFICATION) for a in _architectures(hf)))


def load_pretrained(path: str, mesh, rules, *, dtype: str | None = None,
                    overrides: Mapping[str, Any] | None = None):
    """(TransformerConfig, params) of a causal LM with every parameter read onto its shards."""
    # `dtype` is the parameters' dtype ("float32" when None, or "bfloat16"); `overrides` may
    # set only config fields that keep the computed function: dtype (the compute dtype),
    # remat, attention, scan_layers, and a smaller max_len.
    where, hf = _read_config_json(path)
    _, cfg = read_hf_config(path)
    cfg, param_dtype = _load_options(cfg, dtype, overrides, "load_pretrained")
    model_def = _model_def(cfg)
    shardings = mesh_lib.tree_shardings(model_def.abstract_params, model_def.names, rules, mesh)
    layout = hf_layouts.tensor_layout(cfg)
    reader = _Reader(path)
    if _is_sequence_classification(hf, reader):
        raise CheckpointError(
            f"{reader.source} is a sequence-classification checkpoint (architectures "
            f"{_architectures(hf)} in {where}; tensor {hf_layouts.SCORE!r}), not a causal "
            "language model: load it with load_reward_model")
    _check_tensors(reader, layout, cfg.tie_embeddings)
    load = _transformer_loader(reader, cfg, layout, param_dtype)
    params = jax.tree_util.tree_map_with_path(
        lambda kp, a, s: load(_path(kp), a, s), model_def.abstract_params, shardings)
    return cfg, params


class RewardCheckpoint(NamedTuple):
    """A sequence-classification checkpoint loaded as an align reward model.

    params is the pure-dict parameter tree of `heads.ScalarModel(cfg)`:
    {"backbone": <Transformer params>, "head": {"kernel": [D], "bias": []}}.
    pad_token_id is config.json's (None when it sets none): transformers scores a sequence at
    its last token whose id differs from it (see align.analysis.pretrained_reward).
    """

    cfg: transformer.TransformerConfig
    params: Any
    pad_token_id: int | None


def _num_labels(hf: Mapping[str, Any]) -> int | None:
    """The number of outputs config.json declares (len(id2label), else num_labels), or None."""
    # transformers writes id2label only when num_labels differs from its default of 2.
    if isinstance(hf.get("id2label"), dict):
        return len(hf["id2label"])
    n = hf.get("num_labels")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def _pad_token_id(hf: Mapping[str, Any], where: str, vocab_size: int) -> int | None:
    pad = hf.get("pad_token_id")
    if pad is None:
        return None
    if isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < vocab_size:
        raise CheckpointError(f"{where}: pad_token_id must be a token id in [0, {vocab_size}), "
                              f"got {pad!r}")
    return pad


def load_reward_model(path: str, mesh, rules, *, dtype: str | None = None,
                      overrides: Mapping[str, Any] | None = None) -> RewardCheckpoint:
    """A `...ForSequenceClassification` checkpoint with one label as (cfg, params, pad_token_id).

    Reads the causal-LM trunk (`model.*`) into the ScalarModel's backbone and `score.weight`
    [1, D] (plus `score.bias` [1] where present, else 0) into its head, always in fp32 like
    every ScalarHead. The head then gives the value of every token, r_t = w · h_t + b, and
    transformers' reward of a sequence is r_t at its last non-pad token. A backbone with an
    untied output matrix (tie_word_embeddings false) gets it filled with zeros: the file has
    no lm_head and a reward model never uses one. `dtype` and `overrides` are as in
    load_pretrained (`dtype` applies to the backbone only).
    """
    where, hf = _read_config_json(path)
    _, cfg = read_hf_config(path)
    cfg, param_dtype = _load_options(cfg, dtype, overrides, "load_reward_model")
    reader = _Reader(path)
    archs = _architectures(hf)
    if hf_layouts.SCORE not in reader.entries:
        raise CheckpointError(
            f"{reader.source} has no tensor {hf_layouts.SCORE!r}: it is not a "
            f"sequence-classification checkpoint (architectures {archs} in {where}); "
            "load_reward_model reads ...ForSequenceClassification checkpoints, and a causal "
            "language model loads with load_pretrained")
    if archs and not any(a.endswith(hf_layouts.SEQUENCE_CLASSIFICATION) for a in archs):
        raise CheckpointError(
            f"{where}: architectures {archs} name no ...ForSequenceClassification model, "
            f"though {reader.source} holds {hf_layouts.SCORE!r}")
    score = reader.entries[hf_layouts.SCORE]
    declared = _num_labels(hf)
    if len(score.shape) != 2 or score.shape[0] != 1 or declared not in (None, 1):
        declares = "" if declared is None else f" and {where} declares num_labels={declared}"
        raise CheckpointError(
            f"{reader.source}: a reward model has one output (num_labels=1), but tensor "
            f"{hf_layouts.SCORE!r} has shape {list(score.shape)}{declares}; a classifier "
            "of several labels is not a reward model")
    pad_token_id = _pad_token_id(hf, where, cfg.vocab_size)
    backbone = {k: t for k, t in hf_layouts.tensor_layout(cfg).items() if k != ("unembed",)}
    head = hf_layouts.score_layout(cfg, bias=hf_layouts.SCORE_BIAS in reader.entries)
    _check_tensors(reader, {**backbone, **head}, tied=False)

    model_def = state_lib.describe(state_lib.scalar_model().make_fn(cfg))
    shardings = mesh_lib.tree_shardings(model_def.abstract_params, model_def.names, rules, mesh)
    load_backbone = _transformer_loader(reader, cfg, backbone, param_dtype)

    def load(key_path, abstract, sharding):
        path = _path(key_path)
        if path[0] == "head":
            if path not in head:  # no score.bias: HF's score layer has none
                return _zeros(abstract.shape, sharding, np.dtype(np.float32))
            t = head[path]
            assert t.align_shape == abstract.shape, (path, t.align_shape, abstract.shape)
            read = _read_fn(reader, [t], False, np.dtype(np.float32))
            return jax.make_array_from_callback(abstract.shape, sharding, read,
                                                dtype=np.float32)
        if path[1:] == ("unembed",):
            return _zeros(abstract.shape, sharding, param_dtype)  # unused by a reward model
        return load_backbone(path[1:], abstract, sharding)

    params = jax.tree_util.tree_map_with_path(load, model_def.abstract_params, shardings)
    return RewardCheckpoint(cfg, params, pad_token_id)


def _safetensors_header(plan, st_dtype: str, itemsize: int) -> bytes:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for _, tensors in plan:
        for _, t in tensors:
            nbytes = math.prod(t.shape) * itemsize
            header[t.name] = {"dtype": st_dtype, "shape": list(t.shape),
                              "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data then starts 8-byte aligned, as safetensors writes
    return struct.pack("<Q", len(raw)) + raw


def export_hf(params, cfg: transformer.TransformerConfig, family: str, out_dir: str, *,
              dtype: str = "float32", extra_config: Mapping[str, Any] | None = None) -> None:
    """Writes config.json and model.safetensors in the HF layout of `family`, for transformers."""
    # extra_config adds config.json fields such as bos_token_id / eos_token_id.
    if dtype not in _PARAM_DTYPES:
        raise ValueError(f"export_hf: dtype must be one of {list(_PARAM_DTYPES)}, got {dtype!r}")
    hf_cfg = {**hf_layouts.config_to_hf(family, cfg, dtype), **dict(extra_config or {})}
    layout = hf_layouts.tensor_layout(cfg)
    abstract = _model_def(cfg).abstract_params
    flat = {_path(kp): x for kp, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    expected = {_path(kp): a.shape for kp, a in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    if set(flat) != set(expected):
        raise ValueError(f"export_hf: params do not match the config: missing "
                         f"{sorted(map(str, set(expected) - set(flat)))}, unexpected "
                         f"{sorted(map(str, set(flat) - set(expected)))}")
    plan = []
    for path, shape in expected.items():
        if tuple(np.shape(flat[path])) != shape:
            raise ValueError(f"export_hf: param {'/'.join(map(str, path))} has shape "
                             f"{tuple(np.shape(flat[path]))}, expected {shape}")
        tensors, stacked = _leaf_tensors(path, cfg, layout)
        plan.append((path, list(enumerate(tensors)) if stacked else [(None, tensors[0])]))
    out_dtype = _PARAM_DTYPES[dtype]
    st_dtype = {"float32": "F32", "bfloat16": "BF16"}[dtype]
    writer = jax.process_index() == 0
    if writer:
        os.makedirs(out_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tmp.", suffix=".safetensors")
        os.fchmod(fd, 0o666 & ~atomic.current_umask())
    try:
        with (os.fdopen(fd, "wb") if writer else open(os.devnull, "wb")) as f:
            f.write(_safetensors_header(plan, st_dtype, out_dtype.itemsize))
            for path, tensors in plan:
                host = mesh_lib.to_host(flat[path])  # every process joins the gather
                for layer, t in tensors:
                    a = host if layer is None else host[layer]
                    a = a.transpose(np.argsort(t.perm)).reshape(t.shape)
                    f.write(np.ascontiguousarray(a, dtype=out_dtype).tobytes())
            if writer:
                f.flush()
                os.fsync(f.fileno())
        if writer:
            os.replace(tmp, os.path.join(out_dir, WEIGHTS_FILE))
            atomic.write_text(os.path.join(out_dir, CONFIG_FILE), json.dumps(hf_cfg, indent=2))
    finally:
        if writer and os.path.exists(tmp):
            os.remove(tmp)
    mesh_lib.barrier("export_hf")


def main(argv=None) -> None:
    """`inspect DIR`: the family, the TransformerConfig and the tensors of a checkpoint."""
    parser = argparse.ArgumentParser(prog="python -m align.models.hf_checkpoint")
    parser.add_argument("command", choices=["inspect"])
    parser.add_argument("path")
    args = parser.parse_args(argv)
    family, cfg = read_hf_config(args.path)
    _, hf = _read_config_json(args.path)
    reader = _Reader(args.path)
    if _is_sequence_classification(hf, reader):
        family += " (sequence classification)"
        layout = {k: t for k, t in hf_layouts.tensor_layout(cfg).items() if k != ("unembed",)}
        layout.update(hf_layouts.score_layout(
            cfg, bias=hf_layouts.SCORE_BIAS in reader.entries))
        _check_tensors(reader, layout, tied=False)
    else:
        _check_tensors(reader, hf_layouts.tensor_layout(cfg), cfg.tie_embeddings)
    print(f"family {family}: {transformer.num_params(cfg):,} parameters")
    print(cfg)
    for name, e in sorted(reader.entries.items()):
        print(f"  {name} {e.dtype} {list(e.shape)} in {os.path.basename(e.file)}")


if __name__ == "__main__":
    main()
