"""Checkpointer: round trips (sharded), retention, corruption fallback, killed saves."""
# Dimensions: none beyond the tiny arrays' own shapes.
import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from align.train.checkpoint import Checkpointer, CheckpointError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _mesh():
    return jax.make_mesh((2, 4), ("data", "fsdp"))


def _state(mesh, scale=1.0):
    """A train-state-shaped pytree: sharded params, optax namedtuples, int step, key data."""
    shard = NamedSharding(mesh, P("data", "fsdp"))
    repl = NamedSharding(mesh, P())
    params = {
        "w": jax.device_put(scale * jnp.arange(64.0).reshape(8, 8), shard),
        "b": jax.device_put(scale * jnp.linspace(-1.0, 1.0, 4), NamedSharding(mesh, P("fsdp"))),
    }
    opt_state = optax.adam(1e-3).init(params)
    opt_state = jax.tree.map(lambda x: x + scale, opt_state)  # distinct from zeros
    return {
        "step": jax.device_put(jnp.int32(7), repl),
        "params": params,
        "opt_state": opt_state,
        "rng": jax.device_put(jax.random.key_data(jax.random.key(3)), repl),
        "objective": {"kl_coef": jax.device_put(jnp.float32(0.2 * scale), repl)},
    }


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _assert_same(restored, expected):
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _step_dirs(directory):
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _save_steps(directory, steps, *, keep=3):
    mesh = _mesh()
    with Checkpointer(directory, keep=keep) as ckpt:
        for step in steps:
            ckpt.save(step, _state(mesh, scale=float(step)), extra={"step": step})
    return mesh


def test_round_trip_restores_values_and_requested_shardings(tmp_path):
    mesh = _mesh()
    state = _state(mesh)
    extra = {
        "data": {"iterator": b'{"next_index": 12}\x00\xff', "epochs": [0, 1], "name": "pairs"},
        "meta": {"loss": 0.25, "done": False, "note": None, "shape": (2, 4)},
        "np_int": np.int64(5),
    }
    ckpt = Checkpointer(str(tmp_path), keep=3)
    assert ckpt.latest_step() is None
    ckpt.save(7, state, extra=extra)
    assert ckpt.latest_step() == 7

    got_state, got_extra, step = ckpt.restore(_abstract(state))
    assert step == 7
    _assert_same(got_state, state)
    assert type(got_state["opt_state"][0]) is type(state["opt_state"][0])  # ScaleByAdamState
    for got, want in zip(jax.tree.leaves(got_state), jax.tree.leaves(state)):
        assert got.sharding == want.sharding
    assert got_extra == {**extra, "np_int": 5}
    assert isinstance(got_extra["data"]["iterator"], bytes)
    assert isinstance(got_extra["meta"]["shape"], tuple)

    # Restoring into other shardings reads straight into them.
    other = {
        "w": NamedSharding(mesh, P("fsdp", "data")),
        "b": NamedSharding(mesh, P()),
    }
    target = _abstract(state)
    target["params"] = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=other[k])
        for k, v in target["params"].items()
    }
    resharded, _, _ = ckpt.restore(target)
    assert resharded["params"]["w"].sharding == other["w"]
    assert resharded["params"]["b"].sharding == other["b"]
    np.testing.assert_array_equal(np.asarray(resharded["params"]["w"]),
                                  np.asarray(state["params"]["w"]))
    ckpt.close()


def test_no_checkpoint_returns_none(tmp_path):
    mesh = _mesh()
    with Checkpointer(str(tmp_path / "empty")) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.restore(_abstract(_state(mesh))) is None


def test_keep_deletes_oldest_steps(tmp_path):
    mesh = _save_steps(str(tmp_path), [1, 2, 3, 4], keep=2)
    assert _step_dirs(tmp_path) == [3, 4]
    with Checkpointer(str(tmp_path), keep=2) as ckpt:
        assert ckpt.latest_step() == 4
        state, extra, step = ckpt.restore(_abstract(_state(mesh)))
    assert (step, extra) == (4, {"step": 4})
    _assert_same(state, _state(mesh, scale=4.0))


def _garble_state_files(step_dir):
    for path in glob.glob(os.path.join(step_dir, "state", "**"), recursive=True):
        if os.path.isfile(path):
            with open(path, "wb") as f:
                f.write(b"not a checkpoint" * 4)


def _truncate_array_data(step_dir):
    data = [p for p in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
            if os.path.isfile(p)]
    assert data, "expected array data files under state/**/d/"
    for path in data:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


def _delete_extra(step_dir):
    extra_files = [p for p in glob.glob(os.path.join(step_dir, "extra", "*")) if os.path.isfile(p)]
    assert extra_files
    for path in extra_files:
        os.remove(path)


