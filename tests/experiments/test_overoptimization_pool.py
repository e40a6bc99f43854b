"""Over-optimisation on the pool world (Tier A): every pre-registered rule passes where its claim
is planted and does not pass on a null, the best-of-n KL check, and a tiny run end to end.

Dimension letters: R seeds, S points of a curve.
"""

import importlib.util
import json
import math
import pathlib

import jax
import numpy as np
import pytest

from align.evaluate import stats
from align.tasks import pool

_POOL_PY = (pathlib.Path(__file__).resolve().parents[2] / "experiments" / "overoptimization"
            / "pool.py")


def _load():
    spec = importlib.util.spec_from_file_location("overoptimization_pool", _POOL_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


oo = _load()
SEEDS = 32
D_S = np.linspace(0.0, 3.0, 25)


def _setting(gold_RxS, d_S=D_S):
    """A proxy's result with the same (d, gold) curves for both methods; the proxy rises."""
    gold = np.asarray(gold_RxS, np.float64)
    kl = np.broadcast_to(np.square(d_S), gold.shape)
    c = {"kl": kl.tolist(), "gold": gold.tolist(), "proxy": (2.0 * kl).tolist()}
    return {"bon": c, "tilt": c, "agreement": [0.9] * gold.shape[0]}


def _gao(form, alpha_R, beta_R, d_S=D_S):
    return np.stack([stats.predict(form, d_S, a, b) for a, b in zip(alpha_R, beta_R)])


def _shares(fn, curves_RxS):
    """The share verdict of a per-curve pattern fn(d_RxS, gold_RxS, proxy_RxS) -> bool_R."""
    gold = np.asarray(curves_RxS)
    d = np.broadcast_to(D_S, gold.shape)
    return oo.share_part(fn(d, gold, 2.0 * d * d)).verdict


def test_vertex_is_the_peak_of_the_parabola_through_three_points():
    d_3 = np.array([1.0, 1.5, 2.0])
    x, y = oo.vertex(d_3, 2.0 - np.square(d_3 - 1.3))
    assert x == pytest.approx(1.3) and y == pytest.approx(2.0)
    assert oo.vertex(d_3, np.array([1.0, 2.0, 3.0])) == (1.5, 2.0)  # not concave: the middle


def test_log2_slopes_are_per_seed_least_squares_slopes():
    sizes = [128, 512, 2048]
    values = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [3.0, 2.0, 1.0]])
    np.testing.assert_allclose(oo.log2_slopes(sizes, values), [0.5, 0.0, -0.5])


def test_hump_rule_passes_gao_humps_and_fails_monotone_and_noisy_curves():
    rng = np.random.default_rng(0)
    # Gao's best-of-n curve peaks at alpha / (2 beta) = 1.5 inside [0, 3] and falls by 0.9.
    humped = _gao("bon", rng.uniform(1.1, 1.3, SEEDS), np.full(SEEDS, 0.4))
    assert _shares(lambda *c: oo.peaks(*c)["hump"], humped) == stats.REPRODUCED
    rising = _gao("bon", np.full(SEEDS, 1.0), np.full(SEEDS, 0.1))  # peak at 5, beyond d = 3
    assert _shares(lambda *c: oo.peaks(*c)["hump"], rising) == stats.CONTRADICTED
    # Noise below the margin does not make humps: flat, and rising with a plateau.
    sigma = oo.DELTA / 4
    flat = sigma * rng.normal(size=(SEEDS, D_S.size))
    plateau = np.minimum(D_S, 2.0) + sigma * rng.normal(size=(SEEDS, D_S.size))
    for noisy in (flat, plateau):
        assert _shares(lambda *c: oo.peaks(*c)["hump"], noisy) != stats.REPRODUCED


@pytest.mark.experiment
def test_hump_rule_on_the_pool_world_finds_the_penalty_and_not_the_gold():
    """Planted: tilting toward quality + relevance (blind to the off-support penalty) loses gold
    far from pi_ref. Null: best-of-n and tilting toward the gold itself never lose gold."""
    key = jax.random.key(7)
    train_w = pool.make_worlds(jax.random.fold_in(key, 0), 16, prompts=32)
    eval_w = pool.make_worlds(jax.random.fold_in(key, 1), 16, prompts=64)
    res = {"oracles": {name: oo._listed(oo._oracle_fn(name)(train_w, eval_w))
                       for name in oo.ORACLES}}
    for method in oo.METHODS:
        planted = oo.peaks(*oo.curve(res["oracles"]["no_penalty"], method))["hump"]
        assert oo.share_part(planted).verdict == stats.REPRODUCED, method
        null = oo.null_hump(res)[method]
        assert null["k"] == 0 and null["verdict"] == stats.CONTRADICTED, method


def test_form_rule_passes_gao_curves_and_fails_noise_and_straight_lines():
    rng = np.random.default_rng(1)
    noise_RxS = 0.01 * rng.normal(size=(SEEDS, D_S.size))
    for form in ("bon", "rl"):
        def passes(d, g, _):
            return np.array([f.passes for f in oo.form_fits(form, d, g)])
        planted = _gao(form, rng.uniform(1.0, 1.4, SEEDS), rng.uniform(0.3, 0.5, SEEDS))
        assert _shares(passes, planted + noise_RxS) == stats.REPRODUCED, form
        assert _shares(passes, 0.5 + noise_RxS) == stats.CONTRADICTED, form
        assert _shares(passes, D_S + noise_RxS) != stats.REPRODUCED, form


