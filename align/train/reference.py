"""Reference log-probs computed once per (dataset, reference parameters) and cached in the workdir.

The objective's own `reference_fields` computes them (a pure function of the reference, so the
cache holds exactly what the in-step reference would add), over the whole train split in
order; batches then read them by example_id.
The cache file is named by a fingerprint of the records, the tokenisation settings and the
reference parameters, so a second run reuses it and a changed dataset never reads stale values.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from align import mesh as mesh_lib

CACHE_DIR = "reference_cache"


def _jsonable(x):
    if isinstance(x, bytes):
        return x.decode("utf-8", "replace")
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def dataset_fingerprint(source, settings: Mapping[str, Any]) -> str:
    """sha256 over every record's content and the settings that shape the batches."""
    h = hashlib.sha256(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    for i in range(len(source)):
        record = source[i]
        h.update(json.dumps({k: _jsonable(v) for k, v in dict(record).items()},
                            sort_keys=True).encode())
    return h.hexdigest()


def params_fingerprint(params) -> str:
    """sha256 over each parameter's shape and its sum and sum of squares (computed on device)."""
    stats = jax.device_get(jax.tree.map(
        lambda x: jnp.stack([jnp.sum(x.astype(jnp.float32)),
                             jnp.sum(jnp.square(x.astype(jnp.float32)))]), params))
    leaves, _ = jax.tree_util.tree_flatten_with_path(stats)
    h = hashlib.sha256()
    for path, v in leaves:
        h.update(f"{jax.tree_util.keystr(path)}:{np.asarray(v).astype(np.float64).tobytes().hex()}"
                 .encode())
    shapes = jax.tree.map(lambda x: tuple(x.shape), params)
    h.update(repr(jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))).encode())
    return h.hexdigest()


def cache_path(workdir: str, fingerprint: str) -> str:
    return os.path.join(workdir, CACHE_DIR, f"{fingerprint[:32]}.npz")


def compute_table(batches: Iterator[Mapping[str, np.ndarray]], prepare_fn: Callable, num: int,
                  ) -> dict[str, np.ndarray]:
    """{field: [num, ...]} of what `prepare_fn(batch)` adds to each batch, by example_id."""
    table: dict[str, np.ndarray] = {}
    seen = np.zeros((num,), bool)
    for batch in batches:
        added = jax.device_get(prepare_fn(batch))
        ids = np.asarray(batch["example_id"])
        for k, v in added.items():
            v = np.asarray(v)
            if k not in table:
                table[k] = np.zeros((num,) + v.shape[1:], v.dtype)
            table[k][ids] = v
        seen[ids] = True
    if not seen.all():
        raise ValueError(f"reference cache: {int((~seen).sum())} of {num} records were not covered")
    return table


def load(path: str) -> dict[str, np.ndarray] | None:
    """The cached table, or None if it is missing or unreadable (then it is recomputed)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        print(f"reference cache {path} is unreadable ({e}); recomputing it", flush=True)
        return None


def save(path: str, table: Mapping[str, np.ndarray]) -> None:
    """Atomic: written to a sibling file, then renamed."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".part.npz"
    np.savez(tmp, **table)
    os.replace(tmp, path)


class WithReference:
    """A checkpointable batch iterator whose batches also carry the cached reference fields."""

    def __init__(self, iterator, table: Mapping[str, np.ndarray]):
        self._it, self._table = iterator, table

    def __iter__(self):
        return self

    def __next__(self):
        batch = dict(next(self._it))
        ids = np.asarray(batch["example_id"])
        for k, v in self._table.items():
            batch[k] = v[ids]
        return batch

    def get_state(self):
        return self._it.get_state()

    def set_state(self, state):
        self._it.set_state(state)


def padded(it, batch_size: int):
    """Batches padded to a fixed size by repeating their last row (a duplicate writes the same
    value)."""
    for batch in it:
        n = len(batch["example_id"])
        if n < batch_size:
            idx = np.concatenate([np.arange(n), np.full(batch_size - n, n - 1)])
            batch = {k: np.asarray(v)[idx] for k, v in batch.items()}
        yield batch


def table(setup, train_split) -> dict[str, np.ndarray]:
    """The reference fields of the whole train split of a Setup, loaded or computed once.

    train_split: its batches in order, once (read only when the cache is missing).
    """
    c, kind = setup.cfg.data, setup.objective.data
    source = setup.data.sources[kind]["train"]
    with open(setup.data.tokenizer.path, "rb") as f:
        tok_bytes = f.read()
    settings = {"kind": kind, "max_len": c.max_len, "max_prompt_len": c.max_prompt_len,
                "pad_id": setup.pad_id, "list_size": c.list_size,
                "objective": setup.objective.name,
                "tokenizer": hashlib.sha256(tok_bytes).hexdigest()}
    fingerprint = hashlib.sha256((dataset_fingerprint(source, settings) +
                                  params_fingerprint(setup.reference)).encode()).hexdigest()
    path = cache_path(setup.workdir, fingerprint)
    found = load(path)
    if found is not None:
        return found
    print(f"computing reference log-probs for {len(source)} {kind} records", flush=True)
    def fields(batch):
        gbatch = mesh_lib.to_global(batch, setup.mesh, setup.rules)
        return mesh_lib.to_host(setup.steps.reference_fields(setup.reference, gbatch))

    computed = compute_table(padded(train_split, setup.eval_batch_size), fields, len(source))
    if setup.primary:
        save(path, computed)
    mesh_lib.barrier("align-reference-cache")
    return computed
