"""The learned-cycle precondition: exact recovery, a null where it must not pass, a planted
cycle where it must, and the review world's judge read through its own terms."""

import os

import numpy as np
import pytest

from align import config as config_lib
from align import errors
from align import main
from align.evaluate import cycle
from align.tasks import labelers, reviews

W = 0.5  # the judge's cycle weight


def _pairs(rng, n):
    delta_N = rng.normal(0.0, 0.5, n)
    cycle_N = rng.choice([-1.0, 0.0, 1.0], n)
    return delta_N, cycle_N


def test_exact_coefficients_are_recovered():
    rng = np.random.default_rng(0)
    delta_N, cycle_N = _pairs(rng, 200)
    fit = cycle.fit_cycle(0.3 + 2.0 * delta_N + 0.5 * cycle_N, delta_N, cycle_N)
    assert (fit.intercept, fit.alpha, fit.gamma) == pytest.approx((0.3, 2.0, 0.5), abs=1e-10)
    assert fit.r2 == pytest.approx(1.0)
    result = cycle.check(fit, judge_weight=W)
    assert result.share == pytest.approx(0.5)  # (0.5 / 2) / 0.5


def test_ols_and_robust_covariance_match_a_direct_computation():
    rng = np.random.default_rng(1)
    delta_N, cycle_N = _pairs(rng, 300)
    y = 1.5 * delta_N + 0.2 * cycle_N + rng.normal(0, 1 + np.abs(delta_N))
    fit = cycle.fit_cycle(y, delta_N, cycle_N)
    x = np.stack([np.ones(300), delta_N, cycle_N], 1)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    np.testing.assert_allclose([fit.intercept, fit.alpha, fit.gamma], coef, rtol=1e-10)
    e = y - x @ coef
    bread = np.linalg.inv(x.T @ x)
    hc1 = bread @ (x.T @ np.diag(e ** 2) @ x) @ bread * 300 / 297
    np.testing.assert_allclose(fit.cov, hc1, rtol=1e-10)


def test_null_no_cycle_rarely_passes():
    """A model that learned only the transitive part (a reward model's logits): the rule's
    false-pass rate stays at or below its 5% level."""
    rng = np.random.default_rng(2)
    passes = 0
    for _ in range(300):
        delta_N, cycle_N = _pairs(rng, 256)
        logit_N = 1.7 * delta_N + rng.normal(0, 1.0, 256)
        passes += cycle.check(cycle.fit_cycle(logit_N, delta_N, cycle_N), judge_weight=W).learned
    assert passes / 300 <= 0.05


def test_a_weak_cycle_below_the_threshold_does_not_pass():
    """A model whose cycle is real but a tenth of the judge's (the pattern 1.72·Δ + 0.04·C):
    significant, yet below the threshold: not learned."""
    rng = np.random.default_rng(3)
    passes = 0
    for _ in range(200):
        delta_N, cycle_N = _pairs(rng, 2048)
        logit_N = 1.72 * delta_N + 0.1 * 1.72 * W * cycle_N + rng.normal(0, 0.5, 2048)
        passes += cycle.check(cycle.fit_cycle(logit_N, delta_N, cycle_N), judge_weight=W).learned
    assert passes / 200 <= 0.05


# The cycle over three styles: C[i, j] = +1 when style i beats style j.
CYCLE_3x3 = np.array([[0, 1, -1], [-1, 0, 1], [1, -1, 0]], np.float64)


def test_a_transitive_style_preference_on_uneven_pairs_is_not_a_cycle():
    """A Bradley–Terry model that ranks style 0 > 1 > 2, on pairs where styles 0 and 1 are
    common and 2 rare: its style differences correlate with C, so without the styles' terms
    the rule would call it a cycle; with them it does not."""
    rng = np.random.default_rng(5)
    fooled = passes = 0
    for _ in range(100):
        n = 1024
        sa, sb = (rng.choice(3, n, p=[0.45, 0.45, 0.1]) for _ in range(2))
        delta_N, cycle_N = rng.normal(0.0, 0.5, n), CYCLE_3x3[sa, sb]
        potential = np.array([2.0, 0.0, -2.0])
        logit_N = 2.0 * delta_N + potential[sa] - potential[sb] + rng.normal(0, 0.5, n)
        fooled += cycle.check(cycle.fit_cycle(logit_N, delta_N, cycle_N), judge_weight=W).learned
        passes += cycle.check(cycle.fit_cycle(logit_N, delta_N, cycle_N, style_a_N=sa,
                                              style_b_N=sb), judge_weight=W).learned
    assert fooled >= 90 and passes <= 5
    # A real cycle on the same uneven pairs is still found with the styles' terms.
    logit_N = 2.0 * (delta_N + W * cycle_N) + potential[sa] - potential[sb]
    fit = cycle.fit_cycle(logit_N, delta_N, cycle_N, style_a_N=sa, style_b_N=sb)
    assert fit.gamma == pytest.approx(2.0 * W) and cycle.check(fit, judge_weight=W).learned


