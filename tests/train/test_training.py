"""End-to-end training: sharded equals single-device, NaN stop, corrupt fallback (kill -9 and
other faults: tests/faults/)."""

import os

import jax
import numpy as np
import pytest

from align import config as config_lib
from align.train import checkpoint as ckpt_lib
from align.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = "configs/sft.py:size=tiny,steps=6"
SMALL_DATA = ["--config.data.num_train=512", "--config.data.num_test=64",
              "--config.data.num_prompts=64", "--config.data.batch_size=16",
              "--config.data.eval_batch_size=16", "--config.eval.num_samples=8",
              "--config.eval.max_new_tokens=8", "--config.eval.num_batches=1",
              "--config.train.progress=False"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def _cfg(data_dir, *overrides):
    return config_lib.resolve(
        os.path.join(ROOT, QUICK), SMALL_DATA + [f"--config.data.data_dir={data_dir}",
                                                 *overrides])


def _params(state):
    return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_training_equals_single_device(shape, data_dir, tmp_path):
    """After 4 SFT steps (2 accumulation microbatches each), losses and params agree to 1e-5."""
    results = {}
    for name, mesh_shape in (("single", (1, 1, 1)), ("sharded", shape)):
        cfg = _cfg(data_dir, f"--config.mesh.data={mesh_shape[0]}",
                   f"--config.mesh.fsdp={mesh_shape[1]}", f"--config.mesh.tensor={mesh_shape[2]}",
                   "--config.optim.accum_steps=2")
        devices = jax.devices()[:int(np.prod(mesh_shape))]
        setup = loop.build(cfg, str(tmp_path / name), devices=devices)
        state = setup.spec.init_fn()
        it = loop.train_iterator(setup)
        losses = []
        for _ in range(4):
            state, metrics = loop.advance(setup, state, next(it), 0)[:2]
            losses.append(float(metrics["loss"]))
        if name == "sharded" and shape[1] * shape[2] > 1:
            specs = {str(x.sharding.spec) for x in jax.tree.leaves(state["params"])}
            assert any(s != "PartitionSpec()" and "None, None" not in s for s in specs), specs
        results[name] = (losses, _params(state))
        setup.close()
    np.testing.assert_allclose(results["sharded"][0], results["single"][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(results["sharded"][1], results["single"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert results["single"][0][-1] < results["single"][0][0]


def test_nan_loss_stops_cleanly_and_keeps_last_good_checkpoint(data_dir, tmp_path):
    cfg = _cfg(data_dir, "--config.optim.lr=1e30", "--config.optim.warmup_steps=0",
               "--config.optim.grad_clip=0.0", "--config.train.checkpoint_every=1",
               "--config.train.eval_every=0")
    setup = loop.build(cfg, str(tmp_path), devices=jax.devices()[:2])
    with pytest.raises(loop.NonFiniteLossError, match=r"non-finite loss .* at step \d+.*the "
                       r"newest checkpoint is step \d+ .*written by this run with checksums"):
        loop.train(setup)
    last_good = setup.checkpointer.latest_step()
    setup.close()
    assert last_good is not None and last_good >= 1
    with ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")) as ckpt:
        state, _, step = ckpt.restore(setup.spec.abstract)
    assert step == last_good
    assert all(np.isfinite(x).all() for x in _params(state))


def test_corrupt_latest_checkpoint_falls_back_on_resume(data_dir, tmp_path, caplog):
    cfg = _cfg(data_dir, "--config.train.checkpoint_every=2", "--config.train.eval_every=0")
    setup = loop.build(cfg, str(tmp_path), devices=jax.devices()[:2])
    loop.train(setup)
    setup.close()
    latest = tmp_path / "checkpoints" / "6"
    for root, _, files in os.walk(latest):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    setup = loop.build(cfg, str(tmp_path), devices=jax.devices()[:2])
    with caplog.at_level("WARNING"):
        state, step = loop.restore_or_init(setup, loop.train_iterator(setup))
    setup.close()
    assert step == 4
    assert "checkpoint step 6" in caplog.text and "unreadable" in caplog.text
