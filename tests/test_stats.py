"""Intervals over seeds and the over-optimisation fits (align/evaluate/stats.py)."""

import math

import numpy as np
import pytest

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
