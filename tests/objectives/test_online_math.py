"""Tests for align.objectives.online_math: float64 oracles, exact values, exact expected gradients.

Dimension letters: B sequences, S samples per prompt, N completion tokens, A actions, Y sequences
of a tabular tree.
"""
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from align.objectives import online_math as om
from align.objectives import pairwise as pw


def random_preference(rng, a):
    """P = ½ + M with M antisymmetric: P + Pᵀ = 1, entries in [0, 1]."""
    m = rng.uniform(-0.5, 0.5, (a, a))
    return 0.5 + (m - m.T) / 2


def np_log_softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def np_kl(logp, logq):
    return float(np.sum(np.exp(logp) * (logp - logq)))


# ----------------------------------------------------------------------------- online pair loss


def o_ipo(rw, rl, tau):
    return (rw - rl - 1 / (2 * tau)) ** 2


def o_dpo(rw, rl, beta):
    return np.logaddexp(0.0, -beta * (rw - rl))


@pytest.mark.parametrize("soft", [True, False])
@pytest.mark.parametrize("kind", ["ipo", "dpo"])
def test_online_pair_loss_matches_oracle(soft, kind):
    rng = np.random.default_rng(0)
    ra, rb = rng.normal(size=(2, 7))
    p = np.concatenate([rng.uniform(size=6), [0.5]])
    fn, oracle = ((functools.partial(pw.ipo_loss, tau=0.3), functools.partial(o_ipo, tau=0.3))
                  if kind == "ipo" else
                  (functools.partial(pw.dpo_loss, beta=0.7), functools.partial(o_dpo, beta=0.7)))
    if soft:
        want = p * oracle(ra, rb) + (1 - p) * oracle(rb, ra)
    else:  # a wins when p > ½ and on ties
        want = np.where(p >= 0.5, oracle(ra, rb), oracle(rb, ra))
    with jax.enable_x64(True):
        got = om.online_pair_loss(ra, rb, p, loss_fn=fn, soft=soft)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, want, rtol=1e-12)
    got32 = om.online_pair_loss(jnp.asarray(ra, jnp.float32), jnp.asarray(rb, jnp.float32),
                                jnp.asarray(p, jnp.float32), loss_fn=fn, soft=soft)
    assert got32.dtype == jnp.float32
    np.testing.assert_allclose(got32, want, rtol=1e-5)


def test_soft_equals_hard_at_certain_preferences():
    rng = np.random.default_rng(1)
    ra, rb = rng.normal(size=(2, 6))
    p = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    fn = functools.partial(pw.ipo_loss, tau=0.2)
    soft = om.online_pair_loss(ra, rb, p, loss_fn=fn, soft=True)
    hard = om.online_pair_loss(ra, rb, p, loss_fn=fn, soft=False)
    np.testing.assert_allclose(soft, hard, rtol=1e-6)
    # The two orders differ, so equality above is not vacuous.
    assert np.all(np.abs(fn(ra, rb) - fn(rb, ra)) > 1e-3)


@pytest.mark.parametrize("soft", [True, False])
def test_online_ipo_at_reference_is_quarter_tau_squared(soft):
    tau = 0.25
    p = np.array([0.0, 0.3, 0.5, 0.9, 1.0])
    z = np.zeros(5)
    got = om.online_pair_loss(z, z, p, loss_fn=functools.partial(pw.ipo_loss, tau=tau), soft=soft)
    np.testing.assert_allclose(got, 1 / (4 * tau ** 2), rtol=1e-6)


def test_online_pair_loss_check_grads():
    rng = np.random.default_rng(2)
    ra, rb = rng.normal(size=(2, 5))
    p = rng.uniform(size=5)
    with jax.enable_x64(True):
        for soft in (True, False):
            fn = lambda a, b, s=soft: om.online_pair_loss(
                a, b, p, loss_fn=functools.partial(pw.dpo_loss, beta=0.5), soft=s)
            check_grads(fn, (jnp.asarray(ra), jnp.asarray(rb)), order=1, modes=("rev",))


