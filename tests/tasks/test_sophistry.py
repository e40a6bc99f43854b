"""align.tasks.sophistry: the world's draws, and the evaluator's exact approval probabilities."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align.tasks import sophistry


def _hand_world():
    """Two prompts, two candidates, three claims; features (s, l, h)."""
    features = jnp.asarray([[[1.0, 0.0, 0.3], [-1.0, 2.0, 0.0]],
                            [[0.0, 0.0, 0.0], [0.5, -0.5, 1.0]]])
    consistent = jnp.asarray([[[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]],
                              [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]])
    right = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
    return sophistry.World(features, jax.nn.log_softmax(jnp.zeros((2, 2))), right, consistent)


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_approval_probability_mixes_the_claim_check_and_the_surface():
    w = _hand_world()
    ev = sophistry.Evaluator(check=0.25, confidence=1.5, length=0.5, bias=-0.2)
    surface = [[_sigmoid(1.5 - 0.2), _sigmoid(-1.5 + 1.0 - 0.2)],
               [_sigmoid(-0.2), _sigmoid(0.75 - 0.25 - 0.2)]]
    cbar = [[1.0, 1 / 3], [0.0, 2 / 3]]
    want = 0.25 * np.asarray(cbar) + 0.75 * np.asarray(surface)
    np.testing.assert_allclose(sophistry.approval_prob(w, ev), want, rtol=1e-6)
    every = sophistry.Evaluator(check=0.25, checks_all=True, confidence=1.5, length=0.5,
                                bias=-0.2)
    want_all = 0.25 * np.asarray([[1.0, 0.0], [0.0, 0.0]]) + 0.75 * np.asarray(surface)
    np.testing.assert_allclose(sophistry.approval_prob(w, every), want_all, rtol=1e-6)


def test_q_one_is_the_claim_check_and_q_zero_the_surface():
    w = _hand_world()
    np.testing.assert_allclose(sophistry.approval_prob(w, sophistry.Evaluator(check=1.0)),
                               sophistry.consistency(w), rtol=1e-6)
    surface = jax.nn.sigmoid(2.0 * w.features[..., 0] - 1.0)
    ev = sophistry.Evaluator(check=0.0, confidence=2.0, length=0.0, bias=-1.0)
    np.testing.assert_allclose(sophistry.approval_prob(w, ev), surface, rtol=1e-6)


def test_approval_probability_matches_a_simulation_of_the_evaluator():
    """Draw the evaluator's coin, then a claim (or the surface coin); compare to exact."""
    w = _hand_world()
    ev = sophistry.Evaluator(check=0.4, confidence=1.0, length=0.3)
    rng = np.random.default_rng(0)
    n = 200_000
    cons = np.asarray(w.consistent)
    surface = 1.0 / (1.0 + np.exp(-(np.asarray(w.features[..., 0])
                                    + 0.3 * np.asarray(w.features[..., 1]))))
    for i, j in np.ndindex(2, 2):
        checks = rng.random(n) < 0.4
        claim = rng.integers(0, cons.shape[-1], n)
        approve = np.where(checks, cons[i, j][claim] > 0, rng.random(n) < surface[i, j])
        assert approve.mean() == pytest.approx(float(sophistry.approval_prob(w, ev)[i, j]),
                                               abs=4 / math.sqrt(n))


def test_visible_features_append_the_share_of_consistent_claims():
    w = _hand_world()
    v = sophistry.visible_features(w)
    assert v.shape == (2, 2, 4)
    np.testing.assert_allclose(v[..., :3], w.features)
    np.testing.assert_allclose(v[..., 3], [[1.0, 1 / 3], [0.0, 2 / 3]], rtol=1e-6)
    np.testing.assert_array_equal(sophistry.true_score(w), w.right)


def test_world_shapes_and_reference_policy():
    w = sophistry.make_world(jax.random.fold_in(jax.random.key(0), 2), prompts=8, candidates=5)
    assert w.features.shape == (8, 5, 6) and w.consistent.shape == (8, 5, 4)
    np.testing.assert_allclose(jnp.exp(w.ref_logp).sum(-1), 1.0, rtol=1e-5)
    assert set(np.unique(w.right)) <= {0.0, 1.0} and set(np.unique(w.consistent)) <= {0.0, 1.0}
    ws = sophistry.make_worlds(jax.random.key(0), 3, prompts=8, candidates=5)
    assert ws.features.shape[:3] == (3, 8, 5)
    np.testing.assert_array_equal(ws.right[2], w.right)
    np.testing.assert_array_equal(ws.consistent[2], w.consistent)


def test_world_draws_follow_their_parameters():
    w = sophistry.make_world(jax.random.key(1), prompts=2000, candidates=16, claims=4,
                             p_right=0.5, hint=0.4, c_right=0.9, c_wrong=0.5, fabrication=1.0)
    right = np.asarray(w.right).ravel() > 0
    s = np.asarray(w.features[..., sophistry.PERSUASION]).ravel()
    h = np.asarray(w.features[..., sophistry.HINT]).ravel()
    cbar = np.asarray(sophistry.consistency(w)).ravel()
    assert right.mean() == pytest.approx(0.5, abs=0.01)
    assert np.corrcoef(h, right)[0, 1] == pytest.approx(0.4, abs=0.02)
    assert abs(np.corrcoef(s, right)[0, 1]) < 0.02  # persuasiveness says nothing of correctness
    assert cbar[right].mean() == pytest.approx(0.9, abs=0.005)
    # Wrong answers: P(consistent) = sigmoid(-s); at s = 0 one half, falling in s.
    wrong_near_0 = ~right & (np.abs(s) < 0.1)
    assert cbar[wrong_near_0].mean() == pytest.approx(0.5, abs=0.02)
    assert cbar[~right & (s > 1)].mean() < cbar[~right & (s < -1)].mean() - 0.3
    # pi_ref's log-linear weights: log pi_ref differences follow w . (phi - phi').
    f = np.asarray(w.features[0])
    d = np.asarray(w.ref_logp[0]) - np.asarray(w.ref_logp[0, 0])
    weights = np.array([0.3, 0.3, 0.3, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(d, (f - f[0]) @ weights, atol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(p_right=1.0), "p_right"), (dict(c_wrong=0.0), "c_wrong"), (dict(hint=1.0), "hint"),
    (dict(claims=0), "claims"),
])
def test_bad_world_parameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sophistry.make_world(jax.random.key(0), **kwargs)


def test_bad_evaluators_are_refused():
    with pytest.raises(ValueError, match="check"):
        sophistry.Evaluator(check=1.5)
    with pytest.raises(ValueError, match="confidence"):
        sophistry.Evaluator(confidence=math.inf)
