"""SEAL's analyses: the clustered regression against a float64 oracle and on null and planted
simulations, regimes and resistance and flip rates on hand-built cases, the review world's
gold-invariant rewrites.

Dimension letters: N rows, K coefficients, G clusters, M pairs, R models.
"""

import numpy as np
import pytest

from align.analysis import rewrites, seal
from align.evaluate import stats
from align.tasks.reviews import ReviewWorld, WorldConfig


def _oracle(y, x, groups):
    """CR1 by explicit sums over clusters, float64 (independent of ols_clustered)."""
    n, k = x.shape
    xtx = np.zeros((k, k))
    xty = np.zeros(k)
    for i in range(n):
        xtx += np.outer(x[i], x[i])
        xty += x[i] * y[i]
    beta = np.linalg.solve(xtx, xty)
    e = y - x @ beta
    ids = sorted(set(groups))
    meat = np.zeros((k, k))
    for g in ids:
        s = sum(x[i] * e[i] for i in range(n) if groups[i] == g)
        meat += np.outer(s, s)
    inv = np.linalg.inv(xtx)
    g = len(ids)
    cov = g / (g - 1) * (n - 1) / (n - k) * inv @ meat @ inv
    return beta, cov


def test_regression_equals_the_float64_oracle():
    rng = np.random.default_rng(0)
    n = 60
    f = rng.normal(size=(n, 2))
    groups = np.repeat(np.arange(20), 3)
    y = 0.5 + f @ [1.0, -2.0] + rng.normal(size=20)[groups] + 0.3 * rng.normal(size=n)
    fit = seal.ols_clustered(y, {"a": f[:, 0], "b": f[:, 1]}, groups)
    beta, cov = _oracle(y, np.column_stack([np.ones(n), f]), list(groups))
    np.testing.assert_allclose(fit.coef, beta, rtol=1e-10)
    np.testing.assert_allclose(fit.cov, cov, rtol=1e-10)
    np.testing.assert_allclose(fit.coef, np.linalg.lstsq(np.column_stack([np.ones(n), f]), y,
                                                         rcond=None)[0], rtol=1e-10)
    assert fit.names == ("intercept", "a", "b") and fit.df == 19 and fit.clusters == 20
    resid = y - np.column_stack([np.ones(n), f]) @ beta
    assert fit.r2 == pytest.approx(1 - resid @ resid / np.sum((y - y.mean()) ** 2))
    # Standardising divides the responses by their standard deviation, so every coefficient.
    std = seal.ols_clustered(y, {"a": f[:, 0], "b": f[:, 1]}, groups, standardize=True)
    np.testing.assert_allclose(std.coef, fit.coef / np.std(y, ddof=1), rtol=1e-10)
    # Each row its own cluster: the sandwich with N/(N-1)·(N-1)/(N-K) = N/(N-K), i.e. HC1.
    own = seal.ols_clustered(y, f, None)
    x = np.column_stack([np.ones(n), f])
    inv = np.linalg.inv(x.T @ x)
    hc1 = n / (n - 3) * inv @ (x.T * resid ** 2) @ x @ inv
    np.testing.assert_allclose(own.cov, hc1, rtol=1e-10)


def test_exact_fit_of_a_known_line():
    y = np.array([1.0, 3.0, 5.0, 7.0, 9.0, 11.0])
    exact = seal.ols_clustered(y, {"x": np.arange(6.0)}, [0, 0, 1, 1, 2, 2])
    assert exact["intercept"] == pytest.approx(1.0) and exact["x"] == pytest.approx(2.0)
    assert exact.r2 == pytest.approx(1.0) and np.allclose(exact.se, 0, atol=1e-9)


def _clustered_sample(rng, g, effect):
    """Pairs (2 rows per cluster) whose feature and noise both vary by cluster."""
    groups = np.repeat(np.arange(g), 2)
    f = rng.normal(size=g)[groups] + 0.2 * rng.normal(size=2 * g)
    y = effect * f + rng.normal(size=g)[groups] + 0.3 * rng.normal(size=2 * g)
    return y, f, groups


