"""Every objective runs one step from its config; DPO is mesh-invariant; the reference cache."""

import glob
import os

import jax
import numpy as np
import pytest

from align import config as config_lib
from align import objectives
from align.train import loop
from align.train import reference as reference_lib
from align.train import setup as setup_lib
from configs import online, preference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.n_heads=2",
        "--config.model.n_kv_heads=1", "--config.model.d_ff=64",
        "--config.data.num_train=64", "--config.data.num_test=16",
        "--config.data.num_prompts=16", "--config.data.batch_size=8",
        "--config.data.eval_batch_size=8", "--config.eval.num_samples=8",
        "--config.eval.max_new_tokens=6", "--config.eval.num_batches=1",
        "--config.train.progress=False", "--config.train.eval_every=0",
        "--config.init.workdir=", "--config.init.config="]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def _config(spec, data_dir, *overrides):
    return config_lib.resolve(os.path.join(ROOT, spec), TINY + [
        f"--config.data.data_dir={data_dir}", *overrides])


def _spec(name):
    if name == "sft":
        return "configs/sft.py:size=tiny,steps=1"
    if name in ("reward_model", "preference_model"):
        return f"configs/reward_model.py:objective={name},size=tiny,steps=1"
    if name in online.NAMES:
        return f"configs/online.py:objective={name},size=tiny,steps=1"
    return f"configs/preference.py:objective={name},size=tiny,steps=1"


def test_every_registered_objective_has_a_config():
    covered = (set(preference.names()) | set(online.NAMES)
               | {"sft", "reward_model", "preference_model"})
    assert covered == set(objectives.names())


@pytest.mark.parametrize("name", objectives.names())
def test_one_step_smoke_run(name, data_dir, tmp_path):
    # Sampling evaluation (compiled once per run) is exercised for one objective per family.
    sampling = name in ("sft", "dpo", "lipo_lambda", "nash_md")
    cfg = _config(_spec(name), data_dir, "--config.data.list_size=3",
                  "--config.online.max_new_tokens=6",
                  *([] if sampling else ["--config.eval.num_samples=0"]))
    setup = loop.build(cfg, str(tmp_path), devices=jax.devices()[:1])
    try:
        result = loop.train(setup)
    finally:
        setup.close()
    assert result["step"] == 1
    if name not in online.NAMES:  # online objectives have no held-out loss
        assert np.isfinite(result["eval"]["loss"])
    if sampling and name != "sft":
        assert np.isfinite(result["eval"]["kl"]) and 0 <= result["eval"]["win_rate"] <= 1
        samples = result["samples"]  # per-token KL: summed sequence KL over summed lengths
        assert result["eval"]["kl_per_token"] == pytest.approx(
            np.sum(samples["kl"]) / np.sum(samples["lengths"]), rel=1e-6)
    if setup.objective.model.name == "scalar":
        assert os.path.exists(tmp_path / "reward_offset.json")


def _dpo_losses_and_params(cfg, workdir, devices, steps=2):
    setup = loop.build(cfg, str(workdir), devices=devices)
    state = setup.spec.init_fn()
    it = loop.train_iterator(setup)
    losses = []
    for _ in range(steps):
        state, metrics = loop.advance(setup, state, next(it), 0)[:2]
        losses.append(float(metrics["loss"]))
    params = [np.asarray(x) for x in jax.tree.leaves(state["params"])]
    setup.close()
    return losses, params, setup


def test_dpo_step_on_a_2x4_mesh_equals_one_device(data_dir, tmp_path):
    spec = "configs/preference.py:objective=dpo,size=tiny,steps=2"
    one = _dpo_losses_and_params(_config(spec, data_dir, "--config.mesh.data=1"),
                                 tmp_path / "one", jax.devices()[:1])
    mesh = _dpo_losses_and_params(_config(spec, data_dir, "--config.mesh.data=2",
                                          "--config.mesh.fsdp=4"),
                                  tmp_path / "mesh", jax.devices())
    np.testing.assert_allclose(mesh[0], one[0], rtol=1e-5)
    for a, b in zip(mesh[1], one[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # At initialisation policy == reference, so the first DPO loss is log 2.
    np.testing.assert_allclose(one[0][0], np.log(2.0), rtol=1e-5)


@pytest.mark.parametrize("name", ["dpo", "lipo_lambda"])
def test_cached_reference_equals_in_step_reference(name, data_dir, tmp_path):
    spec = f"configs/preference.py:objective={name},size=tiny,steps=2"
    devices = jax.devices()[:2]
    in_step = _dpo_losses_and_params(_config(spec, data_dir, "--config.data.list_size=3"),
                                     tmp_path / "a", devices)
    cached = _dpo_losses_and_params(
        _config(spec, data_dir, "--config.data.list_size=3", "--config.reference.mode=cached"),
        tmp_path / "b", devices)
    np.testing.assert_allclose(cached[0], in_step[0], rtol=1e-5)
    for a, b in zip(cached[1], in_step[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert cached[2].frozen == {} and in_step[2].frozen  # the cached run never runs the reference


def _reference_table(setup):
    split = setup_lib.batches(setup, setup.objective.data, "train", train=False,
                              drop_remainder=False)
    return reference_lib.table(setup, split)


def test_reference_cache_is_reused_and_rebuilt_when_the_data_changes(data_dir, tmp_path, capsys):
    spec = "configs/preference.py:objective=dpo,size=tiny,steps=1"
    args = ["--config.reference.mode=cached"]
    for _ in range(2):  # the second run reuses the file
        cfg = _config(spec, data_dir, *args)
        setup = loop.build(cfg, str(tmp_path), devices=jax.devices()[:1])
        first = _reference_table(setup)
        setup.close()
    out = capsys.readouterr().out
    assert out.count("computing reference log-probs") == 1
    files = glob.glob(str(tmp_path / "reference_cache" / "*.npz"))
    assert len(files) == 1
    # Different labels (a noisier labeler) make different pairs: a new cache, never the stale one.
    cfg = _config(spec, data_dir, *args, "--config.task.temperature=3.0")
    setup = loop.build(cfg, str(tmp_path), devices=jax.devices()[:1])
    second = _reference_table(setup)
    setup.close()
    assert len(glob.glob(str(tmp_path / "reference_cache" / "*.npz"))) == 2
    assert not np.array_equal(first["ref_chosen_logp"], second["ref_chosen_logp"])
