"""A checkpoint step's manifest: what it must hold, to verify a restore against.

Every array's path, shape, dtype and a 64-bit checksum of its bits, the SHA-256 of the JSON host
state, and the SHA-256 of the manifest itself. The checksum is a sum over elements (mod 2**32)
of a mixing hash of (bits, global flat index), twice with different seeds. Each process sums
the blocks it holds (one replica of each) on their own devices, so no computation spans
processes, and the per-process sums are added with one all-gather: the result does not depend
on the sharding, and every single flipped bit changes it.
"""
# Dimensions: none; arrays keep their own shapes.
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

FORMAT = 1


class DamagedCheckpoint(Exception):
    """One step's files do not match its manifest (or its host state was rejected)."""


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser: every input bit affects every output bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def words_of(x):
    """The bits of `x` as uint32 words: one per element, two (a trailing axis) for 8-byte ones."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if x.dtype.itemsize == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if x.dtype.itemsize in (1, 2):
        unsigned = jnp.uint8 if x.dtype.itemsize == 1 else jnp.uint16
        return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    if x.dtype.itemsize == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    raise TypeError(f"no checksum for dtype {x.dtype}")


@jax.jit
def _block_checksum(x, starts, strides):
    """Two 32-bit sums of hash(bits, global flat index) over a block of an array's words
    (`starts`: the block's offset in the global array of words; `strides`: that array's)."""
    words = words_of(x)
    index = jnp.zeros(words.shape, jnp.uint32)
    for axis in range(words.ndim):
        index = index + (starts[axis] + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis)
                         ) * strides[axis]
    sums = []
    for seed in (0x9E3779B9, 0x7F4A7C15):
        term = _fmix32(words ^ _fmix32(index * jnp.uint32(0x01000193) + jnp.uint32(seed)))
        sums.append(jnp.sum(term, dtype=jnp.uint32))
    return jnp.stack(sums)


def _word_shape(leaf) -> tuple[int, ...]:
    shape = tuple(leaf.shape)
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return shape + tuple(jax.random.key_data(leaf).shape[len(shape):])
    itemsize = jnp.dtype(leaf.dtype).itemsize
    return shape + (2,) if itemsize == 8 and leaf.dtype != jnp.bool_ else shape


def describe(leaf) -> str:
    return f"{tuple(leaf.shape)} {jnp.dtype(leaf.dtype).name}"


def array_checksums(state: Any) -> dict[str, list]:
    """{path: [shape, dtype, checksum hex]} of every array of `state`.

    Each process sums the blocks it holds (one replica of each), each on its own device, so
    no computation spans processes; the per-process sums are then added up (mod 2**32) with
    one all-gather. The result does not depend on the sharding.
    """
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    paths = [jax.tree_util.keystr(p) for p, _ in flat]
    leaves = [x if isinstance(x, jax.Array) else jnp.asarray(x) for _, x in flat]
    pending = []
    for i, leaf in enumerate(leaves):
        shape = _word_shape(leaf)
        strides = [int(np.prod(shape[k + 1:], dtype=np.uint64)) % 2**32 for k in range(len(shape))]
        for shard in leaf.addressable_shards:
            if shard.replica_id != 0:
                continue
            starts = [sl.start or 0 for sl in shard.index]
            starts += [0] * (len(shape) - len(starts))
            pending.append((i, _block_checksum(shard.data, np.asarray(starts, np.uint32),
                                               np.asarray(strides, np.uint32))))
    sums = np.zeros((len(leaves), 2), np.uint64)
    for i, value in pending:
        sums[i] += np.asarray(value, np.uint64)
    sums %= 2**32
    if jax.process_count() > 1:  # uint32 across (jax has no 64-bit integers by default)
        gathered = multihost_utils.process_allgather(sums.astype(np.uint32))
        sums = np.sum(np.asarray(gathered, np.uint64), axis=0) % 2**32
    return {path: [list(leaf.shape), jnp.dtype(leaf.dtype).name,
                   "".join(f"{int(v):08x}" for v in sums[i])]
            for i, (path, leaf) in enumerate(zip(paths, leaves))}


def digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make(state: Any, encoded_extra: Any) -> dict:
    body = {"format": FORMAT, "arrays": array_checksums(state),
            "extra": digest(encoded_extra)}
    return {**body, "self": digest(body)}


def check(manifest: Any) -> dict:
    """The manifest's body; raises DamagedCheckpoint if it is malformed or altered."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("arrays"), dict):
        raise DamagedCheckpoint("its manifest is malformed")
    body = {k: v for k, v in manifest.items() if k != "self"}
    if manifest.get("self") != digest(body):
        raise DamagedCheckpoint("its manifest does not match its own checksum (the file was "
                                "changed or damaged)")
    if body.get("format") != FORMAT:
        raise DamagedCheckpoint(f"its manifest has format {body.get('format')!r}, expected "
                                f"{FORMAT}")
    return body


def fit(arrays: Mapping[str, list], abstract: Any) -> list[str]:
    """How the manifest's arrays differ from the requested state's (empty when they fit)."""
    wanted = {jax.tree_util.keystr(p): leaf
              for p, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    problems = []
    for path, leaf in wanted.items():
        if path not in arrays:
            problems.append(f"{path} is not in the checkpoint")
        elif (list(leaf.shape), jnp.dtype(leaf.dtype).name) != tuple(arrays[path][:2]):
            shape, dtype = arrays[path][:2]
            problems.append(f"{path} is {tuple(shape)} {dtype} there and {describe(leaf)} here")
    problems += [f"{path} is in the checkpoint but not in this run's state"
                 for path in arrays if path not in wanted]
    return sorted(problems, key=lambda p: not p.startswith("['params']"))  # parameters first
