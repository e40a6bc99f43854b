"""Intervals over seeds and the over-optimisation fits (align/evaluate/stats.py)."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from align.evaluate import stats


def test_mean_ci_is_the_student_t_interval():
    # n = 4, sample sd = sqrt(5/3) for 1..4; t_{0.975, 3} = 3.182446305284263.
    mean, half = stats.mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(3.182446305284263 * math.sqrt(5 / 3) / 2, rel=1e-12)
    # Wider at 99% than at 95%; NaN width with one value.
    assert stats.mean_ci([1.0, 2.0, 3.0, 4.0], 0.99)[1] > half
    assert math.isnan(stats.mean_ci([3.0])[1])
    assert stats.fmt_ci(0.5, 0.03) == "0.500 ± 0.030"
    assert stats.fmt_ci(0.5, math.nan, digits=1, scale=100) == "50.0"
    with pytest.raises(ValueError, match="no values"):
        stats.mean_ci([])


def test_interval_covers_the_mean_at_its_nominal_rate():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(4000):
        mean, half = stats.mean_ci(rng.normal(1.0, 2.0, size=3))
        covered += abs(mean - 1.0) <= half
    assert abs(covered / 4000 - 0.95) < 0.015


@pytest.mark.parametrize("form,alpha,beta", [("bon", 0.8, 0.15), ("rl", 0.5, 0.2),
                                             ("rl", 1.3, -0.05)])
def test_fits_recover_known_alpha_beta(form, alpha, beta):
    d = np.linspace(0.0, 6.0, 40)
    exact = stats.predict(form, d, alpha, beta)
    f = stats.fit(form, d, exact)
    assert (f.alpha, f.beta) == (pytest.approx(alpha, abs=1e-10), pytest.approx(beta, abs=1e-10))
    assert f.r2 == pytest.approx(1.0) and f.rmse < 1e-10
    # With noise: close, and the extrapolation from the first half stays close too.
    noisy = exact + np.random.default_rng(1).normal(0, 0.01, d.size)
    f = stats.fit(form, d, noisy)
    assert abs(f.alpha - alpha) < 0.02 and abs(f.beta - beta) < 0.01
    head, err = stats.extrapolation_error(form, d, noisy, fraction=0.5)
    assert abs(head.alpha - alpha) < 0.05 and err < 0.1


def test_the_forms_tell_each_other_apart():
    # A best-of-n-shaped curve fits its own form better than the RL form, and vice versa.
    d = np.linspace(0.05, 5.0, 30)
    bon = stats.predict("bon", d, 1.0, 0.2)
    rl = stats.predict("rl", d, 0.6, 0.4)
    assert stats.fit("bon", d, bon).rmse < 1e-10 < stats.fit("rl", d, bon).rmse
    assert stats.fit("rl", d, rl).rmse < 1e-10 < stats.fit("bon", d, rl).rmse
    # Explicit formulas: d(α − βd) and d(α − β log d).
    np.testing.assert_allclose(stats.predict("bon", [2.0], 1.0, 0.2), [2.0 * (1.0 - 0.4)])
    np.testing.assert_allclose(stats.predict("rl", [2.0], 0.6, 0.4), [2.0 * (0.6 - 0.4 * math.log(2))])
    assert stats.predict("rl", [0.0], 0.6, 0.4)[0] == 0.0


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown functional form 'exp'"):
        stats.fit("exp", [1.0, 2.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="3 distances but 2 rewards"):
        stats.fit("bon", [1.0, 2.0, 3.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        stats.fit("bon", [1.0, 2.0], [0.1, math.nan])
    with pytest.raises(ValueError, match=">= 0"):
        stats.fit("rl", [-1.0, 2.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="leave none"):
        stats.extrapolation_error("bon", [1.0, 2.0], [0.1, 0.2])


# ----------------------------------------------------------------------------- helpers

ALPHA = stats.ALPHA
# Null simulations count false passes among S experiments; with S = 400 the standard error of
# a rate of 0.05 is 0.011, so a rate above ALPHA + 0.03 would be a real excess.
TOL = 0.03


def _rate(verdicts, which):
    return float(np.mean([v == which for v in verdicts]))


def _directional_verdicts(x_SxR, **kw):
    kw = {"paper_effect": 1.0, "smallest_effect": 0.3, **kw}
    return [stats.directional(x_R, **kw).verdict for x_R in x_SxR]


# ----------------------------------------------------------------------------- verdict rule

@pytest.mark.parametrize("low,high,expected", [
    (0.1, 2.0, "reproduced"),     # above 0, reaches effects of interest
    (0.1, 0.5, "reproduced"),     # below the paper's size, but not below the smallest effect
    (0.05, 0.2, "contradicted"),  # positive, but smaller than the smallest effect of interest
    (-0.5, 0.2, "contradicted"),  # excludes the paper size and the smallest effect from below
    (-2.0, -0.1, "contradicted"),  # entirely below 0
    (-0.1, 2.0, "inconclusive"),  # crosses 0 and reaches the paper size
    (-0.1, 0.3, "inconclusive"),  # boundary: high = smallest effect is not below it
    (0.0, 1.0, "inconclusive"),   # boundary: low = 0 is not above 0
])
def test_directional_verdict_rule(low, high, expected):
    assert stats.verdict(low, high, paper_effect=1.0, smallest_effect=0.3) == expected


def test_verdict_with_no_smallest_effect_contradicts_only_below_zero():
    assert stats.verdict(-0.2, -0.01, paper_effect=1.0, smallest_effect=0.0) == "contradicted"
    assert stats.verdict(-0.2, 0.01, paper_effect=1.0, smallest_effect=0.0) == "inconclusive"
    assert stats.verdict(0.01, 0.02, paper_effect=1.0, smallest_effect=0.0) == "reproduced"


def test_verdict_rejects_bad_settings():
    with pytest.raises(ValueError, match="paper_effect must be finite and > 0"):
        stats.verdict(0.0, 1.0, paper_effect=-1.0, smallest_effect=0.0)
    with pytest.raises(ValueError, match=r"smallest_effect must lie in \[0, paper_effect"):
        stats.verdict(0.0, 1.0, paper_effect=1.0, smallest_effect=2.0)
    with pytest.raises(ValueError, match="low <= high"):
        stats.verdict(1.0, 0.0, paper_effect=1.0, smallest_effect=0.5)
    with pytest.raises(ValueError, match="low <= high"):
        stats.verdict(math.nan, 0.0, paper_effect=1.0, smallest_effect=0.5)
    with pytest.raises(ValueError, match="margin must be finite and > 0"):
        stats.equivalence_verdict(-0.1, 0.1, margin=0.0)


# ----------------------------------------------------------------------------- Student t, paired

def test_t_interval_and_p_values_match_scipy():
    x = np.random.default_rng(2).normal(0.4, 1.0, 12)
    mean, low, high = stats.t_interval(x, alpha=0.05)
    ci = scipy_stats.ttest_1samp(x, 0.0).confidence_interval(0.90)
    assert (low, high) == (pytest.approx(ci.low, rel=1e-12), pytest.approx(ci.high, rel=1e-12))
    assert mean == pytest.approx(x.mean())
    assert stats.t_p_value(x) == pytest.approx(
        scipy_stats.ttest_1samp(x, 0.0, alternative="greater").pvalue, rel=1e-10)
    assert stats.t_p_value(x, 0.3, alternative="less") == pytest.approx(
        scipy_stats.ttest_1samp(x, 0.3, alternative="less").pvalue, rel=1e-10)
    a, b = x + 1.0, np.random.default_rng(3).normal(1.0, 1.0, 12)
    d, lo, hi, p = stats.paired_t(a, b)
    assert p == pytest.approx(scipy_stats.ttest_rel(a, b, alternative="greater").pvalue, rel=1e-10)
    ci = scipy_stats.ttest_rel(a, b).confidence_interval(0.90)
    assert (lo, hi) == (pytest.approx(ci.low, rel=1e-12), pytest.approx(ci.high, rel=1e-12))


def test_t_directional_null_and_planted():
    rng = np.random.default_rng(10)
    # Null: no effect, 400 experiments of 16 seeds.
    null = _directional_verdicts(rng.normal(0.0, 1.0, (400, 16)))
    assert _rate(null, "reproduced") <= ALPHA + TOL
    # At the smallest effect of interest the claim holds: contradicted at most at level alpha.
    boundary = _directional_verdicts(rng.normal(0.3, 1.0, (400, 16)))
    assert _rate(boundary, "contradicted") <= ALPHA + TOL
    # Planted: the paper's effect (one seed sd) is reproduced with high frequency.
    planted = _directional_verdicts(rng.normal(1.0, 1.0, (400, 16)))
    assert _rate(planted, "reproduced") >= 0.95 and _rate(planted, "contradicted") == 0.0
    # The paper's effect reversed is contradicted, not left inconclusive.
    wrong = _directional_verdicts(rng.normal(-1.0, 1.0, (400, 16)))
    assert _rate(wrong, "contradicted") >= 0.95


def test_paired_common_random_numbers():
    rng = np.random.default_rng(11)
    # Both arms share each seed's large luck (sd 2); each arm's own noise is small (sd 0.2).
    seed_SxR = rng.normal(0.0, 2.0, (400, 16))
    base_SxR = seed_SxR + rng.normal(0.0, 0.2, (400, 16))
    kw = dict(paper_effect=0.3, smallest_effect=0.1)
    null_SxR = seed_SxR + rng.normal(0.0, 0.2, (400, 16))
    null = [stats.directional(a, b, **kw).verdict for a, b in zip(null_SxR, base_SxR)]
    assert _rate(null, "reproduced") <= ALPHA + TOL
    treat_SxR = seed_SxR + 0.3 + rng.normal(0.0, 0.2, (400, 16))
    paired = [stats.directional(a, b, **kw) for a, b in zip(treat_SxR, base_SxR)]
    assert _rate([j.verdict for j in paired], "reproduced") >= 0.95
    assert paired[0].method == "paired t" and paired[0].n == 16
    # Ignoring the pairing (the two arms' intervals as independent samples) loses the effect.
    unpaired = [stats.directional(a - b.mean(), **kw).verdict for a, b in zip(treat_SxR, base_SxR)]
    assert _rate(unpaired, "reproduced") < 0.3
    with pytest.raises(ValueError, match="16 seeds in one arm but 15"):
        stats.directional(treat_SxR[0], base_SxR[0][:15], **kw)


# ----------------------------------------------------------------------------- BCa bootstrap

@pytest.mark.parametrize("statistic", [np.mean, np.median,
                                       lambda x, axis=-1: np.std(x, axis=axis, ddof=1)])
def test_bca_matches_scipy(statistic):
    x = np.random.default_rng(3).standard_exponential(20)
    ref = scipy_stats.bootstrap((x,), statistic, confidence_level=0.9, method="BCa",
                                n_resamples=20000, rng=np.random.default_rng(1)).confidence_interval
    est, low, high = stats.bca_interval(x, statistic, alpha=0.05, resamples=20000, rng=2,
                                        expand=False)
    assert est == pytest.approx(statistic(x))
    # Different resamples: agreement to Monte Carlo error (the interval is about 0.6 wide).
    assert abs(low - ref.low) < 0.02 and abs(high - ref.high) < 0.02
    # The small-sample expansion only widens the interval.
    _, wide_low, wide_high = stats.bca_interval(x, statistic, alpha=0.05, resamples=20000, rng=2)
    assert wide_low <= low and wide_high >= high


def test_paired_bca_matches_scipy_and_is_reproducible():
    rng = np.random.default_rng(4)
    a = rng.normal(size=20)
    b = a + rng.normal(0.3, 0.2, 20)
    ref = scipy_stats.bootstrap((b, a), lambda u, v, axis=-1: np.mean(u - v, axis=axis),
                                paired=True, confidence_level=0.9, method="BCa",
                                n_resamples=20000, rng=np.random.default_rng(1)).confidence_interval
    est, low, high = stats.paired_bca_interval(b, a, resamples=20000, expand=False)
    assert est == pytest.approx(np.mean(b - a))
    assert abs(low - ref.low) < 0.005 and abs(high - ref.high) < 0.005
    # Same seed, same interval; a statistic of both arms (difference of medians) works too.
    assert stats.paired_bca_interval(b, a, rng=7) == stats.paired_bca_interval(b, a, rng=7)
    med = stats.paired_bca_interval(
        b, a, lambda u, v, axis=-1: np.median(u, axis) - np.median(v, axis))
    assert med[0] == pytest.approx(np.median(b) - np.median(a))


def test_bca_directional_null_and_planted():
    rng = np.random.default_rng(12)
    kw = dict(method="bca", resamples=1000)
    null = [stats.directional(x, rng=i, **kw | dict(paper_effect=1.0, smallest_effect=0.3))
            for i, x in enumerate(rng.normal(0.0, 1.0, (400, 16)))]
    assert _rate([j.verdict for j in null], "reproduced") <= ALPHA + TOL
    # The BCa p-value agrees with the interval: p < alpha where the lower bound is above 0.
    agree = [(j.p_reproduce < ALPHA) == (j.low > 0) for j in null]
    assert np.mean(agree) >= 0.98
    # Skewed seeds (exponential, mean 0 after centring) do not fool it either.
    skewed = _directional_verdicts(rng.standard_exponential((400, 16)) - 1.0, **kw)
    assert _rate(skewed, "reproduced") <= ALPHA + TOL
    planted = _directional_verdicts(rng.normal(1.0, 1.0, (400, 16)), **kw)
    assert _rate(planted, "reproduced") >= 0.95
    # Paired BCa: null and planted over common random numbers.
    seed_SxR = rng.normal(0.0, 2.0, (400, 16))
    base_SxR = seed_SxR + rng.normal(0.0, 0.2, (400, 16))
    pkw = dict(kw, paper_effect=0.3, smallest_effect=0.1)
    null = [stats.directional(seed_R + rng.normal(0.0, 0.2, 16), b, rng=i, **pkw).verdict
            for i, (seed_R, b) in enumerate(zip(seed_SxR, base_SxR))]
    assert _rate(null, "reproduced") <= ALPHA + TOL
    planted = [stats.directional(seed_R + 0.3 + rng.normal(0.0, 0.2, 16), b, rng=i, **pkw).verdict
               for i, (seed_R, b) in enumerate(zip(seed_SxR, base_SxR))]
    assert _rate(planted, "reproduced") >= 0.95


def test_bca_rejects_bad_input():
    with pytest.raises(ValueError, match="too few seeds: need at least 16, got 15"):
        stats.bca_interval(np.arange(15.0))
    with pytest.raises(ValueError, match="too few seeds"):
        stats.directional(np.arange(8.0), paper_effect=1.0, smallest_effect=0.1, method="bca")
    with pytest.raises(ValueError, match="finite"):
        stats.bca_interval(np.r_[np.arange(16.0), math.inf])
    with pytest.raises(ValueError, match="degenerate"):
        stats.bca_interval(np.ones(16))
    with pytest.raises(ValueError, match="rng must be a numpy Generator or an int seed"):
        stats.bca_interval(np.arange(16.0), rng="zero")
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 0.5\)"):
        stats.bca_interval(np.arange(16.0), alpha=0.95)
    with pytest.raises(ValueError, match="must reduce the last axis"):
        stats.bca_interval(np.arange(16.0), lambda x, axis=-1: x)
    with pytest.raises(ValueError, match="method must be 't' or 'bca'"):
        stats.directional(np.arange(16.0), paper_effect=1.0, smallest_effect=0.1, method="z")


# ----------------------------------------------------------------------------- equivalence

def test_tost_is_two_one_sided_scipy_t_tests():
    x = np.random.default_rng(5).normal(0.1, 1.0, 16)
    p_lo, p_hi = stats.tost(x, margin=0.8)
    ref_lo = scipy_stats.ttest_1samp(x, -0.8, alternative="greater").pvalue
    ref_hi = scipy_stats.ttest_1samp(x, 0.8, alternative="less").pvalue
    assert p_lo == pytest.approx(ref_lo, rel=1e-10) and p_hi == pytest.approx(ref_hi, rel=1e-10)
    j = stats.equivalent(x, margin=0.8)
    assert j.p_reproduce == max(p_lo, p_hi)
    # Equivalence shown exactly when the 1 - 2 alpha interval lies inside the margin.
    inside = -0.8 < j.low and j.high < 0.8
    assert (j.verdict == "reproduced") == (max(p_lo, p_hi) < ALPHA) == inside
    assert stats.equivalence_verdict(-0.1, 0.2, margin=0.3) == "reproduced"
    assert stats.equivalence_verdict(-0.1, 0.4, margin=0.3) == "inconclusive"
    assert stats.equivalence_verdict(0.35, 0.9, margin=0.3) == "contradicted"
    assert stats.equivalence_verdict(-0.9, -0.31, margin=0.3) == "contradicted"


def test_equivalence_null_and_planted():
    rng = np.random.default_rng(13)
    # Null: the true difference sits at the margin (not equivalent); 1000 experiments of 16 seeds.
    null = [stats.equivalent(x, margin=1.0).verdict for x in rng.normal(1.0, 1.0, (1000, 16))]
    assert _rate(null, "reproduced") <= ALPHA + TOL
    far = [stats.equivalent(x, margin=1.0).verdict for x in rng.normal(-3.0, 1.0, (400, 16))]
    assert _rate(far, "contradicted") >= 0.95
    # Planted: no difference, margin one seed sd, 16 seeds: equivalence shown almost always.
    planted = [stats.equivalent(x, margin=1.0).verdict for x in rng.normal(0.0, 1.0, (400, 16))]
    assert _rate(planted, "reproduced") >= 0.9 and _rate(planted, "contradicted") == 0.0
    # The old rule ("the interval includes 0") passed a difference at the margin on 3 seeds
    # most of the time, and more often the fewer the seeds; TOST does not.
    few_SxR = rng.normal(1.0, 1.0, (400, 3))
    old = [stats.mean_ci(x)[1] >= abs(stats.mean_ci(x)[0]) for x in few_SxR]
    assert np.mean(old) > 0.5
    tost_few = [stats.equivalent(x, margin=1.0).verdict for x in few_SxR]
    assert _rate(tost_few, "reproduced") <= ALPHA + TOL


# ----------------------------------------------------------------------------- Holm, conjunctions

def test_holm_on_a_known_vector():
    # Sorted: 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2 stops: two rejected.
    p = [0.01, 0.04, 0.03, 0.005]
    np.testing.assert_array_equal(stats.holm(p, 0.05), [True, False, False, True])
    np.testing.assert_allclose(stats.holm_adjusted(p), [0.03, 0.06, 0.06, 0.02])
    # Step-down beats Bonferroni: 0.02 > 0.05/2 but <= 0.05/1 once 0.001 is rejected.
    np.testing.assert_array_equal(stats.holm([0.001, 0.02], 0.05), [True, True])
    np.testing.assert_array_equal(stats.holm([0.04, 0.04], 0.05), [False, False])
    np.testing.assert_allclose(stats.holm_adjusted([0.5, 0.9]), [1.0, 1.0])
    with pytest.raises(ValueError, match=r"p-values must lie in \[0, 1\]"):
        stats.holm([0.1, math.nan])
    with pytest.raises(ValueError, match="non-empty"):
        stats.holm([])


def _parts(effects_K, rng, n=16):
    return [stats.directional(rng.normal(e, 1.0, n), paper_effect=1.0, smallest_effect=0.3)
            for e in effects_K]


def test_conjunction_null_and_planted():
    rng = np.random.default_rng(14)
    # Null: 7 of 8 parts hold strongly, one has no effect: the claim is false.
    null = [stats.conjunction(_parts([2.0] * 7 + [0.0], rng)).verdict for _ in range(400)]
    assert _rate(null, "reproduced") <= ALPHA + TOL
    # A true claim at its weakest (all 8 parts at the smallest effect of interest): Holm keeps
    # the false "contradicted" rate at alpha; contradicting on any one raw part would not.
    boundary = [_parts([0.3] * 8, rng) for _ in range(400)]
    assert _rate([stats.conjunction(p).verdict for p in boundary], "contradicted") <= ALPHA + TOL
    raw = np.mean([any(j.verdict == "contradicted" for j in p) for p in boundary])
    assert raw > 0.2
    # Planted: all 8 parts at the paper's effect.
    planted = [stats.conjunction(_parts([1.0] * 8, rng)) for _ in range(400)]
    assert _rate([c.verdict for c in planted], "reproduced") >= 0.8
    assert np.mean([sum(c.held) for c in planted]) > 7.0


def test_conjunction_bookkeeping():
    def j(v, p_rep, p_con):
        return stats.Judgement(v, 0.0, 0.0, 0.0, p_rep, p_con, 16, "t")

    c = stats.conjunction([j("reproduced", 0.001, 0.9), j("reproduced", 0.04, 0.8)])
    assert c.verdict == "reproduced" and c.p_reproduce == 0.04 and c.held == (True, True)
    c = stats.conjunction([j("reproduced", 0.001, 0.9), j("contradicted", 0.6, 0.01)])
    assert c.verdict == "contradicted" and c.contradicted == (False, True)
    assert c.p_contradict == pytest.approx(0.02)
    # 0.03 alone would contradict a one-part claim, not one of two parts (0.03 > 0.05 / 2).
    c = stats.conjunction([j("reproduced", 0.001, 0.9), j("contradicted", 0.6, 0.03)])
    assert c.verdict == "inconclusive"
    with pytest.raises(ValueError, match="non-empty list of Judgement"):
        stats.conjunction([])


# ----------------------------------------------------------------------------- shares of seeds

@pytest.mark.parametrize("k,n", [(0, 16), (3, 16), (11, 16), (16, 16), (7, 20)])
def test_clopper_pearson_and_binomial_match_scipy(k, n):
    ref = scipy_stats.binomtest(k, n, 0.25, alternative="greater")
    # Two-sided 90%: each Clopper-Pearson bound a one-sided 95% bound.
    ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact")
    low, high = stats.clopper_pearson(k, n, alpha=0.05)
    assert (low, high) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))
    j = stats.share(np.arange(n) < k, p0=0.25, paper_share=0.9, smallest_share=0.5)
    assert j.p_reproduce == pytest.approx(ref.pvalue, rel=1e-10)
    assert j.p_contradict == pytest.approx(
        scipy_stats.binomtest(k, n, 0.5, alternative="less").pvalue, rel=1e-10)
    assert j.estimate == k / n and (j.low, j.high) == (low, high)


def test_share_null_and_planted():
    rng = np.random.default_rng(15)
    kw = dict(p0=0.25, paper_share=0.9, smallest_share=0.5)
    # Null: each seed shows the pattern by chance with p0 = 0.25; 2000 experiments of 16 seeds.
    null = [stats.share(x, **kw).verdict for x in rng.random((2000, 16)) < 0.25]
    assert _rate(null, "reproduced") <= ALPHA  # exact test: conservative
    # A pattern on half the seeds at most (smallest share of interest): rarely contradicted.
    boundary = [stats.share(x, **kw).verdict for x in rng.random((2000, 16)) < 0.5]
    assert _rate(boundary, "contradicted") <= ALPHA
    planted = [stats.share(x, **kw).verdict for x in rng.random((2000, 16)) < 0.9]
    assert _rate(planted, "reproduced") >= 0.95
    with pytest.raises(ValueError, match="booleans"):
        stats.share([0.5, 1.0, 0.0], **kw)
    with pytest.raises(ValueError, match=r"chance share p0 must lie in \(0, 1\)"):
        stats.share([True, False], p0=0.0, paper_share=0.9, smallest_share=0.5)


# ----------------------------------------------------------------------------- Gao's forms

def _uncentred_r2(form, d, r):
    f = stats.fit(form, d, r)
    resid = r - stats.predict(form, d, f.alpha, f.beta)
    return 1.0 - resid @ resid / (r @ r)


def test_noise_around_a_half_fails_although_uncentred_r2_was_high():
    # The case from the report: pure noise around 0.5 scored an uncentred R² of 0.91 (best-of-n
    # form) and 0.96 (RL form), and became "reproduced"; the centred R² is -9.9 and -4.4.
    d = np.linspace(0.25, 4.0, 10)
    r = 0.5 + 0.05 * np.random.default_rng(5).normal(size=d.size)
    assert _uncentred_r2("bon", d, r) == pytest.approx(0.914, abs=1e-3)
    assert _uncentred_r2("rl", d, r) == pytest.approx(0.957, abs=1e-3)
    for form, centred in [("bon", -9.86), ("rl", -4.45)]:
        assert stats.fit(form, d, r).r2 == pytest.approx(centred, abs=0.01)
        v = stats.fit_verdict(form, d, r)
        assert not v.passes and v.r2 < 0
        assert any("centred R²" in why for why in v.failures)
        assert any("not below the flat model" in why for why in v.failures)


@pytest.mark.parametrize("form", stats.FORMS)
def test_fit_verdict_null_curves_never_pass(form):
    rng = np.random.default_rng(16)
    d = np.linspace(0.25, 4.0, 10)
    # Flat rewards (noise around 0, 0.5 or 1): no pass at all over 300 curves each.
    for level in (0.0, 0.5, 1.0):
        passes = [stats.fit_verdict(form, d, level + 0.05 * rng.normal(size=d.size)).passes
                  for _ in range(300)]
        assert not any(passes)
    # A steady rise with no fall (beta = 0): R² is high, but the fall is not shown.
    rise = [stats.fit_verdict(form, d, 0.2 * d + 0.02 * rng.normal(size=d.size))
            for _ in range(400)]
    assert np.mean([v.passes for v in rise]) <= ALPHA + TOL
    assert np.mean([v.r2 >= 0.9 for v in rise]) > 0.9  # the R² alone would have passed them


@pytest.mark.parametrize("form,alpha,beta", [("bon", 1.0, 0.25), ("rl", 0.5, 0.5)])
def test_fit_verdict_passes_gao_curves(form, alpha, beta):
    rng = np.random.default_rng(17)
    d = np.linspace(0.25, 4.0, 10)
    exact = stats.predict(form, d, alpha, beta)
    verdicts = [stats.fit_verdict(form, d, exact + 0.02 * rng.normal(size=d.size))
                for _ in range(300)]
    assert np.mean([v.passes for v in verdicts]) >= 0.95
    v = stats.fit_verdict(form, d, exact)
    assert v.passes and v.failures == () and v.oos_rmse < 1e-10 < v.null_oos_rmse
    assert v.alpha_p < 1e-100 and v.beta_p < 1e-100
    # Each criterion fails on its own: the wrong sign of beta (a curve that accelerates).
    up = stats.fit_verdict(form, d, stats.predict(form, d, alpha, -beta))
    assert not up.passes
    assert up.failures == (f"beta = {-beta:.4g} not shown > 0 (no fall after the rise)",)
    # The extrapolation alone: a rise that stops dead at d = 2.2. The in-sample R² is high, but
    # the small-d fit keeps rising and the flat model predicts the plateau better.
    plateau = np.where(d < 2.2, stats.predict(form, d, alpha, 0.05), 0.0)
    plateau[d >= 2.2] = 0.9 * plateau[d < 2.2][-1]
    stop = stats.fit_verdict(form, d, plateau)
    assert stop.r2 > 0.9 and stop.oos_rmse > 2 * stop.null_oos_rmse
    assert len(stop.failures) == 1 and "not below the flat model" in stop.failures[0]


def test_fit_verdict_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 4 points"):
        stats.fit_verdict("bon", [0.1, 0.2, 0.3], [0.1, 0.2, 0.1])
    with pytest.raises(ValueError, match=r"min_r2 must lie in \(0, 1\]"):
        stats.fit_verdict("bon", np.arange(6.0), np.arange(6.0), min_r2=0.0)
    with pytest.raises(ValueError, match="unknown functional form"):
        stats.fit_verdict("exp", np.arange(6.0), np.arange(6.0))
    assert math.isnan(stats.fit("bon", [1.0, 2.0, 3.0], [0.5, 0.5, 0.5]).r2)  # no variance


# ----------------------------------------------------------------------------- power

def test_minimum_detectable_effect_has_its_power():
    # Close to the normal-approximation formula (t_{1-alpha} + t_{power}) sd / sqrt(n).
    approx = (scipy_stats.t.ppf(0.95, 15) + scipy_stats.t.ppf(0.8, 15)) * 2.0 / 4.0
    mde = stats.minimum_detectable_effect(2.0, 16)
    assert abs(mde - approx) < 0.02 * approx
    # Simulated: a true effect of exactly the MDE is detected about 80% of the time.
    rng = np.random.default_rng(18)
    x_SxR = rng.normal(mde, 2.0, (20000, 16))
    t_S = x_SxR.mean(1) / (x_SxR.std(1, ddof=1) / 4.0)
    assert abs(np.mean(t_S > scipy_stats.t.ppf(0.95, 15)) - 0.8) < 0.015
    # Two independent arms of 16 seeds: difference of means, pooled t with 30 df.
    mde2 = stats.minimum_detectable_effect(2.0, 16, paired=False)
    a_SxR, b_SxR = rng.normal(mde2, 2.0, (20000, 16)), rng.normal(0.0, 2.0, (20000, 16))
    pooled_S = np.sqrt((a_SxR.var(1, ddof=1) + b_SxR.var(1, ddof=1)) / 2 * (2 / 16))
    t_S = (a_SxR.mean(1) - b_SxR.mean(1)) / pooled_S
    assert abs(np.mean(t_S > scipy_stats.t.ppf(0.95, 30)) - 0.8) < 0.015
    # More seeds detect smaller effects; a two-sided test needs a larger one.
    assert stats.minimum_detectable_effect(2.0, 64) < mde < stats.minimum_detectable_effect(
        2.0, 16, one_sided=False)


def test_observed_minimum_detectable_effect_uses_the_seeds_spread():
    x = np.random.default_rng(19).normal(0.0, 1.5, 16)
    assert stats.observed_minimum_detectable_effect(x) == pytest.approx(
        stats.minimum_detectable_effect(x.std(ddof=1), 16))
    y = x + np.random.default_rng(20).normal(0.0, 0.1, 16)
    assert stats.observed_minimum_detectable_effect(y, x) == pytest.approx(
        stats.minimum_detectable_effect((y - x).std(ddof=1), 16))
    # Unpaired: the pooled spread of two arms, far larger than that of the paired differences.
    unpaired = stats.observed_minimum_detectable_effect(y, x, paired=False)
    assert unpaired == pytest.approx(stats.minimum_detectable_effect(
        math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2), 16, paired=False))
    assert unpaired > 10 * stats.observed_minimum_detectable_effect(y, x)


def test_minimum_equivalence_margin_and_share_have_their_power():
    rng = np.random.default_rng(21)
    margin = stats.minimum_equivalence_margin(1.0, 16)
    shown = [stats.equivalent(x, margin=margin).verdict == "reproduced"
             for x in rng.normal(0.0, 1.0, (4000, 16))]
    assert abs(np.mean(shown) - 0.8) < 0.03
    p = stats.minimum_detectable_share(16, 0.25)
    k_S = rng.binomial(16, p, 20000)
    assert abs(np.mean(scipy_stats.binom.sf(k_S - 1, 16, 0.25) <= ALPHA) - 0.8) < 0.015
    assert math.isnan(stats.minimum_detectable_share(2, 0.5))  # 2 seeds never reach p <= 0.05


def test_power_rejects_bad_input():
    with pytest.raises(ValueError, match="too few seeds: need n >= 2"):
        stats.minimum_detectable_effect(1.0, 1)
    with pytest.raises(ValueError, match="sd must be finite and > 0"):
        stats.minimum_detectable_effect(math.nan, 16)
    with pytest.raises(ValueError, match=r"power must lie in \(alpha, 1\)"):
        stats.minimum_detectable_effect(1.0, 16, power=1.0)
    with pytest.raises(ValueError, match="alpha must lie in"):
        stats.minimum_detectable_effect(1.0, 16, alpha=0.0)
    with pytest.raises(ValueError, match="no spread"):
        stats.observed_minimum_detectable_effect(np.ones(8))
    with pytest.raises(ValueError, match="same number of seeds"):
        stats.observed_minimum_detectable_effect(np.arange(8.0), np.arange(9.0), paired=False)


def test_tests_reject_bad_seed_values():
    with pytest.raises(ValueError, match="too few seeds: need at least 2, got 1"):
        stats.directional([0.3], paper_effect=1.0, smallest_effect=0.1)
    with pytest.raises(ValueError, match="finite"):
        stats.directional([0.3, math.nan, 0.2], paper_effect=1.0, smallest_effect=0.1)
    with pytest.raises(ValueError, match="one value per seed"):
        stats.t_interval(np.ones((3, 2)))
    with pytest.raises(ValueError, match="no spread across seeds"):
        stats.equivalent([0.2, 0.2, 0.2], margin=0.5)
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 0.5\)"):
        stats.equivalent([0.1, 0.2, 0.3], margin=0.5, alpha=0.5)
    with pytest.raises(ValueError, match="method 't' tests the mean"):
        stats.directional([0.1, 0.2], paper_effect=1.0, smallest_effect=0.1, statistic=np.median)
