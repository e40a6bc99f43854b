"""The PPO binding: prepare against a float64 NumPy oracle, loss gradients, KL control."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align import config as config_lib
from align.objectives import ppo

M, L = 3, 7
# Two prompt columns, then completions of 5, 3 and 4 tokens (the rest is padding).
LOSS_MASK = np.array([[0, 0, 1, 1, 1, 1, 1],
                      [0, 0, 1, 1, 1, 0, 0],
                      [0, 0, 1, 1, 1, 1, 0]], np.float32)


class FixedPolicy:
    """A policy with a value function whose outputs are the arrays it holds."""

    def __init__(self, logp_MxL, values_MxL):
        self.logp_MxL, self.values_MxL = logp_MxL, values_MxL

    def logprobs_and_values(self, tokens_MxL, input_mask_MxL, *, chunk_size=0):
        del tokens_MxL, input_mask_MxL, chunk_size
        return self.logp_MxL, self.values_MxL


def _rollout(rng):
    input_mask = np.array([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0],
                           [1, 1, 1, 1, 1, 1, 0]], np.int32)
    return {"tokens": rng.integers(0, 9, (M, L)).astype(np.int32), "input_mask": input_mask,
            "loss_mask": LOSS_MASK.astype(np.int32),
            "score": np.array([1.0, -0.5, 0.25], np.float32),
            "finished": np.array([1.0, 0.0, 1.0], np.float32)}


def _oracle(logp, ref, values, score, mask, *, kl_coef, gamma, lam, penalty=0.0):
    """Stiennon et al.'s token rewards, GAE and whitening, in float64 loops."""
    logp, ref, values, mask = (np.asarray(x, np.float64) for x in (logp, ref, values, mask))
    score = np.asarray(score, np.float64)
    adv = np.zeros_like(logp)
    for b in range(logp.shape[0]):
        cols = np.flatnonzero(mask[b])
        rewards = -kl_coef * (logp[b, cols] - ref[b, cols])
        rewards[-1] += score[b] - penalty
        next_value, running = 0.0, 0.0
        for i in reversed(range(len(cols))):
            delta = rewards[i] + gamma * next_value - values[b, cols[i]]
            running = delta + gamma * lam * running
            adv[b, cols[i]] = running
            next_value = values[b, cols[i]]
    returns = adv + values * mask
    valid = mask > 0
    mean, std = adv[valid].mean(), adv[valid].std()
    whitened = np.where(valid, (adv - mean) / np.sqrt(std ** 2 + 1e-8), 0.0)
    return whitened, np.where(valid, returns, 0.0)


def _objective(**settings):
    return ppo.make_ppo(config_lib.objective_config("ppo", **settings))


@pytest.mark.parametrize("penalty", [0.0, 0.7])
def test_prepare_matches_the_float64_oracle(penalty):
    rng = np.random.default_rng(0)
    batch = _rollout(rng)
    logp = rng.normal(-1.5, 0.5, (M, L)).astype(np.float32)
    ref = (logp + rng.normal(0, 0.3, (M, L))).astype(np.float32)
    values = rng.normal(0, 0.5, (M, L)).astype(np.float32)
    obj = _objective(kl_coef=0.3, lam=0.9, missing_eos_penalty=penalty)
    policy = FixedPolicy(jnp.asarray(logp), jnp.asarray(values))
    out, stats = obj.prepare(policy, dict(batch, ref_logp=ref), obj.init(), rng=jax.random.key(0))
    # Row 1 is unfinished: it alone pays the missing-eos penalty.
    score = batch["score"] - penalty * (1 - batch["finished"])
    adv, returns = _oracle(logp, ref, values, score, LOSS_MASK, kl_coef=0.3, gamma=1.0, lam=0.9)
    np.testing.assert_allclose(out["advantages"], adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["returns"], returns, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["old_logp"], logp)
    kl = ((logp - ref) * LOSS_MASK).sum(-1)
    # Statistics are rollout means, reported and handed to update_state.
    np.testing.assert_allclose(stats["kl"], kl.mean(), rtol=1e-5)
    np.testing.assert_allclose(stats["kl_penalty"], -0.3 * kl.mean(), rtol=1e-5)
    np.testing.assert_allclose(stats["score"], score.mean(), rtol=1e-6)
    np.testing.assert_allclose(stats["kl_coef"], 0.3)
    # Preparing is a function of the policy, the rollout and the state: the same again.
    again, _ = obj.prepare(policy, out, obj.init(), rng=jax.random.key(1))
    np.testing.assert_array_equal(again["advantages"], out["advantages"])


