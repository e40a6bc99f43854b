"""Population training: P members in one jit equal P runs of their own.

Member p of a population is a single run with its seed (and swept value) under `jax.vmap`:
after a few steps its parameters and losses must equal that run's, on one device and sharded.
"""

import json
import os

import jax
import numpy as np
import pytest

from align import config as config_lib
from align import errors
from align.train import loop
from align.train import metrics as metrics_lib
from align.train import population as population_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["--config.data.num_train=512", "--config.data.num_test=64",
         "--config.data.num_prompts=64", "--config.data.batch_size=16",
         "--config.data.eval_batch_size=16", "--config.eval.num_samples=8",
         "--config.eval.max_new_tokens=8", "--config.eval.num_batches=1",
         "--config.train.progress=False"]
SFT = "configs/sft.py:size=tiny,steps=3"
DPO = "configs/preference.py:objective=dpo,size=tiny,steps=3"
# DPO from a random initialisation: each member's reference is its own initial policy.
NO_START = ["--config.init.workdir=", "--config.init.config="]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def _cfg(data_dir, config, *overrides):
    return config_lib.resolve(os.path.join(ROOT, config),
                              SMALL + [f"--config.data.data_dir={data_dir}", *overrides])


def _steps(cfg, workdir, devices, n=3):
    """(losses per step, final params as numpy leaves) after n steps from a fresh state."""
    setup = loop.build(cfg, str(workdir), devices=devices)
    try:
        state, it, losses = loop.initial_state(setup), loop.train_iterator(setup), []
        for step in range(n):
            state, metrics, _ = loop.advance(setup, state, next(it), step)
            losses.append(np.asarray(metrics["loss"]))
        return np.stack(losses), [np.asarray(x) for x in jax.tree.leaves(state["params"])], state
    finally:
        setup.close()


def _close(a, b, tol=2e-5):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_split_population_members_equal_runs_with_their_seeds(data_dir, tmp_path):
    dev = jax.devices()[:1]
    pop_loss, pop_params, _ = _steps(
        _cfg(data_dir, SFT, "--config.population.size=2", "--config.population.data=split"),
        tmp_path / "pop", dev)
    assert pop_loss.shape == (3, 2)
    for p, seed in enumerate((0, 1)):
        loss, params, _ = _steps(_cfg(data_dir, SFT, f"--config.seed={seed}"),
                                 tmp_path / f"seed{seed}", dev)
        _close(pop_loss[:, p], loss)
        for a, b in zip(pop_params, params):
            _close(a[p], b)
    # The members really differ (other initialisation and data order).
    assert not np.allclose(pop_params[0][0], pop_params[0][1])


def test_swept_members_equal_runs_with_their_value(data_dir, tmp_path):
    """A β sweep of DPO with a shared data order; each member's reference is its own start."""
    dev = jax.devices()[:1]
    pop_loss, pop_params, _ = _steps(
        _cfg(data_dir, DPO, *NO_START, "--config.population.size=2",
             "--config.population.sweep=objective.beta=0.1,0.5"), tmp_path / "pop", dev)
    for p, beta in enumerate((0.1, 0.5)):
        loss, params, _ = _steps(_cfg(data_dir, DPO, *NO_START, f"--config.objective.beta={beta}"),
                                 tmp_path / f"beta{beta}", dev)
        _close(pop_loss[:, p], loss)
        for a, b in zip(pop_params, params):
            _close(a[p], b)
    assert not np.allclose(pop_loss[-1, 0], pop_loss[-1, 1])