def test_online_pair_loss_rejects_bad_preferences_and_shapes():
    fn = functools.partial(pw.ipo_loss, tau=0.1)
    with pytest.raises(ValueError, match=r"pref_B must lie in \[0, 1\]; pref_B\[1\]"):
        om.online_pair_loss(np.zeros(3), np.zeros(3), np.array([0.2, 1.5, 0.1]), loss_fn=fn,
                            soft=True)
    with pytest.raises(ValueError, match="share one shape"):
        om.online_pair_loss(np.zeros(3), np.zeros(2), np.zeros(3), loss_fn=fn, soft=True)


# ------------------------------------------------------------------------ reward-to-go, Nash-MD-PG


def test_reward_to_go_hand_values():
    x = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, -1.0, 5.0, 100.0]])
    m = np.array([[1, 1, 1, 1], [1, 0, 1, 0]])
    np.testing.assert_array_equal(om.reward_to_go(x, m), [[10, 9, 7, 4], [6, 0, 5, 0]])


def o_rtg(x, m):
    xm = x * m
    return np.flip(np.cumsum(np.flip(xm, 1), 1), 1) * m


def random_tokens(seed, b=4, n=6):
    rng = np.random.default_rng(seed)
    logp = -rng.exponential(size=(b, n))
    ref = -rng.exponential(size=(b, n))
    mask = np.ones((b, n))
    for i, length in enumerate(rng.integers(1, n + 1, size=b)):
        mask[i, length:] = 0
    pref = rng.uniform(size=b)
    return logp, ref, mask, pref


def test_nash_md_pg_losses_match_oracle_values_and_gradients():
    logp, ref, mask, pref = random_tokens(3)
    tau, kl_coef = 0.3, 0.2
    adv = (pref - 0.5)[:, None] - tau * o_rtg(logp - ref, mask)
    want_exact = -np.sum(logp * adv * mask, 1)
    want_trl = (kl_coef * np.sum((logp - ref) * logp * mask, 1)
                - (pref - 0.5) * np.sum(logp * mask, 1))
    with jax.enable_x64(True):
        np.testing.assert_allclose(om.reward_to_go(logp, mask), o_rtg(logp, mask), rtol=1e-12)
        exact = functools.partial(om.nash_md_pg_loss, ref_logp_BxN=ref, mask_BxN=mask,
                                  pref_B=pref, tau=tau)
        trl = functools.partial(om.nash_md_pg_trl_loss, ref_logp_BxN=ref, mask_BxN=mask,
                                pref_B=pref, kl_coef=kl_coef)
        np.testing.assert_allclose(exact(logp), want_exact, rtol=1e-12)
        np.testing.assert_allclose(trl(logp), want_trl, rtol=1e-12)
        np.testing.assert_allclose(
            om.nash_md_pg_advantages(logp, ref, mask, pref, tau=tau), adv * mask, rtol=1e-12)
        # Stop-gradients: d loss / d ℓ_n is −A_n (exact) and kl_coef·r_n − (P − ½) (TRL).
        g_exact = jax.grad(lambda lp: jnp.sum(exact(lp)))(jnp.asarray(logp))
        g_trl = jax.grad(lambda lp: jnp.sum(trl(lp)))(jnp.asarray(logp))
    np.testing.assert_allclose(g_exact, -adv * mask, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        g_trl, (kl_coef * (logp - ref) - (pref - 0.5)[:, None]) * mask, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("fn", ["exact", "trl"])
def test_nash_md_pg_masked_equals_sliced(fn):
    logp, ref, _, pref = random_tokens(4, b=3, n=5)
    lengths = [5, 2, 3]
    mask = (np.arange(5)[None] < np.array(lengths)[:, None]).astype(np.float32)
    padded = np.where(mask > 0, logp, -np.inf)  # padding may carry -inf log-probs
    loss = (functools.partial(om.nash_md_pg_loss, tau=0.4) if fn == "exact"
            else functools.partial(om.nash_md_pg_trl_loss, kl_coef=0.4))
    total = lambda lp: jnp.sum(loss(lp, ref, mask, pref))
    value, grad = jax.value_and_grad(total)(jnp.asarray(padded, jnp.float32))
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[mask == 0] == 0)
    for i, length in enumerate(lengths):
        sliced = loss(logp[i:i + 1, :length], ref[i:i + 1, :length], np.ones((1, length)),
                      pref[i:i + 1])
        np.testing.assert_allclose(loss(padded, ref, mask, pref)[i], sliced[0], rtol=1e-5)
    assert np.isfinite(value)