def _prepared(rng, *, logp, values):
    adv = rng.normal(0, 1, (M, L)).astype(np.float32) * LOSS_MASK
    returns = rng.normal(0, 1, (M, L)).astype(np.float32) * LOSS_MASK
    return dict(_rollout(rng), old_logp=logp, old_values=values, advantages=adv,
                returns=returns, value_mask=LOSS_MASK)


def test_loss_gradient_at_the_sampling_policy():
    # At ρ = 1 and V = V_old nothing is clipped: ∂/∂ℓ_t = −A_t/n, ∂/∂V_t = c·(V_t − R_t)/n,
    # with n the number of completion tokens.
    rng = np.random.default_rng(1)
    logp = rng.normal(-1.0, 0.3, (M, L)).astype(np.float32)
    values = rng.normal(0, 0.5, (M, L)).astype(np.float32)
    batch = _prepared(rng, logp=logp, values=values)
    obj = _objective(vf_coef=0.25)

    def loss(lp, v):
        out = obj.loss(FixedPolicy(lp, v), batch, obj.init(), rng=jax.random.key(0))
        return out.loss_sum / out.weight

    g_logp, g_values = jax.grad(loss, argnums=(0, 1))(jnp.asarray(logp), jnp.asarray(values))
    n = LOSS_MASK.sum()
    np.testing.assert_allclose(g_logp, -batch["advantages"] * LOSS_MASK / n, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(g_values, 0.25 * (values - batch["returns"]) * LOSS_MASK / n,
                               rtol=1e-5, atol=1e-7)


def test_clipped_tokens_get_no_policy_gradient():
    rng = np.random.default_rng(2)
    old = rng.normal(-1.0, 0.3, (M, L)).astype(np.float32)
    values = np.zeros((M, L), np.float32)
    batch = _prepared(rng, logp=old, values=values)
    batch["advantages"] = np.abs(batch["advantages"]) + LOSS_MASK  # all positive
    new = old + 0.5  # ρ = e^0.5 > 1.2 on every token: the clipped term binds
    obj = _objective(clip_eps=0.2)

    def loss(lp):
        out = obj.loss(FixedPolicy(lp, jnp.asarray(values)), batch, obj.init(),
                       rng=jax.random.key(0))
        return out.loss_sum / out.weight, out.metrics

    g, metrics = jax.grad(loss, has_aux=True)(jnp.asarray(new))
    np.testing.assert_array_equal(np.asarray(g), 0.0)
    num, den = metrics["clip_fraction"]
    assert float(num / den) == pytest.approx(1.0)


def test_adaptive_kl_coefficient_moves_once_per_rollout():
    obj = _objective(kl_coef=0.2, kl_target=6.0, kl_horizon=100)
    state = obj.init()
    # KL 12 nats is twice the target: error clipped to 0.2, times 32 rows / horizon 100.
    new = obj.update_state(state, {"kl": jnp.float32(12.0), "rows": jnp.float32(32.0)})
    assert float(new["kl_coef"]) == pytest.approx(0.2 * (1 + 0.2 * 32 / 100), rel=1e-6)
    fixed = _objective(kl_coef=0.2, kl_target=0.0)
    assert fixed.update_state(state, {"kl": 12.0, "rows": 32.0}) is state


def test_bad_settings_and_rollouts_are_errors():
    with pytest.raises(ValueError, match="vf_coef"):
        _objective(vf_coef=-1.0)
    with pytest.raises(config_lib.ConfigError, match="critic"):
        config_lib.objective_config("ppo", critic="twin")
    obj = _objective()
    with pytest.raises(ValueError, match="missing \\['score'\\]"):
        obj.reference_fields(None, {"tokens": np.zeros((2, 3), np.int32),
                                     "input_mask": np.ones((2, 3), np.int32),
                                     "loss_mask": np.ones((2, 3), np.int32)})
