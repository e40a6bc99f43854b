"""Online IPO / IPO-MD on the pool world (Tier A): the TOST rule passes on planted equivalence and
fails on planted non-equivalence, the exact loss's fixed point, and a tiny run end to end.

Dimension letters: R seeds, N prompts, M candidates, F features.
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

_POOL_PY = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "online_ipo" / "pool.py"


def _load():
    spec = importlib.util.spec_from_file_location("online_ipo_pool", _POOL_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


oip = _load()
SEEDS = 32


def test_equivalence_rule_planted_equivalent_and_not():
    rng = np.random.default_rng(0)
    same = 0.5 + 0.002 * rng.standard_normal(SEEDS)
    assert oip.equivalence_rule(same).verdict == stats.REPRODUCED
    apart = 0.47 + 0.005 * rng.standard_normal(SEEDS)
    assert oip.equivalence_rule(apart).verdict == stats.CONTRADICTED
    # An effect at the margin is not shown equivalent more often than the level allows.
    at_margin = [oip.equivalence_rule(0.5 + oip.MARGIN + 0.005 * rng.standard_normal(SEEDS))
                 .verdict == stats.REPRODUCED for _ in range(400)]
    assert np.mean(at_margin) <= 0.08


def test_claims_refuse_a_verdict_without_the_precondition():
    rng = np.random.default_rng(1)
    v = np.stack([np.full(SEEDS, 0.5), 0.5 + 0.001 * rng.standard_normal(SEEDS),
                  0.47 + 0.005 * rng.standard_normal(SEEDS)], axis=1)
    res = {"vs_online": v.tolist(), "cycle_check": {"learned": [True] * SEEDS}}
    cl = oip.claims(res)
    assert cl["claim"]["verdict"] == stats.REPRODUCED and not cl["planted"]["passes"]
    res["cycle_check"]["learned"][0] = False
    assert oip.claims(res)["claim"]["verdict"].startswith("not reported")


def _tabular_world(prompts=2, candidates=6):
    """A world whose features are one-hot candidate indicators: the family is tabular."""
    world = pool.make_world(jax.random.key(0), prompts=prompts, candidates=candidates,
                            style_tilt=3.0)
    eye = jnp.broadcast_to(jnp.eye(candidates), (prompts, candidates, candidates))
    return pool.World(eye, world.ref_logp, world.gold), pool.preference_matrix(world,
                                                                               oip.nmd.JUDGE)


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_tabular_fixed_point_is_the_mixture_best_response(beta):
    """In a tabular family the exact IPO-MD(beta) solution satisfies
    log pi / pi_ref = P(. > pi_mix) / tau + c (beta = 0: the regularised Nash equilibrium)."""
    world, pref = _tabular_world(prompts=1)
    theta, grad = oip.train_ipo(world, pref, steps=4000, beta=beta, lr=0.01)
    logp = oip.nmd.logits(theta, world)[0]
    mix = oip.nmd.mixture(theta, world, beta)[0]
    lhs = logp - world.ref_logp[0]
    rhs = pref[0] @ jnp.exp(mix) / oip.nmd.TAU
    resid = (lhs - lhs.mean()) - (rhs - rhs.mean())
    assert float(jnp.max(jnp.abs(resid))) < 1e-2
    if beta == 0.0:
        assert online_math.nash_residual(np.asarray(logp), np.asarray(world.ref_logp[0]),
                                         np.asarray(pref[0]), tau=oip.nmd.TAU) < 1e-2


def test_ipo_loss_is_the_squared_regression_to_the_preference():
    """p L(a, b) + (1 - p) L(b, a) = (h - (p - 1/2) / tau)^2 + const: the loss's gradient is
    that of the squared error, checked on a random policy."""
    world, pref = _tabular_world()
    theta = jax.random.normal(jax.random.key(1), (world.features.shape[-1],))
    sample = oip.nmd.logits(theta, world)
    tau = oip.nmd.TAU

    def squared(theta):
        r = oip.nmd.logits(theta, world) - world.ref_logp
        h = r[:, :, None] - r[:, None, :]
        w = jnp.exp(sample)
        return jnp.mean(jnp.einsum("ni,nj,nij->n", w, w, (h - (pref - 0.5) / tau) ** 2))

    np.testing.assert_allclose(jax.grad(oip.ipo_md_loss)(theta, sample, world, pref),
                               jax.grad(squared)(theta), rtol=1e-4, atol=1e-4)


@pytest.mark.experiment
def test_tiny_run_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_RUNS", str(tmp_path))
    assert oip.main(["--tiny"]) == 0
    out = tmp_path / "experiments" / "online_ipo_pool_tiny"
    res = json.loads((out / "results.json").read_text())
    v = np.asarray(res["results"]["vs_online"])
    assert v.shape == (3, len(oip.ARMS)) and np.allclose(v[:, 0], 0.5, atol=1e-6)
    md = (out / "results.md").read_text()
    assert md.index("Precondition") < md.index("| online IPO |")