def test_a_loss_sweep_trains_each_block_with_its_own_objective(data_dir, tmp_path):
    """objective.name=dpo,ipo: members 0-1 are DPO runs (seeds 0, 1, each with its own data
    order), 2-3 IPO runs with IPO's own defaults, all in one jit; β carries over only to the
    objective that has it."""
    dev = jax.devices()[:1]
    pop_loss, pop_params, _ = _steps(
        _cfg(data_dir, DPO, *NO_START, "--config.objective.beta=0.3",
             "--config.population.size=4", "--config.population.data=split",
             "--config.population.sweep=objective.name=dpo,ipo"),
        tmp_path / "pop", dev)
    runs = [("dpo", 0, ["--config.objective.beta=0.3"]), ("dpo", 1, ["--config.objective.beta=0.3"]),
            ("ipo", 0, []), ("ipo", 1, [])]
    for p, (name, seed, extra) in enumerate(runs):
        loss, params, _ = _steps(
            _cfg(data_dir, f"configs/preference.py:objective={name},size=tiny,steps=3", *NO_START,
                 f"--config.seed={seed}", *extra), tmp_path / f"{name}{seed}", dev)
        _close(pop_loss[:, p], loss)
        for a, b in zip(pop_params, params):
            _close(a[p], b)


def test_a_string_setting_is_swept_by_groups(data_dir, tmp_path):
    """LiPO-λ's `weighting` (a string) swept by groups: each block equals its own run. (The two
    weightings here do not depend on the scores' ranks: from a random start the policy is its
    own reference, every score is 0 at step 0, and ranks of exact ties follow float rounding.)"""
    lipo = "configs/preference.py:objective=lipo_lambda,size=tiny,steps=2"
    dev = jax.devices()[:1]
    pop_loss, _, _ = _steps(
        _cfg(data_dir, lipo, *NO_START, "--config.population.size=2",
             "--config.population.sweep=objective.weighting=constant,constant_discount"),
        tmp_path / "pop", dev, n=2)
    for p, weighting in enumerate(("constant", "constant_discount")):
        loss, _, _ = _steps(_cfg(data_dir, lipo, *NO_START,
                                 f"--config.objective.weighting={weighting}"),
                            tmp_path / weighting, dev, n=2)
        _close(pop_loss[:, p], loss)


def test_sharded_population_equals_single_device(data_dir, tmp_path):
    """4 members (2 β × 2 seeds) on a (data 2, fsdp 2) mesh: the member axis is split over
    `data`, each member's parameters over `fsdp`; the result equals one device's."""
    sweep = ["--config.population.size=4", "--config.population.sweep=objective.beta=0.1,0.5"]
    one_loss, one_params, _ = _steps(_cfg(data_dir, DPO, *NO_START, *sweep),
                                     tmp_path / "one", jax.devices()[:1])
    loss, params, state = _steps(
        _cfg(data_dir, DPO, *NO_START, *sweep, "--config.mesh.data=2", "--config.mesh.fsdp=2"),
        tmp_path / "sharded", jax.devices()[:4])
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(state["params"])}
    assert all(s.startswith(("PartitionSpec('data'", "P('data'")) for s in specs), specs
    assert any("fsdp" in s for s in specs), specs
    _close(loss, one_loss)
    for a, b in zip(params, one_params):
        _close(a, b)


