"""DPO vs PPO on the pool world (Tier A): the exact policy gradient, the frontier, the
non-inferiority rule on planted, null and reversed frontiers, and a tiny run end to end.

Dimension letters: R seeds, G grid values, N prompts, M candidates.
"""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align.evaluate import stats
from align.tasks import pool

_POOL_PY = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "dpo_vs_ppo" / "pool.py"


def _load():
    spec = importlib.util.spec_from_file_location("dpo_vs_ppo_pool", _POOL_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dvp = _load()
GRID_G = np.linspace(0.5, 2.5, 5)


def _frontiers(delta: float, seeds: int = 32, noise: float = 0.03, seed: int = 0):
    """PPO's frontier values [R, G] and DPO's = PPO's + delta + paired noise."""
    rng = np.random.default_rng(seed)
    ppo_RxG = 1.0 + GRID_G[None, :] * 0.5 + rng.normal(0.0, 0.2, (seeds, 1))
    return ppo_RxG + delta + rng.normal(0.0, noise, ppo_RxG.shape), ppo_RxG


def test_rule_passes_a_planted_dpo_advantage():
    dpo, ppo = _frontiers(+0.05)
    c = dvp.frontier_claim(dpo, ppo, GRID_G, "planted")
    assert c["verdict"] == stats.REPRODUCED and all(p["held_after_holm"] for p in c["parts"])


def test_rule_does_not_pass_a_null_at_the_margin_or_a_reversal():
    at_margin = [dvp.frontier_claim(*_frontiers(-dvp.MARGIN, seed=s), GRID_G, "null")["verdict"]
                 for s in range(20)]
    assert at_margin.count(stats.REPRODUCED) <= 2  # level 0.05 per part, a conjunction of 5
    reversed_ = dvp.frontier_claim(*_frontiers(-0.2), GRID_G, "reversed")
    assert reversed_["verdict"] == stats.CONTRADICTED
    assert all(p["high"] < -dvp.MARGIN for p in reversed_["parts"])


def test_frontier_is_the_running_maximum_from_the_reference_point():
    # (0, 1.0) pi_ref, (1, 2.0), (2, 1.5) dominated, (3, 3.0).
    got = dvp.frontier_at([2.0, 1.0, 3.0], [1.5, 2.0, 3.0], 1.0, [0.5, 2.0, 3.0])
    np.testing.assert_allclose(got, [1.5, 2.5, 3.0])


def test_rlhf_gradient_is_the_exact_policy_gradient_with_exact_advantages():
    world = pool.make_world(jax.random.key(0), prompts=8, candidates=6)
    params = pool.init_params(jax.random.key(1), world.features.shape[-1], width=4)
    params["w2"] = jax.random.normal(jax.random.key(2), (4,))
    reward_NxM, beta = world.gold, 0.3

    def surrogate(p):
        logp_NxM = pool.policy_logits(p, world)
        old_NxM = jax.lax.stop_gradient(logp_NxM)
        adv_NxM = dvp.exact_advantage(old_NxM, world.ref_logp, reward_NxM, beta)
        # E_old[ratio A] with ratio = pi / pi_old, which is 1 at the current policy.
        return -jnp.mean(jnp.sum(jnp.exp(old_NxM) * jnp.exp(logp_NxM - old_NxM) * adv_NxM, -1))

    want = jax.grad(dvp.rlhf_objective)(params, world, reward_NxM, beta)
    got = jax.grad(surrogate)(params)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6)


@pytest.mark.experiment
def test_tiny_run_writes_tables_plot_and_verdicts(runs_home):
    assert dvp.main(["--tiny"]) == 0
    out = runs_home / "dpo_vs_ppo_pool_tiny"
    for name in ("results.md", "results.json", "runs.json", dvp.PLOT):
        assert (out / name).is_file(), name
    data = json.loads((out / "results.json").read_text())
    assert len(data["grid"]) == dvp.GRID and data["grid"][0] > 0
    assert len(data["claims"]) == 2
    for c in data["claims"]:
        assert c["verdict"] in stats.VERDICTS and len(c["parts"]) == dvp.GRID
        for p in c["parts"]:
            assert p["low"] <= p["estimate"] <= p["high"]
    runs = json.loads((out / "runs.json").read_text())["result"]
    mode = dvp.MODES["tiny"]
    for f in dvp.FAMILIES:
        kl = np.asarray(runs[f]["kl"])
        assert kl.shape == (len(mode["betas"]), mode["seeds"],
                            mode["steps"] // mode["record_every"])
        assert np.all(kl >= -1e-6)
    md = (out / "results.md").read_text()
    assert "Fixed β" in md and "matched KL" in md and md.count("power: ") == 2
