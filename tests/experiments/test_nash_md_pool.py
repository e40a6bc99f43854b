"""Nash-MD on the pool world (Tier A): each pre-registered rule passes where its claim is planted
and does not pass on a null, the learned-cycle precondition, the exact gradient, a tiny run.

Dimension letters: R seeds, J beta grid points, N prompts, M candidates, F features.
"""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align.evaluate import stats
from align.objectives import online_math
from align.tasks import pool

_POOL_PY = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "nash_md" / "pool.py"


def _load():
    spec = importlib.util.spec_from_file_location("nash_md_pool", _POOL_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nmd = _load()
SEEDS = 32
BETAS = np.asarray(nmd.BETAS)


def _peaked(rng, at=0.25, noise=0.01):
    """Sweeps peaking at beta = `at`, falling to beta = 1, with per-seed noise [R, J]."""
    truth_J = 0.6 - 0.3 * np.abs(BETAS - at)
    return truth_J + noise * rng.standard_normal((SEEDS, BETAS.size))


def test_chance_share_is_the_grid_share_in_the_small_interval():
    assert nmd.chance_share() == pytest.approx(4 / 9)


def test_argmax_rule_passes_a_planted_peak_and_not_a_flat_truth():
    rng = np.random.default_rng(0)
    assert nmd.argmax_rule(_peaked(rng)).verdict == stats.REPRODUCED
    assert nmd.argmax_rule(_peaked(rng, at=0.75)).verdict == stats.CONTRADICTED
    flat = 0.5 + 0.01 * rng.standard_normal((SEEDS, BETAS.size))
    assert nmd.argmax_rule(flat).verdict != stats.REPRODUCED


def test_argmax_rule_level_on_flat_sweeps():
    rng = np.random.default_rng(1)
    passes = [nmd.argmax_rule(rng.standard_normal((SEEDS, BETAS.size))).verdict
              == stats.REPRODUCED for _ in range(400)]
    assert np.mean(passes) <= 0.08  # level 0.05, binomial slack over 400 draws


def test_permuted_null_does_not_pass_on_a_planted_peak():
    rng = np.random.default_rng(2)
    win = _peaked(rng)
    assert nmd.argmax_rule(nmd.permuted(win)).verdict != stats.REPRODUCED
    assert np.allclose(np.sort(nmd.permuted(win), axis=1), np.sort(win, axis=1))


def test_worst_rule_passes_when_beta_one_is_worst_and_not_when_it_is_not():
    rng = np.random.default_rng(3)
    conj, parts = nmd.worst_rule(_peaked(rng))
    assert conj.verdict == stats.REPRODUCED and len(parts) == BETAS.size - 1
    flat = 0.5 + 0.01 * rng.standard_normal((SEEDS, BETAS.size))
    assert nmd.worst_rule(flat)[0].verdict != stats.REPRODUCED
    # One beta < 1 below beta = 1 is enough to contradict the claim (Holm over the parts).
    win = _peaked(rng)
    win[:, 0] = win[:, -1] - 0.05 + 0.01 * rng.standard_normal(SEEDS)
    assert nmd.worst_rule(win)[0].verdict == stats.CONTRADICTED


def test_ema_rule_planted_and_null():
    rng = np.random.default_rng(4)
    win = _peaked(rng)
    assert nmd.ema_rule(win, win[:, 0] - 0.05)[0].verdict == stats.REPRODUCED
    same = win[:, list(nmd.BETAS).index(0.25)] + 0.001 * rng.standard_normal(SEEDS)
    assert nmd.ema_rule(win, same)[0].verdict != stats.REPRODUCED


def _small_world(tilt=3.0, prompts=32):
    return pool.make_world(jax.random.key(0), prompts=prompts, candidates=16, style_tilt=tilt)


def test_cycle_precondition_learned_by_the_pairwise_model_not_by_bradley_terry():
    world = _small_world(prompts=64)
    pairs = pool.sample_pairs(jax.random.key(1), world, world.ref_logp, nmd.JUDGE, 8192)
    held = pool.sample_pairs(jax.random.key(2), world, jnp.zeros_like(world.ref_logp),
                             nmd.JUDGE, 2048)
    delta, cross = nmd.cycle_terms(world, held)
    for cyclic, learned in ((True, True), (False, False)):
        _, pm = nmd.fit_models(world, pairs, cyclic=cyclic)
        logit = nmd.pm_logits(pm, *nmd._pair_features(world, held))
        check = nmd.cycle_check(np.asarray(logit), np.asarray(delta), np.asarray(cross))
        assert check.learned == learned, check.describe()
    # On pairs from the tilted pi_ref the check cannot tell: Bradley-Terry passes there.
    ref_pairs = pool.sample_pairs(jax.random.key(2), world, world.ref_logp, nmd.JUDGE, 2048)
    _, bt_pm = nmd.fit_models(world, pairs, cyclic=False)
    d_ref, c_ref = nmd.cycle_terms(world, ref_pairs)
    bt_logit = nmd.pm_logits(bt_pm, *nmd._pair_features(world, ref_pairs))
    assert nmd.cycle_check(np.asarray(bt_logit), np.asarray(d_ref), np.asarray(c_ref)).learned
    exact = nmd.JUDGE.strength * delta + nmd.JUDGE.cycle * cross
    assert nmd.cycle_check(exact, delta, cross).share == pytest.approx(1.0, abs=1e-4)


def test_claims_refuse_a_verdict_without_the_precondition():
    rng = np.random.default_rng(5)
    win = _peaked(rng)
    res = {"sweep": {"vs_rlhf": win.tolist()}, "ema": {"vs_rlhf": (win[:, 0] - 0.05).tolist()},
           "cycle_check": {"learned": [True] * (SEEDS - 1) + [False]}}
    cl = nmd.claims(res)
    assert not cl["precondition"]
    assert all(cl[k]["verdict"].startswith("not reported") for k in ("argmax", "worst", "ema"))
    res["cycle_check"]["learned"] = [True] * SEEDS
    assert nmd.claims(res)["argmax"]["verdict"] == stats.REPRODUCED


def test_pm_matrix_is_a_preference_matrix_and_matches_pair_logits():
    world = _small_world()
    key_w, key_a = jax.random.split(jax.random.key(3))
    f = world.features.shape[-1]
    pm = {"w": jax.random.normal(key_w, (f,)), "a": jax.random.normal(key_a, (f, f))}
    p = np.asarray(nmd.pm_matrix(pm, world))
    np.testing.assert_allclose(p + np.swapaxes(p, 1, 2), 1.0, atol=1e-5)
    logit = nmd.pm_logits(pm, world.features[0, 2], world.features[0, 5])
    assert float(jax.nn.sigmoid(logit)) == pytest.approx(float(p[0, 2, 5]), rel=1e-4)


def test_mixture_is_the_geometric_mixture():
    world = _small_world()
    theta = jax.random.normal(jax.random.key(4), (world.features.shape[-1],))
    mix = nmd.mixture(theta, world, 0.3)
    want = online_math.geometric_mixture(nmd.logits(theta, world), world.ref_logp, 0.3)
    np.testing.assert_allclose(mix, want, atol=1e-5)


def test_nash_gradient_matches_the_tabular_closed_form_through_the_features():
    """With one prompt, d/dθ of the objective is Φᵀ·(tabular Nash-MD-PG gradient in logits)."""
    world = jax.tree.map(lambda x: x[:1], _small_world())
    theta = 0.3 * jax.random.normal(jax.random.key(5), (world.features.shape[-1],))
    pref = pool.preference_matrix(world, nmd.JUDGE)
    beta = 0.25
    got = jax.grad(nmd.nash_objective)(theta, nmd.mixture(theta, world, beta), world, pref)
    logits_M = world.ref_logp[0] + world.features[0] @ theta
    g_M = online_math.tabular_nash_md_pg_grad(logits_M, world.ref_logp[0], pref[0],
                                              tau=nmd.TAU, beta=beta)
    np.testing.assert_allclose(got, world.features[0].T @ g_M, rtol=1e-4, atol=1e-6)


@pytest.mark.experiment
def test_tiny_run_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_RUNS", str(tmp_path))
    assert nmd.main(["--tiny"]) == 0
    out = tmp_path / "experiments" / "nash_md_pool_tiny"
    res = json.loads((out / "results.json").read_text())
    assert set(res["claims"]) == set(nmd.TILTS)
    md = (out / "results.md").read_text()
    assert "Precondition" in md and md.index("Precondition") < md.index("Nash-MD β = 0 ")
    win = np.asarray(res["results"]["tilted"]["sweep"]["vs_rlhf"])
    assert win.shape == (3, len(nmd.BETAS)) and np.all((win > 0) & (win < 1))