def test_population_resumes_exactly_and_logs_every_member(data_dir, tmp_path, monkeypatch):
    args = ["--config.population.size=2", "--config.population.data=split",
            "--config.train.steps=4", "--config.train.checkpoint_every=2",
            "--config.train.eval_every=2", "--config.train.log_every=1"]
    cfg = _cfg(data_dir, SFT, *args)

    def final(workdir):
        setup = loop.build(cfg, str(workdir), devices=jax.devices()[:2])
        try:
            result = loop.train(setup)
            return result, [np.asarray(x) for x in jax.tree.leaves(
                setup.checkpointer.restore(setup.spec.abstract)[0]["params"])]
        finally:
            setup.close()

    whole, whole_params = final(tmp_path / "whole")
    # The same run stopped during step 4 (after the checkpoint of step 2), then rerun.
    advance, calls = loop.advance, []

    def stop_at_step_4(setup, state, batch, step):
        calls.append(step)
        if step == 3 and len(calls) == 4:
            raise KeyboardInterrupt
        return advance(setup, state, batch, step)

    monkeypatch.setattr(loop, "advance", stop_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        final(tmp_path / "resumed")
    resumed, resumed_params = final(tmp_path / "resumed")
    for a, b in zip(whole_params, resumed_params):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(whole["eval"]["loss"], resumed["eval"]["loss"])

    members = metrics_lib.read_metrics(str(tmp_path / "resumed"), members=True)
    means = metrics_lib.read_metrics(str(tmp_path / "resumed"))
    train_steps = [r["step"] for r in members if "train/loss" in r]
    assert train_steps == [1, 2, 3, 4]  # nothing logged twice across the resume
    for row, mean in zip([r for r in members if "train/loss" in r],
                         [r for r in means if "train/loss" in r]):
        assert len(row["train/loss"]) == 2
        assert mean["train/loss"] == pytest.approx(np.mean(row["train/loss"]))
    with open(tmp_path / "resumed" / population_lib.MEMBERS_FILE) as f:
        assert [m["seed"] for m in json.load(f)["members"]] == [0, 1]
    assert len(whole["eval"]["loss"]) == 2


@pytest.mark.parametrize("overrides, message", [
    (["--config.population.sweep=objective.tau=0.1,0.2"], "has no setting 'tau'"),
    (["--config.population.size=3", "--config.population.sweep=objective.beta=0.1,0.2"],
     "multiple of the 2 swept values"),
    (["--config.population.sweep=optim.lr=0.1,0.2"], "only a setting of the objective"),
    (["--config.population.sweep=objective.beta=0.1,x"], "'x' is not a number"),
    (["--config.population.sweep=objective.beta=0.1,0.1"], "listed twice"),
    (["--config.population.size=2", "--config.population.sweep=objective.beta=0.1,-1"],
     "objective.beta"),
    (["--config.population.size=2", "--config.reference.mode=cached"], "reference.mode=cached"),
    (["--config.population.size=2", "--config.population.sweep=objective.name=dpo,sft"],
     "differs from 'dpo' in its data kind"),
    (["--config.population.size=2", "--config.population.sweep=objective.name=dpo,nope"],
     "objective.name='nope'"),
    (["--config.population.size=4", "--config.population.eval_chunk=3", "--config.mesh.data=2"],
     "eval_chunk=3 must be a multiple of the 2 devices"),
])
def test_bad_population_configs_are_refused_naming_the_key(data_dir, tmp_path, overrides,
                                                           message):
    cfg = _cfg(data_dir, DPO, *NO_START, *overrides)
    with pytest.raises(errors.ConfigError, match=message):
        loop.build(cfg, str(tmp_path), devices=jax.devices()[:2])


ONLINE_SMALL = ["--config.online.max_new_tokens=8", "--config.data.batch_size=4",
                "--config.optim.warmup_steps=0", "--config.optim.lr=0.001"]


@pytest.mark.parametrize("objective, sweep", [
    # Reward-scored (S samples per prompt, gold scorer), two seeds: member 0 is the run with
    # the config's seed (member 1 reads the same prompts, so no single run equals it).
    ("grpo", ""),
    ("online_dpo", "objective.beta=0.1,0.5"),  # preference-scored: two samples per prompt
    ("nash_md", ""),  # samples from each member's mixture with its own reference
    ("ppo", ""),  # a value head, 2 epochs x 2 minibatches per rollout
])
def test_online_members_equal_runs_with_their_value(data_dir, tmp_path, objective, sweep):
    """Each member samples its own rollout (one decoding loop over all members' rows), scores
    it on its own and trains on it: a member equals the run with its seed and value."""
    config = f"configs/online.py:objective={objective},size=tiny,steps=2"
    dev = jax.devices()[:1]
    pop_loss, pop_params, _ = _steps(
        _cfg(data_dir, config, *NO_START, *ONLINE_SMALL, "--config.population.size=2",
             f"--config.population.sweep={sweep}"), tmp_path / "pop", dev, n=2)
    key, _, values = sweep.partition("=")
    runs = [[f"--config.{key}={v}"] for v in values.split(",")] if sweep else [[]]
    for p, extra in enumerate(runs):
        loss, params, _ = _steps(_cfg(data_dir, config, *NO_START, *ONLINE_SMALL, *extra),
                                 tmp_path / f"run{p}", dev, n=2)
        _close(pop_loss[:, p], loss)
        for a, b in zip(pop_params, params):
            _close(a[p], b)
    # The members differ (by initialisation, or by β in their losses).
    assert not (np.allclose(pop_loss[:, 0], pop_loss[:, 1])
                and np.allclose(pop_params[0][0], pop_params[0][1]))


def test_online_seeds_sample_differently_from_shared_prompts(data_dir, tmp_path):
    config = "configs/online.py:objective=grpo,size=tiny,steps=2"
    setup = loop.build(_cfg(data_dir, config, *NO_START, *ONLINE_SMALL,
                            "--config.population.size=2"), str(tmp_path), devices=jax.devices()[:1])
    try:
        state = loop.initial_state(setup)
        prompts = next(loop.train_iterator(setup))
        rollout, metrics = setup.rollouts.collect(state, prompts, 0)
        assert rollout["tokens"].shape[0] == 2 and np.shape(metrics["reward"]) == (2,)
        assert not np.array_equal(rollout["tokens"][0], rollout["tokens"][1])
        np.testing.assert_array_equal(rollout["example_id"][0], rollout["example_id"][1])
    finally:
        setup.close()


@pytest.mark.parametrize("overrides, message", [
    (["--config.population.data=split"], "use population.data=shared"),
    (["--config.population.sweep=objective.mixture_beta=0.1,0.5"],
     "changes how 'nash_md' draws"),
])
def test_online_population_limits_are_named(data_dir, tmp_path, overrides, message):
    cfg = _cfg(data_dir, "configs/online.py:objective=nash_md,size=tiny,steps=2", *NO_START,
               "--config.population.size=2", *overrides)
    with pytest.raises(errors.ConfigError, match=message):
        loop.build(cfg, str(tmp_path), devices=jax.devices()[:1])


def test_a_traced_setting_builds_cdpo(data_dir, tmp_path):
    """cDPO's label smoothing is checked only where it is a Python number, so a sweep over it
    builds: each member's objective gets its ε as a traced value inside the one jit."""
    cfg = _cfg(data_dir, "configs/preference.py:objective=cdpo,size=tiny,steps=2", *NO_START,
               "--config.population.size=2",
               "--config.population.sweep=objective.label_smoothing=0.1,0.2")
    setup = loop.build(cfg, str(tmp_path), devices=jax.devices()[:1])
    assert [float(v) for v in setup.population.values] == pytest.approx([0.1, 0.2])


def test_a_setting_the_objective_needs_as_a_number_cannot_be_swept(data_dir, tmp_path,
                                                                   monkeypatch):
    """An objective that reads its setting as a Python number when it is built (here, a
    wrapper that calls float on β) is refused before any compute, naming the key, instead of
    failing inside the traced step."""
    make = population_lib.objectives.make

    def needs_a_number(section, **kwargs):
        float(section["beta"])
        return make(section, **kwargs)

    monkeypatch.setattr(population_lib.objectives, "make", needs_a_number)
    cfg = _cfg(data_dir, DPO, *NO_START, "--config.population.size=2",
               "--config.population.sweep=objective.beta=0.1,0.2")
    with pytest.raises(errors.ConfigError, match="needs objective.beta as a Python number"):
        loop.build(cfg, str(tmp_path), devices=jax.devices()[:1])


def test_layout_is_value_major_with_common_seeds():
    class Mesh:
        shape = {"data": 2}

    cfg = config_lib.resolve(os.path.join(ROOT, DPO), ["--config.population.size=6",
                                                       "--config.seed=5",
                                                       "--config.population.sweep="
                                                       "objective.beta=0.1,0.2,0.3"])
    pop = population_lib.from_config(cfg, Mesh())
    assert pop.seeds == (5, 6, 5, 6, 5, 6)
    assert pop.values == (0.1, 0.1, 0.2, 0.2, 0.3, 0.3)
    assert pop.axes == ("data",)
    single = config_lib.resolve(os.path.join(ROOT, DPO), [])
    assert population_lib.from_config(single, Mesh()) is None


def test_evaluation_in_member_chunks_equals_all_at_once(data_dir, tmp_path):
    """population.eval_chunk=1 samples and scores one member at a time: the same samples,
    KLs and metrics as all members at once (0)."""
    from align.train import evaluation

    results = []
    for chunk in (0, 1):
        cfg = _cfg(data_dir, DPO, *NO_START, "--config.population.size=2",
                   f"--config.population.eval_chunk={chunk}")
        setup = loop.build(cfg, str(tmp_path / f"c{chunk}"), devices=jax.devices()[:1])
        try:
            results.append(evaluation.evaluate(setup, loop.initial_state(setup), 0))
        finally:
            setup.close()
    (m0, s0), (m1, s1) = results
    assert s0["completions"] == s1["completions"]
    np.testing.assert_allclose(np.asarray(s0["kl"]), np.asarray(s1["kl"]), rtol=1e-5, atol=1e-5)
    for name in ("kl", "kl_per_token", "sample_gold_reward", "win_rate", "loss"):
        np.testing.assert_allclose(m0[name], m1[name], rtol=1e-5, atol=1e-6)


def test_a_population_starts_from_a_population_member_by_member(data_dir, tmp_path):
    from align import main as main_lib
    from align import mesh as mesh_lib
    from align.train import runs

    dev = jax.devices()[:1]
    parent_dir = tmp_path / "sft"
    main_lib.run(_cfg(data_dir, SFT, "--config.population.size=2",
                      "--config.population.data=split"), str(parent_dir))
    parent = runs.read_run(str(parent_dir))
    mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, dev)
    mesh_rules = (mesh, mesh_lib.logical_rules(parent.cfg.mesh.rules))
    _, stacked, step = runs.final_params(parent, *mesh_rules, stacked=True)
    assert step == 3
    for p in range(2):
        _, one, _ = runs.final_params(parent, *mesh_rules, member=p)
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(stacked)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[p])
    with pytest.raises(errors.ConfigError, match="population of 2 members"):
        runs.final_params(parent, *mesh_rules)
    with pytest.raises(errors.ConfigError, match="members 0..1"):
        runs.final_params(parent, *mesh_rules, member=2)

    start = [f"--config.init.workdir={parent_dir}", "--config.init.config="]
    # A policy: member p starts from, and is regularised towards, member p of the parent.
    dpo = loop.build(_cfg(data_dir, DPO, "--config.population.size=2", *start),
                     str(tmp_path / "dpo"), devices=dev)
    try:
        assert dpo.start_stacked and dpo.reference_stacked
        state = loop.initial_state(dpo)
        for a, b, r in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(stacked),
                           jax.tree.leaves(dpo.reference)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            np.testing.assert_array_equal(np.asarray(r), np.asarray(b))
        loop.advance(dpo, state, next(loop.train_iterator(dpo)), 0)
    finally:
        dpo.close()
    # A reward model: member p's backbone is member p's policy; the heads are its own.
    rm = loop.build(_cfg(data_dir, "configs/reward_model.py:size=tiny,steps=3",
                         "--config.population.size=2", *start),
                    str(tmp_path / "rm"), devices=dev)
    try:
        params = loop.initial_state(rm)["params"]
        for a, b in zip(jax.tree.leaves(params["backbone"]), jax.tree.leaves(stacked)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert not np.allclose(params["head"]["kernel"][0], params["head"]["kernel"][1])
    finally:
        rm.close()
    with pytest.raises(errors.ConfigError, match="must be one too"):
        loop.build(_cfg(data_dir, DPO, *start), str(tmp_path / "single"), devices=dev)
    with pytest.raises(errors.ConfigError, match="population.size=2"):
        loop.build(_cfg(data_dir, DPO, "--config.population.size=4", *start),
                   str(tmp_path / "four"), devices=dev)