# ------------------------------------------------------------------------ exact expected gradients


def tabular_objective(logits, ref_logp, pref, tau, beta):
    """J(θ) = P(π_θ ≻ sg π_mix) − τ KL(π_θ ‖ μ), by enumeration (float64)."""
    logp = jax.nn.log_softmax(logits)
    mix = jax.lax.stop_gradient(om.geometric_mixture(logp, ref_logp, beta))
    return jnp.exp(logp) @ (pref @ jnp.exp(mix)) - tau * jnp.sum(jnp.exp(logp) * (logp - ref_logp))


def single_token_problem(seed, a=5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=a), np_log_softmax(rng.normal(size=a)), random_preference(rng, a)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_tabular_grad_is_the_gradient_of_the_objective(beta):
    logits, ref, pref = single_token_problem(5)
    with jax.enable_x64(True):
        want = jax.grad(tabular_objective)(logits, ref, pref, 0.3, beta)
        got = om.tabular_nash_md_pg_grad(logits, ref, pref, tau=0.3, beta=beta)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


def expected_loss_gradient(loss_fn, logits, ref, pref, tau, beta):
    """Σ_{y, y'} π(y) π_mix(y') ∇_θ loss(y, y') for single-token sequences (N = 1)."""
    a = logits.shape[0]
    y, y2 = (g.ravel() for g in np.meshgrid(np.arange(a), np.arange(a), indexing="ij"))
    logp = np_log_softmax(logits)
    mix = np.asarray(om.geometric_mixture(logp, ref, beta))
    w = np.exp(logp[y] + mix[y2])

    def total(theta):
        lp_BxN = jax.nn.log_softmax(theta)[y][:, None]
        return jnp.sum(w * loss_fn(lp_BxN, ref[y][:, None], np.ones((a * a, 1)), pref[y, y2]))

    return jax.grad(total)(jnp.asarray(logits))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_nash_md_pg_expected_gradient_is_exact_single_token(beta):
    logits, ref, pref = single_token_problem(6)
    tau = 0.3
    with jax.enable_x64(True):
        target = om.tabular_nash_md_pg_grad(logits, ref, pref, tau=tau, beta=beta)
        exact = expected_loss_gradient(functools.partial(om.nash_md_pg_loss, tau=tau),
                                       logits, ref, pref, tau, beta)
        trl = expected_loss_gradient(functools.partial(om.nash_md_pg_trl_loss, kl_coef=tau),
                                     logits, ref, pref, tau, beta)
    assert np.linalg.norm(target) > 1e-2
    np.testing.assert_allclose(exact, -np.asarray(target), atol=1e-6)
    np.testing.assert_allclose(exact, -np.asarray(target), rtol=1e-9, atol=1e-13)
    # One token: the TRL variant's own log-ratio is the whole reward-to-go.
    np.testing.assert_allclose(trl, exact, rtol=1e-9, atol=1e-13)


