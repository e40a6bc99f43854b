"""Tests for align.objectives.ppo_math: hand values, float64 oracles, clipping, gradients.

Dimension letters: B sequences, N completion tokens.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from jax.test_util import check_grads

from align.objectives import ppo_math as pm

# Rows of valid tokens of lengths 5, 3, 1 and 6 (full) in a buffer of 6 columns.
LENGTHS = (5, 3, 1, 6)
N = 6


def prefix_mask(lengths=LENGTHS, n=N):
    return (np.arange(n)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


def random_inputs(seed=0, lengths=LENGTHS, n=N):
    rng = np.random.default_rng(seed)
    b = len(lengths)
    return rng.normal(size=(b, n)), rng.normal(size=(b, n)), prefix_mask(lengths, n)


# ----------------------------------------------------------------------------- float64 oracles


def o_gae(rewards, values, mask, gamma, lam):
    adv = np.zeros_like(rewards, dtype=np.float64)
    for b in range(rewards.shape[0]):
        n = int(mask[b].sum())
        next_adv, next_value = 0.0, 0.0
        for t in reversed(range(n)):
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            next_adv = delta + gamma * lam * next_adv
            next_value = values[b, t]
            adv[b, t] = next_adv
    returns = np.where(mask > 0, adv + values, 0.0)
    return adv, returns


# ----------------------------------------------------------------------------- rewards


def test_kl_penalty_values_and_k3_nonnegative():
    logp = np.array([[-1.0, -2.0, -0.5, -3.0]])
    ref = np.array([[-1.5, -1.0, -0.5, -0.1]])
    x = ref - logp
    np.testing.assert_allclose(pm.kl_penalty(logp, ref, kind="k1"), logp - ref, rtol=1e-6)
    np.testing.assert_allclose(pm.kl_penalty(logp, ref, kind="k3"), np.exp(x) - x - 1, rtol=1e-6)
    np.testing.assert_allclose(pm.kl_penalty(logp, ref, kind="k2"), 0.5 * x**2, rtol=1e-6)
    np.testing.assert_allclose(pm.kl_penalty(logp, ref, kind="k3")[0, 0],
                               np.exp(-0.5) - 0.5, rtol=1e-6)  # x = −0.5
    assert float(pm.kl_penalty(logp, ref, kind="k3")[0, 2]) == 0.0
    rng = np.random.default_rng(1)
    a, b = rng.normal(scale=3, size=(2, 64, 8))
    k3 = np.asarray(pm.kl_penalty(a, b, kind="k3"))
    assert k3.dtype == np.float32 and (k3 >= 0).all()
    # Tiny log-ratios: expm1 keeps k3 ≈ x²/2 > 0 where exp(x) − 1 − x would round to 0 or below.
    tiny = pm.kl_penalty(jnp.full((1, 1), 1e-4), jnp.zeros((1, 1)), kind="k3")
    np.testing.assert_allclose(tiny, 0.5e-8, rtol=1e-3)
    with pytest.raises(ValueError, match="kind must be one of"):
        pm.kl_penalty(logp, ref, kind="k4")


def test_token_rewards_placement_last_and_after_eos():
    mask = prefix_mask((2, 4, 0), 4)  # one short row, one full row, one empty row
    kl = np.full((3, 4), 2.0, np.float32)
    kl[0, 3] = np.inf  # garbage beyond the completion must not leak
    score = np.array([10.0, 20.0, 30.0])
    last = np.asarray(pm.token_rewards(score, kl, mask, kl_coef=0.5, score_position="last"))
    np.testing.assert_array_equal(last, [[-1, 9, 0, 0], [-1, -1, -1, 19], [0, 0, 0, 0]])
    after = np.asarray(pm.token_rewards(score, kl, mask, kl_coef=0.5, score_position="after_eos"))
    # One column after the last valid token; clamped to the last column for a full row;
    # column 0 for an empty row (TRL's sequence_length of −1, plus one).
    np.testing.assert_array_equal(after, [[-1, -1, 10, 0], [-1, -1, -1, 19], [30, 0, 0, 0]])
    np.testing.assert_array_equal(pm.value_mask(mask, score_position="after_eos"),
                                  [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    np.testing.assert_array_equal(pm.value_mask(mask, score_position="last"), mask)
    with pytest.raises(ValueError, match="score_position must be one of"):
        pm.token_rewards(score, kl, mask, kl_coef=0.5, score_position="first")
    with pytest.raises(ValueError, match="score_B shape"):
        pm.token_rewards(score[:2], kl, mask, kl_coef=0.5)


def test_after_eos_equals_last_for_gamma_lambda_one():
    values, kl, mask = random_inputs(3)
    score = np.array([1.0, -2.0, 0.5, 3.0])
    out = {}
    for position in pm.SCORE_POSITIONS:
        rewards = pm.token_rewards(score, kl, mask, kl_coef=0.1, score_position=position)
        out[position], _ = pm.gae(rewards, values, pm.value_mask(mask, score_position=position),
                                  gamma=1.0, lam=1.0)
    valid = mask > 0
    np.testing.assert_allclose(np.asarray(out["after_eos"])[valid],
                               np.asarray(out["last"])[valid], rtol=1e-5, atol=1e-5)
    # With λ < 1 the two placements differ (the value after eos is bootstrapped).
    a = [pm.gae(pm.token_rewards(score, kl, mask, kl_coef=0.1, score_position=p), values,
                pm.value_mask(mask, score_position=p), lam=0.5)[0] for p in pm.SCORE_POSITIONS]
    assert not np.allclose(np.asarray(a[0])[valid], np.asarray(a[1])[valid])


# ----------------------------------------------------------------------------- GAE


def test_gae_hand_values():
    # N=3, γ=1, λ=0.5; the third column is padding holding garbage.
    rewards = np.array([[1.0, 2.0, 99.0]])
    values = np.array([[0.5, 1.0, 99.0]])
    mask = np.array([[1.0, 1.0, 0.0]])
    # t=1: δ = 2 + 0 − 1 = 1, A = 1.
    # t=0: δ = 1 + 1 − 0.5 = 1.5, A = 1.5 + 0.5·1 = 2.
    adv, ret = pm.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    np.testing.assert_allclose(adv, [[2.0, 1.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(ret, [[2.5, 2.0, 0.0]], rtol=1e-6)
    # Three valid tokens, γ=0.9, λ=0.5: r = (0, 0, 1), V = (0.2, 0.4, 0.6).
    # t=2: δ = 1 − 0.6 = 0.4, A = 0.4.  t=1: δ = 0.9·0.6 − 0.4 = 0.14, A = 0.14 + 0.45·0.4 = 0.32.
    # t=0: δ = 0.9·0.4 − 0.2 = 0.16, A = 0.16 + 0.45·0.32 = 0.304.
    adv, ret = pm.gae([[0.0, 0.0, 1.0]], [[0.2, 0.4, 0.6]], [[1.0, 1.0, 1.0]], gamma=0.9, lam=0.5)
    np.testing.assert_allclose(adv, [[0.304, 0.32, 0.4]], rtol=1e-5)
    np.testing.assert_allclose(ret, [[0.504, 0.72, 1.0]], rtol=1e-5)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_float64_oracle_with_masks(gamma, lam):
    rewards, values, mask = random_inputs(4)
    garbage = np.where(mask > 0, 0.0, 1e3)  # padding content must not matter
    adv, ret = pm.gae(rewards + garbage, values - garbage, mask, gamma=gamma, lam=lam)
    o_adv, o_ret = o_gae(rewards, values, mask, gamma, lam)
    assert adv.dtype == jnp.float32
    np.testing.assert_allclose(adv, o_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, o_ret, rtol=1e-5, atol=1e-5)
    # Masked equals sliced: each row alone, cut to its length, gives the same values.
    for b, n in enumerate(LENGTHS):
        a_b, _ = pm.gae(rewards[b:b + 1, :n], values[b:b + 1, :n], mask[b:b + 1, :n],
                        gamma=gamma, lam=lam)
        np.testing.assert_allclose(a_b[0], np.asarray(adv)[b, :n], rtol=1e-5, atol=1e-5)


def test_gae_on_a_sharded_batch_equals_single_device():
    rewards, values, _ = random_inputs(5, lengths=(1, 2, 3, 4, 5, 6, 6, 2))
    mask = prefix_mask((1, 2, 3, 4, 5, 6, 6, 2))
    mesh = jax.make_mesh((8,), ("data",))
    sharding = NamedSharding(mesh, P("data", None))
    args = [jax.device_put(jnp.asarray(x, jnp.float32), sharding) for x in (rewards, values, mask)]
    adv, _ = jax.jit(lambda r, v, m: pm.gae(r, v, m, gamma=1.0, lam=0.95))(*args)
    np.testing.assert_allclose(adv, pm.gae(rewards, values, mask)[0], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- whitening


def test_whiten_over_valid_tokens():
    x, _, mask = random_inputs(6)
    x = 3.0 * x + 5.0
    valid = mask > 0
    w = np.asarray(pm.whiten(x, mask))
    np.testing.assert_allclose(w[valid].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(w[valid].std(), 1.0, rtol=1e-4)
    np.testing.assert_array_equal(w[~valid], 0.0)
    np.testing.assert_allclose(w[valid], (x[valid] - x[valid].mean()) / x[valid].std(), rtol=1e-4)
    # No mean shift: rescaled only, the mean is kept.
    w_ns = np.asarray(pm.whiten(x, mask, shift_mean=False))
    np.testing.assert_allclose(w_ns[valid], w[valid] + x[valid].mean(), rtol=1e-5)
    # TRL's unbiased variance.
    w_ub = np.asarray(pm.whiten(x, mask, unbiased=True))
    np.testing.assert_allclose(w_ub[valid].std(ddof=1), 1.0, rtol=1e-4)
    # An all-masked batch stays finite.
    assert np.isfinite(np.asarray(pm.whiten(x, np.zeros_like(mask)))).all()


# ----------------------------------------------------------------------------- policy loss


def test_policy_gradient_zero_where_clipped_and_minus_a_rho_otherwise():
    eps = 0.2
    rho = np.array([1.5, 1.5, 0.5, 0.5, 1.1, 0.9, 1.0, 1.5])
    adv = np.array([1.0, -2.0, -1.5, 0.7, 2.0, -1.0, 0.3, 1.0])
    mask = np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32)  # last token masked out
    old = np.full(8, -2.0)
    logp = old + np.log(rho)
    # Binding side: (A>0, ρ>1+ε) and (A<0, ρ<1−ε) → zero gradient.
    binds = ((adv > 0) & (rho > 1 + eps)) | ((adv < 0) & (rho < 1 - eps))
    fn = lambda lp: pm.policy_loss(lp, old[None], adv[None], mask[None], clip_eps=eps)[0]
    grad = np.asarray(jax.grad(fn)(jnp.asarray(logp[None], jnp.float32)))[0]
    expected = np.where(binds | (mask == 0), 0.0, -adv * rho)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
    # ρ=1.5 with A<0 is on the unclipped side: the gradient stays −Aρ there.
    assert binds.tolist() == [True, False, True, False, False, False, False, True]

    loss_sum, count, metrics = pm.policy_loss(logp[None], old[None], adv[None], mask[None],
                                              clip_eps=eps)
    clipped = np.clip(rho, 1 - eps, 1 + eps)
    o_loss = np.maximum(-rho * adv, -clipped * adv)
    np.testing.assert_allclose(loss_sum, (o_loss * mask).sum(), rtol=1e-5)
    assert float(count) == 7.0
    np.testing.assert_allclose(metrics["clip_fraction"][0], 2.0)
    np.testing.assert_allclose(metrics["ratio"][0], (rho * mask).sum(), rtol=1e-5)
    log_r = np.log(rho)
    np.testing.assert_allclose(metrics["approx_kl"][0], ((rho - 1 - log_r) * mask).sum(),
                               rtol=1e-5)
    assert all(float(c) == 7.0 for _, c in metrics.values())


def test_policy_loss_at_old_policy_is_minus_advantage_and_ignores_garbage():
    _, adv, mask = random_inputs(7)
    old = np.where(mask > 0, -1.0, np.inf)  # garbage beyond the completion
    logp = np.where(mask > 0, -1.0, -np.inf)
    loss_sum, count, metrics = pm.policy_loss(logp, old, adv, mask)
    np.testing.assert_allclose(loss_sum, -(adv * mask).sum(), rtol=1e-5)
    assert float(count) == mask.sum()
    assert float(metrics["clip_fraction"][0]) == 0.0
    np.testing.assert_allclose(metrics["approx_kl"][0], 0.0, atol=1e-7)


def test_value_loss_clipping():
    old = np.array([[0.0, 0.0, 0.0, 0.0, 0.0]])
    values = np.array([[1.0, 1.0, 0.1, -1.0, 5.0]])
    returns = np.array([[2.0, -1.0, 1.0, 0.0, 0.0]])
    mask = np.array([[1.0, 1.0, 1.0, 1.0, 0.0]])
    c = 0.5
    loss_sum, count, metrics = pm.value_loss(values, old, returns, mask, clip_range=c)
    clipped = old + np.clip(values - old, -c, c)
    per = 0.5 * np.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    np.testing.assert_allclose(loss_sum, (per * mask).sum(), rtol=1e-6)
    # Token 0: V moved towards R past the clip, the clipped error (1.5²) binds: no gradient.
    # Tokens 1 and 3: the unclipped error is the larger: gradient V − R. Token 2: inside the clip.
    grad = jax.grad(lambda v: pm.value_loss(v, old, returns, mask, clip_range=c)[0])(
        jnp.asarray(values, jnp.float32))
    np.testing.assert_allclose(grad, [[0.0, 2.0, -0.9, -1.0, 0.0]], rtol=1e-5, atol=1e-7)
    assert float(count) == 4.0 and float(metrics["clip_fraction"][0]) == 1.0
    for off in (None, 0):
        loss_sum, _, metrics = pm.value_loss(values, old, returns, mask, clip_range=off)
        np.testing.assert_allclose(loss_sum, (0.5 * (values - returns) ** 2 * mask).sum(),
                                   rtol=1e-6)
        assert float(metrics["clip_fraction"][0]) == 0.0
    with pytest.raises(ValueError, match="clip_range must be >= 0"):
        pm.value_loss(values, old, returns, mask, clip_range=-0.1)
    with pytest.raises(ValueError, match="returns_BxN shape"):
        pm.value_loss(values, old, returns[:, :3], mask)


def test_check_grads_on_losses():
    logp, adv, mask = random_inputs(8)
    old = logp + np.random.default_rng(9).normal(scale=0.1, size=logp.shape)
    with jax.enable_x64(True):
        f64 = lambda x: jnp.asarray(x, jnp.float64)
        check_grads(lambda lp: pm.policy_loss(lp, f64(old), f64(adv), f64(mask))[0],
                    [f64(logp)], order=1, modes=["rev"], eps=1e-4)
        check_grads(lambda v: pm.value_loss(v, f64(old), f64(adv), f64(mask), clip_range=0.5)[0],
                    [f64(logp)], order=1, modes=["rev"], eps=1e-4)
        check_grads(lambda r, v: pm.gae(r, v, f64(mask), gamma=0.9, lam=0.7)[0],
                    [f64(adv), f64(logp)], order=1, modes=["rev"])
        check_grads(lambda x: pm.whiten(x, f64(mask)), [f64(adv)], order=1, modes=["rev"])


# ----------------------------------------------------------------------------- KL coefficient


def test_adaptive_kl_moves_towards_target_and_is_clipped():
    state = pm.adaptive_kl_init(0.2)
    assert state.coef.dtype == jnp.float32
    update = jax.jit(lambda s, kl, n: pm.adaptive_kl_update(s, kl, n, target=6.0, horizon=100))
    # KL above target: up by (KL/target − 1)·n/horizon.
    np.testing.assert_allclose(update(state, 6.6, 10).coef, 0.2 * (1 + 0.1 * 0.1), rtol=1e-6)
    # Below: down.
    np.testing.assert_allclose(update(state, 5.4, 10).coef, 0.2 * (1 - 0.1 * 0.1), rtol=1e-6)
    # Far off: clipped at ±20% per horizon of steps.
    np.testing.assert_allclose(update(state, 600.0, 100).coef, 0.2 * 1.2, rtol=1e-6)
    np.testing.assert_allclose(update(state, 0.0, 100).coef, 0.2 * 0.8, rtol=1e-6)
    np.testing.assert_allclose(update(state, 6.0, 100).coef, 0.2, rtol=1e-6)
    # Fixed coefficient: target None leaves it unchanged.
    assert pm.adaptive_kl_update(state, 100.0, 64, target=None) is state
    # A pytree that survives jit and tree maps (it lives in the train state).
    leaves = jax.tree_util.tree_leaves(update(state, 7.0, 5))
    assert len(leaves) == 1 and leaves[0].shape == ()
    with pytest.raises(ValueError, match="target must be > 0"):
        pm.adaptive_kl_update(state, 1.0, 1, target=0.0)


def test_library_defaults_are_complete_and_valid():
    keys = set(pm.LIBRARY_DEFAULTS["align"])
    for name, settings in pm.LIBRARY_DEFAULTS.items():
        assert set(settings) == keys, name
        assert settings["score_position"] in pm.SCORE_POSITIONS
        assert settings["kl_kind"] in pm.KL_KINDS
    align = pm.LIBRARY_DEFAULTS["align"]
    assert (align["gamma"], align["lam"], align["clip_eps"]) == (1.0, 0.95, 0.2)
    assert pm.LIBRARY_DEFAULTS["trl"]["score_position"] == "after_eos"
    assert pm.LIBRARY_DEFAULTS["openrlhf"]["lam"] == 1.0
