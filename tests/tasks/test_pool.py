"""Tests of the exact pool world: float64 oracles, best-of-n, judges, tilts, proxies, trainer.

Dimension letters: N prompts, M candidates, R seeds, K items per list.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align.tasks import pool


def _world64(key=0, **kw):
    return pool.make_world(jax.random.key(key), dtype=jnp.float64, **kw)


def _random_logp(rng, n, m):
    x = rng.normal(0, 1.5, (n, m))
    return x - np.log(np.sum(np.exp(x), axis=-1, keepdims=True))


# ----------------------------------------------------------------------------- world, judges

def test_world_shapes_reference_normalised_and_gold_formula():
    with jax.enable_x64(True):
        w = _world64(prompts=5, candidates=24, nuisance=2)
        assert w.features.shape == (5, 24, 7) and w.ref_logp.shape == w.gold.shape == (5, 24)
        np.testing.assert_allclose(np.exp(np.asarray(w.ref_logp)).sum(-1), 1.0, atol=1e-12)
        phi = np.asarray(w.features)
        surprisal = -np.asarray(w.ref_logp) - math.log(24)
        gold = phi[..., 0] + phi[..., 1] - 2.0 * np.maximum(surprisal - 2.0, 0.0) ** 2
        np.testing.assert_allclose(np.asarray(w.gold), gold, atol=1e-12)
        assert np.any(surprisal > 2.0)  # the off-support penalty bites somewhere


def test_preference_matrix_is_a_preference():
    with jax.enable_x64(True):
        w = _world64(prompts=4)
        for judge in (pool.Judge(1.0, 0.0), pool.Judge(0.5, 2.0), pool.GOLD):
            p = np.asarray(pool.preference_matrix(w, judge))
            np.testing.assert_allclose(p + np.swapaxes(p, 1, 2), 1.0, atol=1e-12)
            np.testing.assert_allclose(np.diagonal(p, axis1=1, axis2=2), 0.5)


def _has_cycle(p_MxM):
    """Whether some y1 > y2 > y3 > y1 (each preferred with probability > 1/2)."""
    beats = p_MxM > 0.5
    return bool(np.any(np.einsum("ij,jk,ki->i", beats, beats, beats)))


def test_bt_judge_is_transitive_and_the_cyclic_judge_is_not():
    with jax.enable_x64(True):
        w = _world64(prompts=8, candidates=24)
        bt = np.asarray(pool.preference_matrix(w, pool.Judge(strength=1.0, cycle=0.0)))
        cyc = np.asarray(pool.preference_matrix(w, pool.Judge(strength=0.2, cycle=2.0)))
    assert not any(_has_cycle(p) for p in bt)
    assert any(_has_cycle(p) for p in cyc)


def test_cycle_is_the_style_cross_product():
    with jax.enable_x64(True):
        w = _world64(prompts=2, candidates=6)
        p = np.asarray(pool.preference_matrix(w, pool.Judge(strength=0.0, cycle=1.5)))
    u, v = np.asarray(w.features[..., pool.STYLE_U]), np.asarray(w.features[..., pool.STYLE_V])
    cross = u[:, :, None] * v[:, None, :] - v[:, :, None] * u[:, None, :]
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-1.5 * cross)), atol=1e-12)


# ----------------------------------------------------------------------------- exact metrics

def test_win_rate_expected_and_kl_match_a_float64_oracle():
    rng = np.random.default_rng(0)
    n, m = 3, 7
    a, b, ref = (_random_logp(rng, n, m) for _ in range(3))
    p = rng.uniform(size=(n, m, m))
    p = np.triu(p, 1) + np.tril(1 - np.swapaxes(p, 1, 2), -1) + 0.5 * np.eye(m)
    values = rng.normal(size=(n, m))
    win = [sum(np.exp(a[k, i] + b[k, j]) * p[k, i, j] for i in range(m) for j in range(m))
           for k in range(n)]
    kl = [sum(np.exp(a[k, i]) * (a[k, i] - ref[k, i]) for i in range(m)) for k in range(n)]
    with jax.enable_x64(True):
        np.testing.assert_allclose(pool.win_rate_N(a, b, p), win, rtol=1e-12)
        np.testing.assert_allclose(pool.kl_N(a, ref), kl, rtol=1e-12)
        np.testing.assert_allclose(pool.expected_N(a, values), np.sum(np.exp(a) * values, -1),
                                   rtol=1e-12)
        np.testing.assert_allclose(pool.win_rate_N(a, a, p) + pool.win_rate_N(a, a, np.swapaxes(
            p, 1, 2)), 1.0, atol=1e-12)


@pytest.mark.parametrize("width", [0, 4])
def test_zero_policy_is_the_reference(width):
    with jax.enable_x64(True):
        w = _world64(prompts=6)
        params = pool.init_params(jax.random.key(1), w.features.shape[-1], width=width,
                                  dtype=jnp.float64)
        logp = pool.policy_logits(params, w)
        np.testing.assert_allclose(logp, w.ref_logp, atol=1e-12)
        m = pool.evaluate(logp, w, pool.preference_matrix(w, pool.GOLD))
        assert float(m["kl"]) == pytest.approx(0.0, abs=1e-12)
        assert float(m["win_rate"]) == pytest.approx(0.5, abs=1e-12)


def _bon_oracle(ref_M, proxy_M, n):
    """P(best of n = y) by enumerating every n-tuple of draws, ties split uniformly."""
    out = np.zeros_like(ref_M)
    for draws in itertools.product(range(ref_M.size), repeat=n):
        prob = np.prod(ref_M[list(draws)])
        top = max(proxy_M[d] for d in draws)
        winners = [d for d in draws if proxy_M[d] == top]
        for d in winners:
            out[d] += prob / len(winners)
    return out


@pytest.mark.parametrize("proxy", [[0.3, -1.0, 2.0, 0.7, 0.1], [1.0, 0.0, 1.0, 1.0, -2.0]])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_best_of_n_matches_enumeration_with_and_without_ties(proxy, n):
    rng = np.random.default_rng(n)
    ref = _random_logp(rng, 1, 5)
    expected = _bon_oracle(np.exp(ref[0]), np.asarray(proxy), n)
    with jax.enable_x64(True):
        got = np.exp(np.asarray(pool.best_of_n_logits(ref, np.asarray([proxy]), n)))[0]
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_best_of_n_kl_approaches_the_analytic_formula_for_distinct_scores():
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        m = 4096
        ref = np.full((1, m), -math.log(m))
        proxy = rng.permutation(m)[None].astype(np.float64)
        random_ref = _random_logp(rng, 16, 32)
        random_proxy = rng.normal(size=(16, 32))
        for n in (2, 4, 16, 64):
            bound = float(pool.best_of_n_kl_bound(n))
            kl = float(pool.kl_N(pool.best_of_n_logits(ref, proxy, n), ref)[0])
            assert kl == pytest.approx(bound, abs=0.02 * bound)
            kl_N = np.asarray(pool.kl_N(pool.best_of_n_logits(random_ref, random_proxy, n),
                                        random_ref))
            assert np.all(kl_N <= bound + 1e-12) and np.all(kl_N > 0)


def test_kl_tilted_policy_maximises_the_regularised_reward():
    rng = np.random.default_rng(4)
    ref, reward = _random_logp(rng, 4, 9), rng.normal(size=(4, 9))
    beta = 0.7

    def objective(logp):
        return np.asarray(pool.expected_N(logp, reward) - beta * pool.kl_N(logp, ref))

    with jax.enable_x64(True):
        best = np.asarray(pool.tilted_logits(ref, reward, beta))
        top = objective(best)
        for _ in range(20):
            other = best + 0.3 * rng.normal(size=best.shape)
            other -= np.log(np.sum(np.exp(other), -1, keepdims=True))
            assert np.all(objective(other) < top)
        # The maximum is beta log E_ref[exp(r / beta)] (the Donsker-Varadhan identity).
        np.testing.assert_allclose(
            top, beta * np.log(np.sum(np.exp(ref + reward / beta), -1)), rtol=1e-10)


def test_over_optimising_a_proxy_that_ignores_the_penalty_loses_gold():
    with jax.enable_x64(True):
        w = _world64(prompts=128)
        proxy = w.features[..., pool.QUALITY] + w.features[..., pool.RELEVANCE]
        betas = (3.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.03)
        proxy_gold = [float(jnp.mean(pool.expected_N(pool.tilted_logits(w.ref_logp, proxy, b),
                                                     w.gold))) for b in betas]
        gold_gold = [float(jnp.mean(pool.expected_N(pool.tilted_logits(w.ref_logp, w.gold, b),
                                                    w.gold))) for b in betas]
        bon_gold = [float(jnp.mean(pool.expected_N(pool.best_of_n_logits(w.ref_logp, proxy, n),
                                                   w.gold))) for n in (1, 16, 256, 16384)]
    peak = int(np.argmax(proxy_gold))
    assert 0 < peak < len(betas) - 1 and proxy_gold[-1] < proxy_gold[peak] - 0.3
    assert np.all(np.diff(gold_gold) > 0)  # tilting toward the gold itself never loses gold
    assert bon_gold[2] > bon_gold[1] > bon_gold[0] and bon_gold[3] < bon_gold[2] - 0.3


# ----------------------------------------------------------------------------- sampled data

def test_sampled_lists_follow_the_policy_and_carry_ranker_labels():
    w = pool.make_world(jax.random.key(5), prompts=2, candidates=6)
    lists = pool.sample_lists(jax.random.key(6), w, w.ref_logp, 4000, 4, pool.Judge(1.0))
    prompts, items = np.asarray(lists.prompts), np.asarray(lists.items)
    ref = np.exp(np.asarray(w.ref_logp))
    for x in range(2):
        freq = np.bincount(items[prompts == x].ravel(), minlength=6) / items[prompts == x].size
        np.testing.assert_allclose(freq, ref[x], atol=0.02)
    p = np.asarray(pool.preference_matrix(w, pool.Judge(1.0)))
    b = 7
    psi = p[prompts[b]][items[b][:, None], items[b][None, :]].mean(-1)
    np.testing.assert_allclose(np.asarray(lists.labels[b]), psi, rtol=1e-6)
    gold = pool.sample_lists(jax.random.key(6), w, w.ref_logp, 3, 4, judge=None)
    np.testing.assert_allclose(gold.labels, w.gold[gold.prompts[:, None], gold.items])


def test_sampled_pair_labels_follow_the_judge():
    w = pool.make_world(jax.random.key(7), prompts=1, candidates=24)
    judge = pool.Judge(1.0)
    pairs = pool.sample_pairs(jax.random.key(8), w, w.ref_logp, judge, 20000)
    p = np.asarray(pool.preference_matrix(w, judge))[0][pairs.first, pairs.second]
    assert abs(float(np.mean(pairs.label)) - float(np.mean(p))) < 0.01
    assert abs(float(np.mean(pairs.label[p > 0.8])) - float(np.mean(p[p > 0.8]))) < 0.01


def test_proxy_fit_recovers_a_planted_bradley_terry_reward():
    w = pool.make_world(jax.random.key(9), prompts=128, penalty=0.0)  # gold = quality + relevance
    judge = pool.Judge(strength=2.0)
    planted = np.zeros(w.features.shape[-1])
    planted[[pool.QUALITY, pool.RELEVANCE]] = 2.0
    errors = {}
    for pairs in (128, 32768):
        params = pool.fit_proxy(jax.random.key(10), w, judge, pairs=pairs, steps=300)
        errors[pairs] = float(np.max(np.abs(np.asarray(params["w"]) - planted)))
    assert errors[32768] < 0.15 < errors[128]
    mlp = pool.fit_proxy(jax.random.key(10), w, judge, pairs=32768, width=8, steps=300)
    r = np.asarray(pool.score(mlp, w.features)).ravel()
    assert np.corrcoef(r, np.asarray(w.gold).ravel())[0, 1] > 0.98


# ----------------------------------------------------------------------------- trainer

def _pairwise_logistic(scores_BxK, labels_BxK, mask_BxK):
    """-log sigma(s_w - s_l) on lists of two (DPO with s = beta log-ratio); tied labels: 0."""
    del mask_BxK
    sign_B = jnp.sign(labels_BxK[:, 0] - labels_BxK[:, 1])
    return -jax.nn.log_sigmoid(sign_B * (scores_BxK[:, 0] - scores_BxK[:, 1])) * (sign_B != 0)


_TRAIN = dict(steps=60, lists_per_step=8, list_size=2, lr=0.05, beta=0.5)


def test_trainer_with_a_pairwise_loss_improves_the_gold_win_rate():
    w = pool.make_world(jax.random.key(11), prompts=64)
    held_out = pool.make_world(jax.random.key(12), prompts=64)
    out = pool.train(_pairwise_logistic, w, jax.random.key(13), seeds=2, eval_world=held_out,
                     record_every=20, width=4, **_TRAIN)
    win_RxT = np.asarray(out.trajectory["win_rate"])
    assert out.steps == (20, 40, 60) and win_RxT.shape == (2, 3)
    assert np.all(win_RxT[:, -1] > 0.7) and np.all(np.asarray(out.trajectory["kl"]) > 0)


def test_vmap_over_seeds_equals_separate_runs():
    short = dict(_TRAIN, steps=20)
    w = pool.make_world(jax.random.key(14), prompts=32)
    worlds = pool.make_worlds(jax.random.key(15), (0, 1, 2), prompts=32)
    for world in (w, worlds):
        # beta per seed (as a beta sweep passes it) or as one scalar: the same runs.
        together = pool.train(_pairwise_logistic, world, jax.random.key(16), seeds=(0, 1, 2),
                              **dict(short, beta=np.full(3, short["beta"])))
        one = jax.tree.map(lambda x: x[1:2], world) if world is worlds else world
        alone = pool.train(_pairwise_logistic, one, jax.random.key(16), seeds=(1,), **short)
        np.testing.assert_allclose(together.params["w"][1], alone.params["w"][0], atol=1e-6)
        np.testing.assert_allclose(together.trajectory["win_rate"][1],
                                   alone.trajectory["win_rate"][0], atol=1e-6)
        assert not np.allclose(together.params["w"][0], together.params["w"][1])
    with pytest.raises(ValueError, match="multiple of record_every"):
        pool.train(_pairwise_logistic, w, jax.random.key(0), seeds=1, record_every=7, **short)