def _world_of_proxies(alpha_fn, beta_fn, mode, rng):
    """Proxies whose curves are Gao's forms with alpha_fn(width, pairs, alpha_R) and
    beta_fn(width, pairs, beta_R); the base coefficients put both forms' peaks inside D_S."""
    a_R = rng.uniform(1.0, 1.2, SEEDS)
    b_R = {"bon": rng.uniform(0.35, 0.45, SEEDS), "rl": rng.uniform(0.65, 0.75, SEEDS)}
    res = {"proxies": {}}
    for w in mode["widths"]:
        for s in mode["pairs"]:
            bon, rl = (_setting(_gao(form, alpha_fn(w, s, a_R), beta_fn(w, s, b_R[form])))
                       for form in ("bon", "rl"))
            res["proxies"][oo.proxy_name(w, s)] = dict(bon, tilt=rl["tilt"])
    return res


def test_size_rules_pass_a_planted_trend_and_fail_identical_proxies():
    mode = {"widths": (0, 16), "pairs": (128, 2048, 32768)}
    rng = np.random.default_rng(2)

    def size(w, s):
        return math.log2(s) + (2.0 if w else 0.0)

    # alpha grows and beta shrinks with size: a later, higher peak (bon peak alpha / 2 beta).
    planted = _world_of_proxies(lambda w, s, a: a + 0.01 * size(w, s),
                                lambda w, s, b: b * (1.0 - 0.01 * size(w, s)), mode, rng)
    for c in oo.size_claims(planted, mode):
        assert c["verdict"] == stats.REPRODUCED, c["claim"]
    same = _world_of_proxies(lambda w, s, a: a, lambda w, s, b: b, mode, rng)
    for c in oo.size_claims(same, mode):
        assert c["verdict"] == stats.CONTRADICTED, c["claim"]
        assert all(p["estimate"] == 0.0 for p in c["parts"])
    # Noise in the per-seed curves without a trend is not a trend.
    noisy = _world_of_proxies(lambda w, s, a: a + 0.05 * rng.normal(size=a.shape),
                              lambda w, s, b: b + 0.02 * rng.normal(size=b.shape), mode, rng)
    for c in oo.size_claims(noisy, mode):
        assert c["verdict"] != stats.REPRODUCED, c["claim"]


def test_best_of_n_kl_check_holds_on_a_pool_and_fails_when_the_bound_is_broken():
    worlds = pool.make_worlds(jax.random.key(3), 2, prompts=8)
    setting = oo._listed(oo._oracle_fn("gold")(worlds, worlds))
    res = {"proxies": {"gold": setting}, "oracles": {}}
    good = oo.kl_claim(res)
    assert good["verdict"] == stats.REPRODUCED and good["gap"]["max_excess"] <= oo.KL_TOLERANCE
    gaps_ZxS = np.asarray(good["limit_gap"])
    assert np.all(gaps_ZxS[-1] < 1e-4) and np.all(gaps_ZxS[0] > 1e-4)  # M = 32 is coarse
    broken = json.loads(json.dumps(setting))
    broken["bon"]["kl"][0][5] += 0.5  # a KL above log n - (n - 1) / n
    bad = oo.kl_claim({"proxies": {"gold": broken}, "oracles": {}})
    assert bad["verdict"] == stats.CONTRADICTED and not bad["bounded"]


@pytest.mark.experiment
def test_tiny_run_writes_tables_plots_and_verdicts(runs_home):
    assert oo.main(["--tiny"]) == 0
    out = runs_home / "overoptimization_pool_tiny"
    for name in ("results.md", "results.json", *oo.PLOTS):
        assert (out / name).is_file(), name
    data = json.loads((out / "results.json").read_text())
    mode = oo.MODES["tiny"]
    names = {oo.proxy_name(w, s) for w in mode["widths"] for s in mode["pairs"]}
    assert set(data["results"]["proxies"]) == names
    assert set(data["results"]["oracles"]) == set(oo.ORACLES)
    for setting in data["results"]["proxies"].values():
        for method in oo.METHODS:
            kl_RxS = np.asarray(setting[method]["kl"])
            assert kl_RxS.shape == (mode["seeds"], len(oo.BON_N if method == "bon"
                                                         else oo.INV_BETA))
            assert np.all(kl_RxS > -1e-5) and np.all(np.asarray(setting[method]["gold"])[:, 0]
                                                     == pytest.approx(0.0, abs=1e-5))
    claims = data["claims"]
    assert len(claims) == 7 and claims[-1]["verdict"] == stats.REPRODUCED
    for c in claims:
        assert c["verdict"] in stats.VERDICTS and c["power"]
        for part in c.get("parts", []):
            assert part["verdict"] in stats.VERDICTS and part["low"] <= part["high"]
            assert "held_after_holm" in part
    md = (out / "results.md").read_text()
    assert md.count("power: ") == 7 and "log n − (n−1)/n (published)" in md