def test_online_ipo_expected_update_is_self_play_nash_md_pg():
    """E∇ online IPO (y, y' ~ π, soft by P) = (4/τ)·E∇ Nash-MD-PG at β = 0 (arXiv 2403.08635)."""
    logits, ref, pref = single_token_problem(7)
    tau = 0.4
    a = logits.shape[0]
    y, y2 = (g.ravel() for g in np.meshgrid(np.arange(a), np.arange(a), indexing="ij"))
    logp = np_log_softmax(logits)
    w = np.exp(logp[y] + logp[y2])

    def total(theta):
        r = jax.nn.log_softmax(theta) - ref
        return jnp.sum(w * om.online_pair_loss(r[y], r[y2], pref[y, y2], soft=True,
                                               loss_fn=functools.partial(pw.ipo_loss, tau=tau)))

    with jax.enable_x64(True):
        ipo = jax.grad(total)(jnp.asarray(logits))
        self_play = expected_loss_gradient(functools.partial(om.nash_md_pg_loss, tau=tau),
                                           logits, ref, pref, tau, 0.0)
    assert np.linalg.norm(self_play) > 1e-2
    np.testing.assert_allclose(ipo, 4 / tau * np.asarray(self_play), rtol=1e-9, atol=1e-13)


def tree_problem(seed, a=3):
    """Two-token sequences from autoregressive tabular policies: θ = (θ1 [A], θ2 [A, A])."""
    rng = np.random.default_rng(seed)
    theta = (rng.normal(size=a), rng.normal(size=(a, a)))
    ref1, ref2 = np_log_softmax(rng.normal(size=a)), np_log_softmax(rng.normal(size=(a, a)))
    seqs = np.array(list(itertools.product(range(a), repeat=2)))  # [Y, 2]
    ref_YxN = np.stack([ref1[seqs[:, 0]], ref2[seqs[:, 0], seqs[:, 1]]], 1)
    opponent_Y = rng.dirichlet(np.ones(len(seqs)))  # any fixed opponent (e.g. a mixture, sg)
    return theta, ref_YxN, seqs, random_preference(rng, len(seqs)), opponent_Y


def tree_logp(theta, seqs):
    lp1, lp2 = jax.nn.log_softmax(theta[0]), jax.nn.log_softmax(theta[1], axis=-1)
    return jnp.stack([lp1[seqs[:, 0]], lp2[seqs[:, 0], seqs[:, 1]]], 1)  # [Y, N]


def tree_expected_gradient(loss_fn, theta, ref_YxN, seqs, pref, opponent_Y):
    n_y = len(seqs)
    y, y2 = (g.ravel() for g in np.meshgrid(np.arange(n_y), np.arange(n_y), indexing="ij"))
    w = np.exp(np.asarray(tree_logp(theta, seqs)).sum(1))[y] * opponent_Y[y2]

    def total(th):
        lp_YxN = tree_logp(th, seqs)
        return jnp.sum(w * loss_fn(lp_YxN[y], ref_YxN[y], np.ones((len(y), 2)), pref[y, y2]))

    return jax.jit(jax.grad(total))(theta)


def test_nash_md_pg_expected_gradient_is_exact_over_sequences():
    theta, ref_YxN, seqs, pref, opponent_Y = tree_problem(8)
    tau = 0.5

    def objective(th):  # E_y[P(y ≻ y') − ½] − τ KL(π_θ ‖ μ) over whole sequences
        logp_Y = tree_logp(th, seqs).sum(1)
        pi_Y = jnp.exp(logp_Y)
        return pi_Y @ (pref @ opponent_Y - 0.5) - tau * pi_Y @ (logp_Y - ref_YxN.sum(1))

    with jax.enable_x64(True):
        theta = tuple(jnp.asarray(t) for t in theta)
        target = jax.grad(objective)(theta)
        exact = tree_expected_gradient(functools.partial(om.nash_md_pg_loss, tau=tau),
                                       theta, ref_YxN, seqs, pref, opponent_Y)
        trl = tree_expected_gradient(functools.partial(om.nash_md_pg_trl_loss, kl_coef=tau),
                                     theta, ref_YxN, seqs, pref, opponent_Y)
        # What TRL leaves out: τ E[∇ℓ_1 · r_2], the future log-ratio's weight on the first token.
        w_Y = np.exp(np.asarray(tree_logp(theta, seqs)).sum(1))
        r2_Y = np.asarray(tree_logp(theta, seqs))[:, 1] - ref_YxN[:, 1]
        missing = jax.grad(lambda th: tau * jnp.sum(w_Y * tree_logp(th, seqs)[:, 0] * r2_Y))(theta)
    for t, e, m, g in zip(target, exact, missing, trl):
        np.testing.assert_allclose(e, -np.asarray(t), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(e) - np.asarray(g), np.asarray(m),
                                   rtol=1e-9, atol=1e-12)
    # The TRL variant is not the exact gradient: a visible gap on the first-token logits.
    gap = np.linalg.norm(np.asarray(trl[0]) - np.asarray(exact[0]))
    assert gap > 0.05 * np.linalg.norm(np.asarray(exact[0])), gap
    np.testing.assert_allclose(trl[1], exact[1], rtol=1e-9, atol=1e-12)  # the last token agrees


