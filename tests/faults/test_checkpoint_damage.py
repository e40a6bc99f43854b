"""Damaged checkpoints never load silently: checksums, manifests, host state, model mismatch.

Each damaged step must either be refused, with the run falling back to the previous step, or
(for checkpoints of another model) refused with one sentence that names the difference.
"""
# Dimensions: none beyond the tiny arrays' own shapes.
import glob
import json
import logging
import os
import random
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from align.train import manifest as manifest_lib
from align.train.checkpoint import Checkpointer, CheckpointError

# Orbax leaves a tensorstore callback behind when a read fails; it fires on a closed event loop.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _mesh():
    return jax.make_mesh((2, 4), ("data", "fsdp"))


def _state(mesh, scale=1.0, width=8):
    shard = NamedSharding(mesh, P("data", "fsdp"))
    params = {"w": jax.device_put(scale * jnp.arange(8.0 * width).reshape(8, width), shard),
              "b": jax.device_put(scale * jnp.linspace(-1.0, 1.0, 4), NamedSharding(mesh, P("fsdp")))}
    opt_state = jax.tree.map(lambda x: x + scale, optax.adam(1e-3).init(params))
    return {"step": jnp.int32(int(scale)), "params": params, "opt_state": opt_state}


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _same(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _save(directory, steps, mesh, width=8):
    with Checkpointer(str(directory)) as ckpt:
        for step in steps:
            ckpt.save(step, _state(mesh, float(step), width), extra={"step": step, "data": [step]})


def _files(step_dir, item):
    return sorted(p for p in glob.glob(os.path.join(step_dir, item, "**"), recursive=True)
                  if os.path.isfile(p))


def _restore(directory, mesh, accept=None):
    with Checkpointer(str(directory)) as ckpt:
        return ckpt.restore(_abstract(_state(mesh)), accept=accept)


# ------------------------------------------------------------------ the checksum itself

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.int8, jnp.int32, jnp.bool_,
                                   jnp.uint32])
def test_every_single_bit_flip_changes_the_checksum(dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5)) * 4).astype(dtype)
    base = manifest_lib.array_checksums({"x": x})["['x']"][2]
    words = manifest_lib.words_of(x)
    bits = 1 if dtype == jnp.bool_ else 8 * jnp.dtype(dtype).itemsize
    flat = np.asarray(words).reshape(-1)
    for i in range(flat.size):
        for b in range(bits):
            flipped = flat.copy()
            flipped[i] ^= np.uint32(1 << b)
            got = manifest_lib.array_checksums({"x": jnp.asarray(flipped.reshape(words.shape))})
            assert got["['x']"][2] != base, (i, b)


def test_swapped_elements_and_shardings():
    x = jnp.arange(64.0).reshape(8, 8)
    base = manifest_lib.array_checksums({"x": x})["['x']"][2]
    # Moving values between positions changes the checksum (the index is hashed in).
    assert manifest_lib.array_checksums({"x": x.T})["['x']"][2] != base
    assert manifest_lib.array_checksums({"x": x[::-1]})["['x']"][2] != base
    # The same values in any sharding give the same checksum.
    mesh = _mesh()
    for spec in (P("data", "fsdp"), P("fsdp", None), P(None, "data"), P()):
        sharded = jax.device_put(x, NamedSharding(mesh, spec))
        assert manifest_lib.array_checksums({"x": sharded})["['x']"][2] == base, spec


# ------------------------------------------------------------------ damaged steps fall back

def test_valid_arrays_of_another_state_are_refused(tmp_path):
    """Array files that decode fine but hold other values (what a flip inside compressed data
    can do) are caught by the checksums, and the run falls back."""
    mesh = _mesh()
    _save(tmp_path / "run", [1, 2, 3], mesh)
    _save(tmp_path / "other", [3], mesh)  # the same structure, other values (scale 3 vs 3 + w)
    other = Checkpointer(str(tmp_path / "other2"))
    other.save(3, _state(mesh, 7.0), extra={"step": 3, "data": [3]})
    other.close()
    shutil.rmtree(tmp_path / "run" / "3" / "state")
    shutil.copytree(tmp_path / "other2" / "3" / "state", tmp_path / "run" / "3" / "state")
    state, extra, step = _restore(tmp_path / "run", mesh)
    assert step == 2 and extra["step"] == 2
    assert _same(state, _state(mesh, 2.0))
    assert os.path.isdir(tmp_path / "run" / "3.unreadable")
    log = open(tmp_path / "debug.log").read()
    assert "do not match the checksums" in log