def test_clustered_intervals_hold_their_level_under_the_null_and_detect_a_planted_effect():
    rng = np.random.default_rng(1)
    sims = 400
    rejected_clustered = rejected_naive = 0
    for _ in range(sims):
        y, f, groups = _clustered_sample(rng, 40, 0.0)
        rejected_clustered += seal.ols_clustered(y, {"f": f}, groups).p_value("f") < 0.05
        rejected_naive += seal.ols_clustered(y, {"f": f}, None).p_value("f") < 0.05
    # One-sided 5% tests: the clustered one holds its level (binomial 99.9% bound at 400 sims);
    # ignoring the clusters rejects a true null far more often.
    assert rejected_clustered / sims <= 0.09
    assert rejected_naive / sims >= 0.10
    hits = 0
    for _ in range(100):
        y, f, groups = _clustered_sample(rng, 40, 0.8)
        hits += seal.ols_clustered(y, {"f": f}, groups).p_value("f") < 0.05
    assert hits >= 90


def test_bad_features_are_named():
    y = np.arange(6.0)
    with pytest.raises(ValueError, match=r"\['c'\] take one value"):
        seal.ols_clustered(y, {"a": [1, 2, 3, 1, 2, 4.0], "c": np.ones(6)}, [0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="collinear"):
        seal.ols_clustered(y, {"a": [1, 2, 3, 1, 2, 4.0], "b": [2, 4, 6, 2, 4, 8.0]},
                           [0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="NaN"):
        seal.ols_clustered([1, 2, np.nan, 4], {"a": [1, 2, 3, 5.0]})
    with pytest.raises(KeyError, match="lack column"):
        seal.ols_clustered(y, {"a": y}, names=["a", "z"])
    with pytest.raises(ValueError, match="6 rows, the responses 5"):
        seal.ols_clustered(y[:5], {"a": y})


def test_imprint_sets_gold_beside_the_model():
    rng = np.random.default_rng(2)
    m = 200
    spoiler = rng.integers(1, 5, size=2 * m).astype(float)
    target = rng.normal(size=2 * m)
    gold = target.copy()
    reward = target + 0.5 * spoiler + 0.1 * rng.normal(size=2 * m)
    _, pairs = seal.stack_pairs(np.zeros(m), np.zeros(m))
    out = seal.imprint(reward, {"target": target, "spoiler": spoiler}, pairs, gold_N=gold,
                       standardize=False)
    assert out.model["spoiler"] == pytest.approx(0.5, abs=0.03)
    assert out.gold["spoiler"] == pytest.approx(0.0, abs=1e-12)
    assert "| spoiler |" in out.table() and "centred R²" in out.table()


def test_regimes_and_resistance_on_a_hand_built_case():
    pre = [1.0, 1.0, -1.0, -1.0, 0.0, 2.0]
    post = [1.0, -1.0, 1.0, -1.0, 0.5, 0.0]  # a tie (0.0) does not agree
    gold = [1.0, 1.0, 1.0, -1.0, -2.0, 0.0]  # gold agrees with labels 0-2; not 3-5
    r = seal.resistance(post, pre, gold_margin_M=gold)
    # pre agrees on 0, 1, 5; post agrees on 0, 2, 4.
    assert r.regimes == pytest.approx({"stayed": 1 / 6, "got": 2 / 6, "resisted": 1 / 6,
                                       "reversed": 2 / 6})
    assert r.agreement_pre == pytest.approx(0.5) and r.agreement_post == pytest.approx(0.5)
    assert r.resistance == pytest.approx(0.5)
    assert r.resistance_gold_agrees == pytest.approx(1 / 3)  # pairs 0, 1, 2: post wrong on 1
    assert r.resistance_gold_disagrees == pytest.approx(2 / 3)  # pairs 3, 4, 5: wrong on 3, 5
    assert (r.n_gold_agrees, r.n_gold_disagrees) == (3, 3) and r.ratio == pytest.approx(2.0)
    alone = seal.resistance(post)
    assert alone.regimes == {} and np.isnan(alone.agreement_pre) and np.isnan(alone.ratio)
    with pytest.raises(ValueError, match="5 values for 6 pairs"):
        seal.resistance(post, pre[:5])


def test_flip_rates_on_a_hand_built_case():
    # Reward: the number of words; the rewrite adds two words to texts that have a "+".
    score = lambda prompts, texts: np.array([len(t.split()) for t in texts], float)
    rewrite = lambda prompt, text: text + " x y" if "+" in text else None
    a = ["+ a b", "a b c d", "+", "a"]
    b = ["a b c", "+ a", "a b", "+ a b c"]
    out = seal.flip_rates(score, ["p"] * 4, a, b, {"grow": rewrite, "never": lambda p, t: None})
    # Margins: -0, 2, -1, -3. Rewritten: a0 (3+2 vs 3: 0 -> +2 flips), a2 (3 vs 2: -1 -> +1
    # flips), b1 (4 vs 4: 2 -> 0 flips), b3 (1 vs 6: -3 -> -5 stays).
    assert out.counts == {"grow": 4, "never": 0} and out.flips == {"grow": 3, "never": 0}
    assert out.rates["grow"] == pytest.approx(0.75) and np.isnan(out.rates["never"])
    assert out.overall == pytest.approx(0.75)
    assert list(seal.flipped([1, -1, 0, 2], [1, 1, 0, 0])) == [False, True, False, True]


def test_relation_holds_its_level_under_the_null_and_finds_a_planted_slope():
    rng = np.random.default_rng(3)
    seeds = np.concatenate([np.arange(16)] * 2)

    def sample(slope):
        imprint = np.concatenate([rng.normal(0.3, 0.1, 16), rng.normal(0.1, 0.1, 16)])
        seed_effect = rng.normal(0, 0.02, 16)[seeds]
        return 0.05 + slope * imprint + seed_effect + rng.normal(0, 0.01, 32), imprint

    verdicts = [seal.relation(*sample(0.0), seeds, paper_slope=0.1).verdict for _ in range(300)]
    assert verdicts.count(stats.REPRODUCED) / 300 <= 0.09
    planted = [seal.relation(*sample(0.1), seeds, paper_slope=0.1).verdict for _ in range(50)]
    assert planted.count(stats.REPRODUCED) >= 45


def test_rewrites_keep_gold_exactly_and_change_their_feature():
    world = ReviewWorld(WorldConfig(min_sentences=4, filler_penalty=0.0))
    checked = rewrites.world_rewrites(world)
    rng = np.random.default_rng(4)
    applied = dict.fromkeys(checked, 0)
    for prompt in world.prompts(200, split="train"):
        text = world.write_review(prompt, quality=float(rng.uniform(-1, 1)), rng=rng)
        before = world.features(prompt, text)
        for kind, rewrite in checked.items():
            out = rewrite(prompt, text)
            if out is None:
                continue
            applied[kind] += 1
            after = world.features(prompt, out)
            assert after["gold_reward"] == before["gold_reward"]
            if kind == "add_filler":
                assert after["n_fillers"] == before["n_fillers"] + 1
                assert after["style"] == before["style"]
            elif kind == "add_fact":
                assert after["n_sentences"] == before["n_sentences"] + 1
            else:
                assert {after["style"], before["style"]} == {0.0, 1.0}
    assert min(applied.values()) >= 40
    # Where gold charges for filler, the filler rewrite never counts.
    default = rewrites.world_rewrites(ReviewWorld(WorldConfig()), ["add_filler"])["add_filler"]
    prompt = world.prompts(1, split="train")[0]
    assert default(prompt, "the kettle is good .") is None
    assert rewrites.swap_opener("", "to be honest , the kettle is good .") == (
        "to be honest , i think the kettle is good .")
    assert rewrites.swap_opener("", "i think the kettle is good .") == "the kettle is good ."
    assert rewrites.swap_opener("", "it is good .") is None
    with pytest.raises(ValueError, match="unknown rewrites"):
        rewrites.world_rewrites(world, ["shout"])