# ------------------------------------------------------------------------ KL estimates, advantages


def test_k3_kl():
    rng = np.random.default_rng(9)
    logp, ref = -rng.exponential(size=(2, 3, 5))
    d = ref - logp
    with jax.enable_x64(True):
        np.testing.assert_allclose(om.k3_kl(logp, ref), np.exp(d) - d - 1, rtol=1e-12)
    k3 = np.asarray(om.k3_kl(jnp.asarray(logp, jnp.float32),
                             jnp.asarray(logp + rng.normal(scale=1e-4, size=logp.shape),
                                         jnp.float32)))
    assert np.all(k3 >= 0)
    np.testing.assert_array_equal(om.k3_kl(logp, logp), 0.0)
    # Unbiased: its expectation under π is KL(π ‖ μ).
    lp, lr = np_log_softmax(rng.normal(size=6)), np_log_softmax(rng.normal(size=6))
    with jax.enable_x64(True):
        np.testing.assert_allclose(np.exp(lp) @ np.asarray(om.k3_kl(lp, lr)), np_kl(lp, lr),
                                   rtol=1e-10)
        check_grads(om.k3_kl, (jnp.asarray(logp), jnp.asarray(ref)), order=1, modes=("rev",))


def test_rloo_advantages():
    r = np.array([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    np.testing.assert_allclose(om.rloo_advantages(r), [[-3, -1.5, 4.5], [-1.5, -1.5, 3]],
                               rtol=1e-6)
    rng = np.random.default_rng(10)
    r = rng.normal(size=(3, 4))
    want = np.stack([r[:, i] - np.delete(r, i, 1).mean(1) for i in range(4)], 1)
    with jax.enable_x64(True):
        np.testing.assert_allclose(om.rloo_advantages(r), want, rtol=1e-12)
    with pytest.raises(ValueError, match="S >= 2"):
        om.rloo_advantages(np.ones((2, 1)))


def test_grpo_advantages():
    r = np.array([[1.0, 3.0], [2.0, 2.0]])
    # population std of {1, 3} is 1; a constant group has std 0 and advantage 0.
    np.testing.assert_allclose(om.grpo_advantages(r, eps=0.0 + 1e-12), [[-1, 1], [0, 0]],
                               atol=1e-6)
    np.testing.assert_allclose(om.grpo_advantages(r), [[-1 / 1.0001, 1 / 1.0001], [0, 0]],
                               rtol=1e-6)
    rng = np.random.default_rng(11)
    r = rng.normal(size=(3, 5))
    c = r - r.mean(1, keepdims=True)
    with jax.enable_x64(True):
        np.testing.assert_allclose(om.grpo_advantages(r, eps=1e-4),
                                   c / (r.std(1, keepdims=True) + 1e-4), rtol=1e-12)
        np.testing.assert_allclose(om.grpo_advantages(r, eps=1e-4, ddof=1),
                                   c / (r.std(1, ddof=1, keepdims=True) + 1e-4), rtol=1e-12)
        check_grads(lambda x: om.rloo_advantages(x) + om.grpo_advantages(x), (jnp.asarray(r),),
                    order=1, modes=("rev",))
    with pytest.raises(ValueError, match=r"\[B, S\]"):
        om.grpo_advantages(np.ones(4))


def best_of_n_exact_kl(probs, rewards, n):
    """KL(π_BoN ‖ π) for distinct rewards: π_BoN(y) = F(y)^n − F(y⁻)^n in reward order."""
    order = np.argsort(rewards)
    cdf = np.cumsum(probs[order])
    cdf_below = np.concatenate([[0.0], cdf[:-1]])
    bon = cdf ** n - cdf_below ** n
    keep = bon > 0
    return float(np.sum(bon[keep] * np.log(bon[keep] / probs[order][keep])))


def test_best_of_n_kl():
    assert om.best_of_n_kl(1) == 0.0
    np.testing.assert_allclose(om.best_of_n_kl(4), math.log(4) - 0.75, rtol=1e-15)
    rng = np.random.default_rng(12)
    # Many atoms, each of small mass: the exact enumeration reaches the analytic value.
    probs = rng.dirichlet(np.ones(200_000))
    rewards = rng.permutation(len(probs)).astype(float)
    for n in (2, 4, 16):
        np.testing.assert_allclose(best_of_n_exact_kl(probs, rewards, n), om.best_of_n_kl(n),
                                   rtol=2e-3)
    # A small discrete π: the formula is an upper bound, strictly above the exact KL.
    small, small_rewards = np.array([0.5, 0.3, 0.2]), np.array([0.1, 2.0, 1.0])
    assert abs(best_of_n_exact_kl(small, small_rewards, 1)) < 1e-15
    for n in (2, 4, 16):
        assert best_of_n_exact_kl(small, small_rewards, n) < om.best_of_n_kl(n) - 1e-2
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="integer >= 1"):
            om.best_of_n_kl(bad)


# ----------------------------------------------------------------------------- tabular Nash-MD


def test_geometric_mixture():
    rng = np.random.default_rng(13)
    logits, ref = rng.normal(size=5) + 3.0, np_log_softmax(rng.normal(size=5))
    logp = np_log_softmax(logits)
    with jax.enable_x64(True):
        np.testing.assert_allclose(om.geometric_mixture(logits, ref, 0.0), logp, rtol=1e-12)
        np.testing.assert_allclose(om.geometric_mixture(logits, ref, 1.0), ref, rtol=1e-12)
        np.testing.assert_allclose(om.geometric_mixture(logits, ref, 0.3),
                                   np_log_softmax(0.7 * logp + 0.3 * ref), rtol=1e-12)
        # Logits and log-probs give the same mixture.
        np.testing.assert_allclose(om.geometric_mixture(logp, ref, 0.3),
                                   om.geometric_mixture(logits, ref, 0.3), rtol=1e-12)
        check_grads(lambda x: om.geometric_mixture(x, ref, 0.3), (jnp.asarray(logits),), order=1,
                    modes=("rev",))
    # An action the reference forbids stays forbidden, without NaNs, at β ∈ {0, 1}.
    masked_ref = np.where(np.arange(5) == 2, -np.inf, ref)
    assert np.all(np.isfinite(om.geometric_mixture(logits, masked_ref, 0.0)))
    assert np.exp(om.geometric_mixture(logits, masked_ref, 1.0))[2] == 0.0


def test_nash_md_step_matches_oracle():
    rng = np.random.default_rng(14)
    logp, ref = np_log_softmax(rng.normal(size=4)), np_log_softmax(rng.normal(size=4))
    pref = random_preference(rng, 4)
    eta, tau = 0.7, 0.5
    opp = np_log_softmax((1 - eta * tau) * logp + eta * tau * ref)
    want = np_log_softmax((1 - eta * tau) * logp + eta * tau * ref + eta * pref @ np.exp(opp))
    with jax.enable_x64(True):
        np.testing.assert_allclose(om.nash_md_step(logp, ref, pref, eta=eta, tau=tau), want,
                                   rtol=1e-12)
    with pytest.raises(ValueError, match=r"P \+ Pᵀ = 1"):
        om.nash_md_step(logp, ref, np.full((4, 4), 0.7), eta=eta, tau=tau)
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        om.nash_md_step(logp, ref, np.full((3, 3), 0.5), eta=eta, tau=tau)
    with pytest.raises(ValueError, match="eta·tau"):
        om.nash_md_step(logp, ref, pref, eta=3.0, tau=1.0)


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_regularized_nash_is_the_fixed_point(tau):
    rng = np.random.default_rng(15)
    a = 6
    pref, ref = random_preference(rng, a), np_log_softmax(rng.normal(size=a))
    star = om.regularized_nash(pref, ref, tau=tau)
    assert star.dtype == np.float64 and abs(np.exp(star).sum() - 1) < 1e-12
    assert om.nash_residual(star, ref, pref, tau=tau) <= 1e-12
    # Exploitability in the regularised game: the best reply to π* gains nothing over π*.
    def gap(logp):
        best_value = tau * np.log(np.exp(ref) @ np.exp(pref @ np.exp(logp) / tau))
        return best_value - (np.exp(logp) @ pref @ np.exp(logp) - tau * np_kl(logp, ref))
    assert abs(gap(star)) < 1e-10
    assert gap(np_log_softmax(star + 0.1 * rng.normal(size=a))) > 1e-6
    assert om.nash_residual(ref, ref, pref, tau=tau) > 1e-3
    with pytest.raises(RuntimeError, match="residual"):
        om.regularized_nash(pref, ref, tau=tau, iters=2)


def test_nash_md_converges_to_regularized_nash_within_the_bound():
    rng = np.random.default_rng(16)
    a, tau, steps = 5, 0.5, 2000
    pref, ref = random_preference(rng, a), np_log_softmax(rng.normal(size=a))
    star = om.regularized_nash(pref, ref, tau=tau)

    @jax.jit
    def run(logp0):
        def body(logp, t):
            eta = 2.0 / (tau * (t + 2.0))  # η_t = 2/(τ(t+2)) of Munos et al. Theorem 1
            new = om.nash_md_step(logp, ref, pref, eta=eta, tau=tau)
            return new, new
        return jax.lax.scan(body, logp0, jnp.arange(steps, dtype=jnp.float64))[1]

    with jax.enable_x64(True):
        iterates = np.asarray(run(jnp.asarray(np_log_softmax(rng.normal(size=a)))))
    kl_T = np.array([np_kl(star, lp) for lp in iterates])  # iterate T = t + 1
    bound_T = 8.0 / (tau ** 2 * (np.arange(1, steps + 1) + 1))
    assert np.all(kl_T <= bound_T)
    assert kl_T[-1] < 1e-5 and kl_T[-1] < 0.01 * kl_T[9]
    assert om.nash_residual(iterates[-1], ref, pref, tau=tau) < 1e-2


def test_regularized_nash_keeps_actions_the_reference_forbids_at_zero():
    rng = np.random.default_rng(17)
    pref = random_preference(rng, 4)
    ref = np.array([np.log(0.5), np.log(0.3), np.log(0.2), -np.inf])
    star = om.regularized_nash(pref, ref, tau=0.3)
    assert np.exp(star[3]) == 0.0 and om.nash_residual(star, ref, pref, tau=0.3) <= 1e-12
    with pytest.raises(ValueError, match=r"P\[0, 1\] \+ P\[1, 0\]"):
        om.regularized_nash(np.array([[0.5, 0.9], [0.9, 0.5]]), np.zeros(2), tau=0.3)