def test_random_bit_flips_in_array_data_never_load(tmp_path):
    mesh = _mesh()
    rng = random.Random(0)
    for trial in range(6):
        run = tmp_path / f"run{trial}"
        _save(run, [1, 2], mesh)
        path = rng.choice(_files(str(run / "2"), "state"))
        data = bytearray(open(path, "rb").read())
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        open(path, "wb").write(bytes(data))
        restored = _restore(run, mesh)
        state, _, step = restored
        # Either the flip is caught (fallback to step 1), or it hit bytes that do not affect
        # the values read (e.g. padding in an index file) and step 2 is exactly right.
        if step == 2:
            assert _same(state, _state(mesh, 2.0)), (trial, path, pos)
        else:
            assert step == 1 and _same(state, _state(mesh, 1.0))


@pytest.mark.parametrize("damage", ["truncate", "delete_state_file", "delete_extra",
                                    "delete_manifest_file", "garble_manifest"])
def test_truncated_or_deleted_files_fall_back(tmp_path, damage, caplog):
    mesh = _mesh()
    _save(tmp_path, [1, 2, 3], mesh)
    step_dir = str(tmp_path / "3")
    if damage == "truncate":
        for path in _files(step_dir, "state"):
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    elif damage == "delete_state_file":
        for path in _files(step_dir, "state"):  # the array data files
            if os.path.basename(os.path.dirname(path)) == "d":
                os.remove(path)
    elif damage == "delete_extra":
        for path in _files(step_dir, "extra"):
            os.remove(path)
    elif damage == "delete_manifest_file":
        for path in _files(step_dir, "manifest"):
            os.remove(path)
    else:
        path = [p for p in _files(step_dir, "manifest") if p.endswith("metadata")][0]
        text = open(path).read()
        open(path, "w").write(text.replace("[8, 8]", "[8, 9]", 1))
    caplog.set_level(logging.WARNING, logger="align.train.checkpoint")
    state, extra, step = _restore(tmp_path, mesh)
    assert step == 2 and extra == {"step": 2, "data": [2]}
    assert _same(state, _state(mesh, 2.0))
    messages = [r.getMessage() for r in caplog.records]
    assert any("step 3" in m and "unreadable" in m for m in messages), messages
    assert all(len(m) < 600 for m in messages), messages  # the cause, not a TensorStore spec


def test_host_state_with_valid_json_but_other_contents_falls_back(tmp_path):
    mesh = _mesh()
    _save(tmp_path, [1, 2], mesh)
    path = [p for p in _files(str(tmp_path / "2"), "extra") if p.endswith("metadata")][0]
    values = json.load(open(path))
    values["data"] = {"not": "an iterator state"}
    json.dump(values, open(path, "w"))
    _, extra, step = _restore(tmp_path, mesh)
    assert step == 1 and extra == {"step": 1, "data": [1]}


def test_host_state_the_caller_rejects_falls_back(tmp_path):
    """A step whose host state the loader cannot use (here: written without a manifest, as
    older versions did, so only `accept` can catch it) is unreadable too."""
    mesh = _mesh()
    _save(tmp_path, [1, 2], mesh)

    def accept(extra):
        if extra["data"] != [1]:
            raise TypeError("a data-loader state of another format")

    _, extra, step = _restore(tmp_path, mesh, accept=accept)
    assert step == 1
    assert os.path.isdir(tmp_path / "2.unreadable")


def test_step_without_a_manifest_restores_unverified(tmp_path, caplog):
    mesh = _mesh()
    _save(tmp_path, [1], mesh)
    shutil.rmtree(tmp_path / "1" / "manifest")
    caplog.set_level(logging.WARNING, logger="align.train.checkpoint")
    with Checkpointer(str(tmp_path)) as ckpt:
        state, _, step = ckpt.restore(_abstract(_state(mesh)))
        assert step == 1 and _same(state, _state(mesh, 1.0))
        assert "without verification" in ckpt.describe_latest()
    assert any("without checksums" in r.getMessage() for r in caplog.records)


def test_another_models_checkpoints_are_refused_in_one_sentence(tmp_path):
    mesh = _mesh()
    _save(tmp_path, [1, 2], mesh, width=16)
    with pytest.raises(CheckpointError) as info:
        _restore(tmp_path, mesh)
    message = str(info.value)
    assert "hold another model" in message and "['params']['w'] is (8, 16) float32 there and " \
        "(8, 8) float32 here" in message, message
    assert len(message) < 500 and "\n" not in message
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]  # nothing renamed
    assert "is (8, 16) float32 there" in open(tmp_path.parent / "debug.log").read()


def test_nothing_readable_is_one_line_per_step(tmp_path):
    mesh = _mesh()
    _save(tmp_path, [1, 2], mesh)
    for step in (1, 2):
        for path in _files(str(tmp_path / str(step)), "state"):
            open(path, "wb").write(b"garbage" * 3)
    with pytest.raises(CheckpointError) as info:
        _restore(tmp_path, mesh)
    message = str(info.value)
    assert "step 2: " in message and "step 1: " in message and "debug.log" in message
    assert len(message) < 800 and "TensorStore" not in message, message
