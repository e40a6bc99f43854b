"""The DataInf experiment: its world, each pre-registered rule on a null simulation (must not
pass more than about 5% of the time) and on a planted effect (must pass), and a tiny run end to
end.

Dimension letters: R seeds, N training pairs, S simulations.
"""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from align.analysis import datainf
from align.evaluate import stats

_RUN_PY = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "datainf" / "run.py"
SIMS = 200
MAX_PASS_RATE = 0.09  # the rules are level-0.05 tests; 0.09 leaves room for simulation noise


def _load():
    spec = importlib.util.spec_from_file_location("datainf_run", _RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ex = _load()
MODE = dict(seeds=16, pairs=100, target=60, heldout=2000, sweep=(6,))


def test_world_has_its_contamination_and_its_judged_pairs():
    p = ex.make_problem(MODE, 0)
    assert p["train"].shape == (100, ex.DIM)
    assert ex.make_problem(MODE, 0, nuisance=30)["trust"].shape == (60, 32)
    assert p["contaminated"].sum() == round(ex.CONTAMINATED * 100)
    assert np.all(p["trust"][:, ex.HELP] == 0) and np.all(p["trust"][:, ex.TOX] < 0)
    assert np.all(p["helpful"][:, ex.HELP] > 0)
    # The same seed draws the same world; another seed another.
    np.testing.assert_array_equal(ex.make_problem(MODE, 0)["train"], p["train"])
    assert not np.array_equal(ex.make_problem(MODE, 1)["train"], p["train"])
    assert list(ex.top_pairs([0.1, 3.0, -1.0, 2.0], 2)) == [1, 3]


def _correlated_rhos(rng, rho_s, n, seeds):
    """Per seed, Spearman ρ between scores and a quantity whose population Spearman is rho_s
    (bivariate normal with Pearson r = 2 sin(π ρ_s / 6))."""
    r = 2 * np.sin(np.pi * rho_s / 6)
    x = rng.normal(size=(seeds, n))
    y = r * x + np.sqrt(1 - r * r) * rng.normal(size=(seeds, n))
    return np.array([ex.spearman(a, b) for a, b in zip(x, y)])


def test_rank_rule_fails_random_and_boundary_scores_and_passes_a_planted_ranking():
    rng = np.random.default_rng(0)
    n = 100
    passes = {0.0: 0, ex.RHO_MIN: 0}
    for s in range(SIMS):
        for rho_s in passes:
            j = ex.rank_claim(_correlated_rhos(rng, rho_s, n, 16), rng=s)
            passes[rho_s] += j.verdict == stats.REPRODUCED
    assert passes[0.0] == 0  # scores unrelated to LOO
    assert passes[ex.RHO_MIN] / SIMS <= MAX_PASS_RATE, passes  # exactly at the criterion
    assert ex.rank_claim(_correlated_rhos(rng, 0.6, n, 16)).verdict == stats.REPRODUCED
    assert ex.rank_claim(_correlated_rhos(rng, 0.0, n, 16)).verdict == stats.CONTRADICTED


def _seeds(mode, count):
    out = []
    for r in range(count):
        p = ex.make_problem(mode, r)
        w = datainf.fit_bradley_terry(p["train"], ex.MU)
        out.append((p, w, datainf.pair_nll_mean(w, p["trust"]),
                    datainf.pair_accuracy(w, p["helpful"])))
    return out


def test_pruning_rule_fails_on_random_scores_and_passes_on_influence():
    """Null: the "top" pairs are the top of scores unrelated to the world (so both arms remove
    a random 5%); planted: the top by exact influence."""
    rng = np.random.default_rng(1)
    mode = dict(MODE, pairs=60, target=30, heldout=50)
    seeds = _seeds(mode, 16)
    k = ex.prune_count(mode["pairs"])

    def change(p, w, base, drop):
        return ex.refit_without(p, drop, w)["trust"] - base

    passes = 0
    for _ in range(SIMS):
        top_R, rnd_R = [], []
        for p, w, base, _ in seeds:
            top_R.append(change(p, w, base, ex.top_pairs(rng.normal(size=mode["pairs"]), k)))
            rnd_R.append(change(p, w, base, rng.choice(mode["pairs"], k, replace=False)))
        passes += ex.trust_claim(top_R, rnd_R).verdict == stats.REPRODUCED
    assert passes / SIMS <= MAX_PASS_RATE, passes
    top_R, rnd_R = [], []
    for p, w, base, _ in seeds:
        top_R.append(change(p, w, base, ex.top_pairs(ex.influences(p, w)["exact"], k)))
        rnd_R.append(change(p, w, base, rng.choice(mode["pairs"], k, replace=False)))
    assert ex.trust_claim(top_R, rnd_R).verdict == stats.REPRODUCED


def test_accuracy_rule_fails_at_the_margin_and_passes_random_pruning():
    rng = np.random.default_rng(2)
    at_margin = sum(ex.accuracy_claim(ex.ACC_MARGIN + 0.01 * rng.normal(size=16)).verdict
                    == stats.REPRODUCED for _ in range(2 * SIMS))
    assert at_margin / (2 * SIMS) <= MAX_PASS_RATE, at_margin
    # Planted: removing a random 5% of 200 pairs barely moves accuracy on 2000 held-out pairs.
    mode = dict(MODE, pairs=200)
    change_R = [ex.refit_without(p, rng.choice(200, ex.prune_count(200), replace=False),
                                 w)["accuracy"] - acc for p, w, _, acc in _seeds(mode, 16)]
    assert ex.accuracy_claim(change_R).verdict == stats.REPRODUCED


def test_block_rule_fails_exchangeable_sizes_and_passes_a_planted_gap():
    rng = np.random.default_rng(4)
    passes = 0
    for _ in range(2 * SIMS):
        shared = 0.9 + 0.03 * rng.normal(size=16)  # the seed's world, common to both sizes
        passes += ex.block_claim(shared + 0.02 * rng.normal(size=16),
                                 shared + 0.02 * rng.normal(size=16)).verdict == stats.REPRODUCED
    assert passes / (2 * SIMS) <= MAX_PASS_RATE, passes
    shared = 0.9 + 0.03 * rng.normal(size=16)
    assert ex.block_claim(shared + 0.02 * rng.normal(size=16),
                          shared - 0.05 + 0.02 * rng.normal(size=16)).verdict == stats.REPRODUCED


def _fake_results(rho, top, rnd, acc):
    seeds = []
    for r in range(16):
        arms = {a: {"trust_change": v[r], "accuracy_change": acc[r] if a == "datainf" else 0.0,
                    "contaminated_share": 0.0} for a, v in (("datainf", top), ("exact", top),
                                                            ("random", rnd))}
        sweep = {str(dim): rho[r] - 0.05 * i + 0.01 * ((r * (i + 1)) % 3)
                 for i, dim in enumerate((8, 32, 128))}
        seeds.append({"rho_datainf": rho[r], "rho_exact": rho[r], "arms": arms, "sweep": sweep})
    return {"seeds": seeds}


def test_pruning_verdict_is_the_conjunction_of_its_parts():
    rng = np.random.default_rng(3)
    rho = 0.9 + 0.01 * rng.normal(size=16)
    top, rnd = -0.1 + 0.01 * rng.normal(size=16), 0.01 * rng.normal(size=16)
    good = ex.claims(_fake_results(rho, top, rnd, 0.001 * rng.normal(size=16)))
    assert good["pruning"]["verdict"] == stats.REPRODUCED
    assert good["rank"]["datainf"]["verdict"] == stats.REPRODUCED
    assert good["rank"]["datainf"]["low"] > ex.RHO_MIN  # reported on the ρ scale
    assert good["block"]["verdict"] == stats.REPRODUCED
    moved = ex.claims(_fake_results(rho, top, rnd, 0.05 + 0.001 * rng.normal(size=16)))
    assert moved["accuracy"]["verdict"] == stats.CONTRADICTED
    assert moved["pruning"]["verdict"] == stats.CONTRADICTED


@pytest.mark.experiment
def test_tiny_run_writes_tables_plot_and_verdicts(runs_home):
    assert ex.main(["--tiny"]) == 0
    out = runs_home / "datainf_tiny"
    for name in ("results.md", "results.json", ex.PLOT):
        assert (out / name).is_file(), name
    data = json.loads((out / "results.json").read_text())
    seeds = data["results"]["seeds"]
    assert len(seeds) == ex.MODES["tiny"]["seeds"]
    assert all(-1 <= s["rho_datainf"] <= 1 and s["rho_exact"] > 0.9 for s in seeds)
    assert set(seeds[0]["arms"]) == set(ex.ARMS)
    cl = data["claims"]
    for j in (cl["rank"]["datainf"], cl["rank"]["exact"], cl["trust"], cl["accuracy"],
              cl["pruning"]):
        assert j["verdict"] in stats.VERDICTS
    md = (out / "results.md").read_text()
    assert "### Verdicts" in md and "arXiv 2310.00902" in md and "tiny mode" in md
    # A second run reads the cached seeds back.
    assert ex.main(["--tiny"]) == 0