def test_planted_cycle_passes():
    rng = np.random.default_rng(4)
    passes = 0
    for _ in range(200):
        delta_N, cycle_N = _pairs(rng, 512)
        logit_N = 2.0 * (delta_N + W * cycle_N) + rng.normal(0, 1.0, 512)
        passes += cycle.check(cycle.fit_cycle(logit_N, delta_N, cycle_N), judge_weight=W).learned
    assert passes / 200 >= 0.9


def test_the_review_judge_has_share_one_through_its_own_terms():
    world = reviews.ReviewWorld()
    judge = labelers.Labeler(world, labelers.LabelerConfig(temperature=0.25, intransitive=W))
    rng = reviews.stream_rng(0, "test", "cycle")
    prompts = world.prompts(300, split="test")
    pairs = [world.completions(p, 2, rng=rng) for p in prompts]
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    terms = cycle.labeler_terms(judge, prompts, a, b)
    probs = [judge.preference_prob(p, x, y) for p, x, y in zip(prompts, a, b)]
    result = cycle.check(cycle.fit_cycle(cycle.logits(probs), **terms), judge_weight=W)
    assert result.learned and result.share == pytest.approx(1.0, abs=1e-4)
    # A Bradley–Terry judge of the same scores has no cycle.
    bt = labelers.Labeler(world, labelers.LabelerConfig(temperature=0.25))
    probs = [bt.preference_prob(p, x, y) for p, x, y in zip(prompts, a, b)]
    result = cycle.check(cycle.fit_cycle(cycle.logits(probs), **terms), judge_weight=W)
    assert not result.learned and abs(result.share) < 1e-4
    assert "NOT learned" in result.describe()


@pytest.mark.parametrize("args, message", [
    ((np.zeros(10), np.zeros(9), np.zeros(10)), "delta_N must be a vector of 10"),
    ((np.zeros(4), np.zeros(4), np.zeros(4)), "at least 8 pairs"),
    ((np.arange(10.0), np.arange(10.0), np.zeros(10)), "cycle_N does not vary"),
    ((np.full(10, np.nan), np.arange(10.0), np.arange(10.0)), "non-finite"),
])
def test_bad_inputs_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        cycle.fit_cycle(*args)


def test_check_of_a_trained_preference_model_run(tmp_path):
    """End to end on a tiny preference-model run from a random start: the check reads the
    run's own held-out pairs and judge, and gives a finite share (a few steps learn no
    cycle, so it is not learned). A run whose judge has no cycle is refused, naming the key."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def train(workdir, intransitive):
        cfg = config_lib.resolve(
            os.path.join(root, "configs/reward_model.py:objective=preference_model,size=tiny,"
                               "steps=2"),
            ["--config.init.workdir=", "--config.init.config=",
             f"--config.data.data_dir={tmp_path / 'data'}", "--config.data.num_train=256",
             "--config.data.num_test=128", "--config.data.num_prompts=64",
             "--config.eval.num_batches=1", "--config.train.progress=False",
             f"--config.task.intransitive={intransitive}"])
        main.run(cfg, str(workdir))

    train(tmp_path / "pm", 0.5)
    result = cycle.preference_model_check(str(tmp_path / "pm"), max_pairs=96, batch_size=32)
    assert result.fit.n == 96 and np.isfinite(result.fit.alpha)
    assert not result.learned
    train(tmp_path / "pm_bt", 0.0)
    with pytest.raises(errors.ConfigError, match="task.intransitive"):
        cycle.preference_model_check(str(tmp_path / "pm_bt"))
