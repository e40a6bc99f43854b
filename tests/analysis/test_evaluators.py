"""align.analysis.evaluators: exact rates on hand-built outputs, weighted and not."""

import math

import numpy as np
import pytest

from align.analysis import evaluators


def test_rates_of_four_outputs_one_per_cell():
    r = evaluators.rates([1, 1, 0, 0], [1, 0, 1, 0])
    assert r == evaluators.Rates(0.5, 0.5, 0.5, 0.5, 0.5)


def test_rates_with_weights_and_approval_probabilities():
    # FP mass 0.25 * 0.5 + 0.25 * 0.1 = 0.15 of wrong mass 0.5; FN mass 0.5 * 0.2 = 0.1 of 0.5.
    r = evaluators.rates([1, 0, 0], [0.8, 0.5, 0.1], [0.5, 0.25, 0.25])
    assert r.correctness == pytest.approx(0.5, abs=1e-15)
    assert r.approval == pytest.approx(0.55, abs=1e-15)
    assert r.false_positive_rate == pytest.approx(0.3, abs=1e-15)
    assert r.false_negative_rate == pytest.approx(0.2, abs=1e-15)
    assert r.error_rate == pytest.approx(0.25, abs=1e-15)


def test_weighted_candidates_equal_the_dataset_that_repeats_them():
    truth, approval, counts = [1, 0, 1, 0, 0], [1, 1, 0, 0, 1], [3, 1, 2, 5, 4]
    weighted = evaluators.rates(truth, approval, counts)
    repeated = evaluators.rates(np.repeat(truth, counts), np.repeat(approval, counts))
    np.testing.assert_allclose(weighted, repeated, rtol=0, atol=1e-15)
    # 15 outputs: 5 right (2 rejected), 10 wrong (5 approved).
    np.testing.assert_allclose(weighted, [5 / 15, 8 / 15, 7 / 15, 0.5, 0.4], atol=1e-15)


def test_policy_rates_are_means_over_prompts_of_the_exact_expectations():
    truth_NxM = np.array([[1.0, 0.0], [0.0, 0.0]])
    approval_NxM = np.array([[0.9, 0.6], [0.2, 1.0]])
    p_NxM = np.array([[0.25, 0.75], [0.5, 0.5]])
    r = evaluators.policy_rates(truth_NxM, approval_NxM, np.log(p_NxM))
    # Wrong mass (0.75 + 1) / 2; false positives (0.75 * 0.6 + 0.5 * 0.2 + 0.5 * 1.0) / 2.
    assert r.correctness == pytest.approx(0.125)
    assert r.false_positive_rate == pytest.approx((0.45 + 0.1 + 0.5) / 1.75)
    assert r.false_negative_rate == pytest.approx(0.1)
    assert r.approval == pytest.approx((0.225 + 0.45 + 0.1 + 0.5) / 2)


def test_change_is_after_minus_before():
    before = evaluators.Rates(0.5, 0.4, 0.3, 0.2, 0.1)
    after = evaluators.Rates(0.5, 0.6, 0.35, 0.45, 0.05)
    np.testing.assert_allclose(evaluators.change(before, after), [0.0, 0.2, 0.05, 0.25, -0.05],
                               atol=1e-15)


def test_undefined_conditional_rates_are_nan():
    r = evaluators.rates([1, 1], [1, 0])
    assert math.isnan(r.false_positive_rate) and r.false_negative_rate == 0.5
    assert math.isnan(evaluators.rates([0, 0], [1, 0]).false_negative_rate)


@pytest.mark.parametrize("args, match", [
    (([1, 2], [1, 0]), "truth"),
    (([1, 0], [1, -0.1]), "approval"),
    (([1, 0], [1, 0], [1, -1]), "weights"),
    (([1, 0], [1, 0], [0, 0]), "sum to 0"),
    (([1, 0, 1], [1, 0]), "broadcast"),
])
def test_bad_inputs_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        evaluators.rates(*args)


def test_policy_rates_needs_prompts_by_candidates():
    with pytest.raises(ValueError, match=r"\[N, M\]"):
        evaluators.policy_rates([1, 0], [1, 0], np.log([0.5, 0.5]))