# Orbax leaves a tensorstore callback behind when a read fails; it fires on a closed event loop.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("corrupt", [_garble_state_files, _truncate_array_data, _delete_extra])
def test_corrupt_newest_falls_back_to_previous(tmp_path, caplog, corrupt):
    mesh = _save_steps(str(tmp_path), [1, 2, 3])
    corrupt(str(tmp_path / "3"))
    caplog.set_level(logging.WARNING, logger="align.train.checkpoint")
    with Checkpointer(str(tmp_path)) as ckpt:
        state, extra, step = ckpt.restore(_abstract(_state(mesh)))
        assert step == 2 and extra == {"step": 2}
        _assert_same(state, _state(mesh, scale=2.0))
        messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("step 3" in m and "unreadable" in m for m in messages), messages
        # The bad step is set aside, so training can write step 3 again.
        assert ckpt.latest_step() == 2
        assert os.path.isdir(tmp_path / "3.unreadable")
        ckpt.save(3, _state(mesh, scale=30.0), extra={"step": 3, "again": True})
        state, extra, step = ckpt.restore(_abstract(_state(mesh)))
    assert step == 3 and extra == {"step": 3, "again": True}
    _assert_same(state, _state(mesh, scale=30.0))


def test_all_unreadable_raises_naming_each_step(tmp_path):
    mesh = _save_steps(str(tmp_path), [1, 2])
    for step in (1, 2):
        _garble_state_files(str(tmp_path / str(step)))
    with Checkpointer(str(tmp_path)) as ckpt:
        with pytest.raises(CheckpointError, match=r"step 2: .*step 1: "):
            ckpt.restore(_abstract(_state(mesh)))
    assert _step_dirs(tmp_path) == [1, 2]  # nothing is set aside without a good step


def test_leftover_tmp_dir_of_a_killed_save_is_ignored(tmp_path):
    mesh = _save_steps(str(tmp_path), [1])
    # What a save of step 2 killed before its final rename leaves: a partial temporary dir
    # (named as Orbax names it while writing).
    leftover = tmp_path / "2.orbax-checkpoint-tmp"
    shutil.copytree(tmp_path / "1", leftover)
    shutil.rmtree(leftover / "extra")
    _truncate_array_data(str(leftover))
    with Checkpointer(str(tmp_path)) as ckpt:
        assert ckpt.latest_step() == 1
        state, extra, step = ckpt.restore(_abstract(_state(mesh)))
        assert (step, extra) == (1, {"step": 1})
        _assert_same(state, _state(mesh, scale=1.0))
        ckpt.save(2, _state(mesh, scale=2.0), extra={"step": 2})
        assert ckpt.latest_step() == 2
        _, extra, step = ckpt.restore(_abstract(_state(mesh)))
        assert (step, extra) == (2, {"step": 2})
    assert _step_dirs(tmp_path) == [1, 2]
    assert not leftover.exists()


_KILLED_WRITER = textwrap.dedent("""
    import sys
    import jax.numpy as jnp
    from align.train.checkpoint import Checkpointer
    ckpt = Checkpointer(sys.argv[1], keep=2)
    step = 0
    while True:
        step += 1
        state = {"x": jnp.full((256, 512), step, jnp.float32), "step": jnp.int32(step)}
        ckpt.save(step, state, extra={"step": step, "data": bytes([step % 256])})
        print(step, flush=True)
""")


def test_sigkill_during_saves_then_resume(tmp_path):
    directory = str(tmp_path / "run")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, directory], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        saved = 0
        while saved < 3:
            line = proc.stdout.readline()
            assert line, f"writer died early: {proc.stderr.read()[-2000:]}"
            saved = int(line)
            assert time.monotonic() < deadline
        time.sleep(0.02)  # lands the kill somewhere inside a later save
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()

    repl = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {"x": jax.ShapeDtypeStruct((256, 512), jnp.float32, sharding=repl),
                "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=repl)}
    with Checkpointer(directory, keep=2) as ckpt:
        state, extra, step = ckpt.restore(abstract)
        assert step >= 3
        assert extra == {"step": step, "data": bytes([step % 256])}
        assert int(state["step"]) == step
        np.testing.assert_array_equal(np.asarray(state["x"]), np.full((256, 512), step))
        ckpt.save(step + 1, state, extra={"step": step + 1})
        assert ckpt.latest_step() == step + 1
    assert _step_dirs(directory) == [step, step + 1]


def test_bad_inputs_name_the_problem(tmp_path):
    mesh = _mesh()
    state = _state(mesh)
    with Checkpointer(str(tmp_path)) as ckpt:
        with pytest.raises(TypeError, match=r"extra\['data'\]\[1\]: object"):
            ckpt.save(1, state, extra={"data": [1, object()]})
        with pytest.raises(TypeError, match=r"extra\['meta'\]: dict keys must be str"):
            ckpt.save(1, state, extra={"meta": {3: "x"}})
        assert ckpt.latest_step() is None  # a rejected save writes nothing

        ckpt.save(5, state, extra={"step": 5})
        with pytest.raises(ValueError, match=r"step 4 is older than the newest checkpoint"):
            ckpt.save(4, state, extra={})
        ckpt.save(5, _state(mesh, scale=9.0), extra={"step": "ignored"})  # same step: kept as is
        _, extra, step = ckpt.restore(_abstract(state))
        assert (step, extra) == (5, {"step": 5})

        no_sharding = _abstract(state)
        no_sharding["params"]["w"] = jax.ShapeDtypeStruct((8, 8), jnp.float32)
        with pytest.raises(ValueError, match=r"abstract_state\['params'\]\['w'\].*sharding"):
            ckpt.restore(no_sharding)
    with pytest.raises(ValueError, match="keep must be an int >= 1"):
        Checkpointer(str(tmp_path), keep=0)
