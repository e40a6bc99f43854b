"""PPO for RLHF, pure maths: KL penalty, token rewards, GAE, whitening, clipped losses, KL control.

Dimension letters: B sequences, N completion tokens.

PPO for RLHF (Stiennon et al., arXiv 2009.01325; Ouyang et al., arXiv 2203.02155) on top of PPO
(Schulman et al., arXiv 1707.06347) and GAE (Schulman et al., arXiv 1506.02438); the adaptive KL
controller is Ziegler et al., arXiv 1909.08593. Masks are [B, N] floats that are 1 on valid tokens;
every function is fp32 (float64 inputs stay float64, so oracles can run in x64). Losses return
(sum, count) pairs so the train step normalises once by the global count of valid tokens.

Where libraries differ, the choice is an option; `LIBRARY_DEFAULTS` holds each library's settings:

| setting             | align (the papers)   | TRL PPOTrainer       | OpenRLHF             |
|---------------------|----------------------|----------------------|----------------------|
| γ, λ                | 1, 0.95              | 1, 0.95              | 1, 1 (0.95 before)   |
| policy clip ε       | 0.2                  | 0.2                  | 0.2                  |
| value clip          | 0.2                  | 0.2                  | 0.5 (0.2 before)     |
| vf_coef             | 0.1                  | 0.1                  | separate critic      |
| score position      | last valid token     | one after EOS        | last valid token     |
| advantage whitening | valid tokens, shift  | valid tokens, shift, | valid tokens, shift  |
|                     |                      | n−1 variance         |                      |
| reward whitening    | no                   | no (option)          | no                   |
| KL estimator        | k1                   | k1 (k3 option)       | k1 (k2, k3 options)  |
| KL coefficient      | adaptive 0.2 → 6     | fixed 0.05           | fixed 0.01           |

verl matches OpenRLHF's current settings (λ 1, value clip 0.5, score at the last valid token),
with a separate critic and a fixed KL coefficient of 0.001 when the KL is put in the reward.

TRL's score placement ("after_eos"): it adds the score at index `sequence_length + 1`, one column
after the last non-pad token, or at the last column when that index falls off the buffer; the KL
reward there is 0 (both log-probs are masked to the same constant) and its values, advantages and
value loss extend one column further than the policy loss (its `padding_mask_p1`). Here a
fixed-width buffer holds it the same way, and `value_mask(mask, score_position="after_eos")` gives
that one-column-longer mask for `gae` and `value_loss` (without it the score would be masked away).
It coincides with "last" in three cases: a completion that fills the buffer (the index is clamped
back to the last column); a tokenizer whose pad id equals its eos id, because TRL then counts the
eos as padding, so "one after" is the eos column, which our masks include as the last valid token
(TRL then also leaves the eos out of its policy loss, we do not); and, for any completion,
γ = λ = 1, which gives identical advantages on every completion token (the extra value cancels).
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

KL_KINDS = ("k1", "k2", "k3")
SCORE_POSITIONS = ("last", "after_eos")

LIBRARY_DEFAULTS = {
    # The papers fix no value-loss weight (Stiennon et al. train a separate value network);
    # with a value head on the policy trunk we take TRL's 0.1.
    "align": dict(gamma=1.0, lam=0.95, clip_eps=0.2, value_clip=0.2, vf_coef=0.1,
                  score_position="last", whiten_advantages=True, whiten_shift_mean=True,
                  whiten_unbiased=False, whiten_rewards=False, kl_kind="k1",
                  kl_coef=0.2, kl_target=6.0, kl_horizon=10000),
    "trl": dict(gamma=1.0, lam=0.95, clip_eps=0.2, value_clip=0.2, vf_coef=0.1,
                score_position="after_eos", whiten_advantages=True, whiten_shift_mean=True,
                whiten_unbiased=True, whiten_rewards=False, kl_kind="k1",
                kl_coef=0.05, kl_target=None, kl_horizon=10000),
    # OpenRLHF trains the critic as its own model, so no vf_coef is needed (None).
    "openrlhf": dict(gamma=1.0, lam=1.0, clip_eps=0.2, value_clip=0.5, vf_coef=None,
                     score_position="last", whiten_advantages=True, whiten_shift_mean=True,
                     whiten_unbiased=False, whiten_rewards=False, kl_kind="k1",
                     kl_coef=0.01, kl_target=None, kl_horizon=10000),
}


def _float(x):
    """At least fp32 (float64 stays float64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_shapes(fn: str, **arrays) -> None:
    shapes = {name: jnp.shape(a) for name, a in arrays.items()}
    first_name, first = next(iter(shapes.items()))
    if len(first) != 2:
        raise ValueError(f"{fn}: {first_name} must be [B, N], got shape {first}")
    for name, shape in shapes.items():
        if shape != first:
            raise ValueError(f"{fn}: {name} shape {shape} != {first_name} shape {first}")


def _check_choice(fn: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{fn}: {name} must be one of {choices}, got {value!r}")


def _check_nonneg(fn: str, name: str, value) -> None:
    """Rejects a concrete negative setting; traced values pass through."""
    if isinstance(value, numbers.Real) and not value >= 0:
        raise ValueError(f"{fn}: {name} must be >= 0, got {value}")


def _valid(mask_BxN):
    return _float(mask_BxN) > 0


# ----------------------------------------------------------------------------- rewards


def kl_penalty(logp_BxN, ref_logp_BxN, *, kind: str = "k1"):
    """Per-token KL(π‖π_ref) estimate from a sample of π, unmasked (Schulman's k1/k2/k3)."""
    _check_choice("kl_penalty", "kind", kind, KL_KINDS)
    _check_shapes("kl_penalty", logp_BxN=logp_BxN, ref_logp_BxN=ref_logp_BxN)
    log_ratio_BxN = _float(logp_BxN) - _float(ref_logp_BxN)
    if kind == "k1":
        return log_ratio_BxN
    if kind == "k2":
        return 0.5 * jnp.square(log_ratio_BxN)
    # k3 = e^x − x − 1 with x = ref − ℓ: expm1 keeps it accurate (and ≥ 0) when x is tiny.
    x_BxN = -log_ratio_BxN
    return jnp.expm1(x_BxN) - x_BxN


def _last_index_B(mask_BxN):
    """Column of each row's last valid token; −1 for a row with none."""
    n = mask_BxN.shape[1]
    cols_BxN = jnp.broadcast_to(jnp.arange(n), mask_BxN.shape)
    return jnp.max(jnp.where(_valid(mask_BxN), cols_BxN, -1), axis=1)


def _score_index_B(mask_BxN, score_position: str):
    last_B = _last_index_B(mask_BxN)
    if score_position == "last":
        return last_B
    # TRL clamps an index past the buffer back to the last column; an empty row gets column 0.
    return jnp.minimum(last_B + 1, mask_BxN.shape[1] - 1)


def token_rewards(score_B, kl_BxN, mask_BxN, *, kl_coef, score_position: str = "last"):
    """Per-token reward −kl_coef·kl on valid tokens plus the score at one column (arXiv 2009.01325).

    "last" puts the score on the last valid token (Stiennon et al., OpenRLHF, verl), and drops it
    for a row with no valid token; "after_eos" puts it one column later, as TRL does (see the module
    docstring), and then `gae` and `value_loss` need `value_mask(mask, score_position="after_eos")`.
    Returns rewards_BxN, 0 on masked columns other than the score's.
    """
    _check_choice("token_rewards", "score_position", score_position, SCORE_POSITIONS)
    _check_shapes("token_rewards", kl_BxN=kl_BxN, mask_BxN=mask_BxN)
    score_B = _float(score_B)
    if score_B.shape != (kl_BxN.shape[0],):
        raise ValueError(f"token_rewards: score_B shape {score_B.shape} != ({kl_BxN.shape[0]},)")
    # where, not a product: a masked column may hold inf/nan log-probs, and inf·0 is nan.
    rewards_BxN = jnp.where(_valid(mask_BxN), -_float(kl_coef) * _float(kl_BxN), 0.0)
    index_B = _score_index_B(mask_BxN, score_position)
    at_score_BxN = jnp.arange(kl_BxN.shape[1])[None, :] == index_B[:, None]
    return rewards_BxN + jnp.where(at_score_BxN, score_B[:, None], 0.0)


def value_mask(mask_BxN, *, score_position: str = "last"):
    """The mask over which values, GAE and the value loss live: the completion mask, or for
    "after_eos" the completion mask plus the column after each row's last valid token."""
    _check_choice("value_mask", "score_position", score_position, SCORE_POSITIONS)
    mask_BxN = _float(mask_BxN)
    if score_position == "last":
        return mask_BxN
    index_B = _score_index_B(mask_BxN, score_position)
    at_score_BxN = jnp.arange(mask_BxN.shape[1])[None, :] == index_B[:, None]
    return jnp.where(at_score_BxN, jnp.ones_like(mask_BxN), mask_BxN)


# ----------------------------------------------------------------------------- advantages


def gae(rewards_BxN, values_BxN, mask_BxN, *, gamma=1.0, lam=0.95):
    """GAE advantages and returns, per token (Schulman et al., arXiv 1506.02438).

    δ_t = r_t + γV_{t+1} − V_t, A_t = δ_t + γλA_{t+1}; the value after the last valid token is 0
    and a masked column ends the episode (masks are one run of valid tokens per row). Returns
    (advantages_BxN, returns_BxN = advantages + values), both 0 on masked columns.
    """
    _check_shapes("gae", rewards_BxN=rewards_BxN, values_BxN=values_BxN, mask_BxN=mask_BxN)
    _check_nonneg("gae", "gamma", gamma)
    _check_nonneg("gae", "lam", lam)
    valid_BxN = _valid(mask_BxN)
    dtype = jnp.promote_types(_float(rewards_BxN).dtype, _float(values_BxN).dtype)
    rewards_BxN = jnp.where(valid_BxN, _float(rewards_BxN), 0.0).astype(dtype)
    values_BxN = jnp.where(valid_BxN, _float(values_BxN), 0.0).astype(dtype)

    def step(carry, xs):
        next_value_B, next_adv_B = carry
        reward_B, value_B, valid_B = xs
        delta_B = reward_B + gamma * next_value_B - value_B
        adv_B = jnp.where(valid_B, delta_B + gamma * lam * next_adv_B, 0.0).astype(dtype)
        return (value_B, adv_B), adv_B

    zeros_B = jnp.zeros(rewards_BxN.shape[:1], dtype)
    _, adv_NxB = jax.lax.scan(step, (zeros_B, zeros_B),
                              (rewards_BxN.T, values_BxN.T, valid_BxN.T), reverse=True)
    advantages_BxN = adv_NxB.T
    return advantages_BxN, jnp.where(valid_BxN, advantages_BxN + values_BxN, 0.0)


def whiten(x_BxN, mask_BxN, *, shift_mean: bool = True, eps: float = 1e-8,
           unbiased: bool = False):
    """(x − mean)/std over the valid tokens of the whole batch; masked columns become 0.

    shift_mean=False adds the mean back (only rescales), as TRL does for rewards. unbiased=True
    uses the n−1 variance, as TRL's masked_whiten does; the default gives std exactly 1.
    """
    _check_shapes("whiten", x_BxN=x_BxN, mask_BxN=mask_BxN)
    valid_BxN = _valid(mask_BxN)
    x_BxN = jnp.where(valid_BxN, _float(x_BxN), 0.0)
    count = jnp.sum(valid_BxN).astype(x_BxN.dtype)
    # Empty batches divide by 1 instead of 0 so the output stays finite (all zeros).
    mean = jnp.sum(x_BxN) / jnp.maximum(count, 1.0)
    sq_dev = jnp.sum(jnp.where(valid_BxN, jnp.square(x_BxN - mean), 0.0))
    var = sq_dev / jnp.maximum(count - 1.0 if unbiased else count, 1.0)
    out_BxN = (x_BxN - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out_BxN = out_BxN + mean
    return jnp.where(valid_BxN, out_BxN, 0.0)


# ----------------------------------------------------------------------------- losses


def policy_loss(logp_BxN, old_logp_BxN, advantages_BxN, mask_BxN, *, clip_eps=0.2):
    """Clipped surrogate −min(ρA, clip(ρ, 1−ε, 1+ε)A), ρ = e^{ℓ−ℓ_old} (PPO, arXiv 1707.06347).

    Returns (loss_sum, count, metrics): the mask-weighted sum over tokens, the mask sum, and
    (sum, count) metrics: clip_fraction (tokens where the clipped term binds), approx_kl (k3 of
    KL(π_old‖π)), ratio (mean ρ). Old log-probs and advantages are rollout constants (no gradient).
    """
    _check_shapes("policy_loss", logp_BxN=logp_BxN, old_logp_BxN=old_logp_BxN,
                  advantages_BxN=advantages_BxN, mask_BxN=mask_BxN)
    _check_nonneg("policy_loss", "clip_eps", clip_eps)
    mask_BxN = _float(mask_BxN)
    valid_BxN = mask_BxN > 0
    old_logp_BxN = jax.lax.stop_gradient(_float(old_logp_BxN))
    advantages_BxN = jax.lax.stop_gradient(_float(advantages_BxN))
    # Zero log-ratio on masked columns so their (possibly garbage) log-probs cannot overflow exp.
    log_ratio_BxN = jnp.where(valid_BxN, _float(logp_BxN) - old_logp_BxN, 0.0)
    ratio_BxN = jnp.exp(log_ratio_BxN)
    unclipped_BxN = -ratio_BxN * advantages_BxN
    clipped_BxN = -jnp.clip(ratio_BxN, 1.0 - clip_eps, 1.0 + clip_eps) * advantages_BxN
    loss_BxN = jnp.maximum(unclipped_BxN, clipped_BxN)
    count = jnp.sum(mask_BxN)

    def masked_sum(x_BxN):
        return jnp.sum(jnp.where(valid_BxN, mask_BxN * x_BxN, 0.0))

    sg_ratio_BxN = jax.lax.stop_gradient(ratio_BxN)
    sg_log_ratio_BxN = jax.lax.stop_gradient(log_ratio_BxN)
    metrics = {
        "clip_fraction": (masked_sum(jax.lax.stop_gradient(clipped_BxN > unclipped_BxN)
                                     .astype(mask_BxN.dtype)), count),
        "approx_kl": (masked_sum(jnp.expm1(sg_log_ratio_BxN) - sg_log_ratio_BxN), count),
        "ratio": (masked_sum(sg_ratio_BxN), count),
    }
    return masked_sum(loss_BxN), count, metrics


def value_loss(values_BxN, old_values_BxN, returns_BxN, mask_BxN, *, clip_range=0.2):
    """½·max((V − R)², (clip(V, V_old ± c) − R)²) per token; clip_range None or 0 is unclipped.

    Returns (loss_sum, count, metrics) like `policy_loss`; metrics: clip_fraction, the tokens
    where the clipped term binds. Old values and returns are rollout constants (no gradient).
    """
    _check_shapes("value_loss", values_BxN=values_BxN, old_values_BxN=old_values_BxN,
                  returns_BxN=returns_BxN, mask_BxN=mask_BxN)
    _check_nonneg("value_loss", "clip_range", clip_range if clip_range is not None else 0.0)
    mask_BxN = _float(mask_BxN)
    valid_BxN = mask_BxN > 0
    values_BxN = _float(values_BxN)
    old_values_BxN = jax.lax.stop_gradient(_float(old_values_BxN))
    returns_BxN = jax.lax.stop_gradient(_float(returns_BxN))
    unclipped_BxN = jnp.square(values_BxN - returns_BxN)
    count = jnp.sum(mask_BxN)

    def masked_sum(x_BxN):
        return jnp.sum(jnp.where(valid_BxN, mask_BxN * x_BxN, 0.0))

    if clip_range is None or (isinstance(clip_range, numbers.Real) and clip_range == 0):
        return (masked_sum(0.5 * unclipped_BxN), count,
                {"clip_fraction": (jnp.zeros((), mask_BxN.dtype), count)})
    clipped_values_BxN = old_values_BxN + jnp.clip(values_BxN - old_values_BxN,
                                                   -clip_range, clip_range)
    clipped_BxN = jnp.square(clipped_values_BxN - returns_BxN)
    loss_BxN = 0.5 * jnp.maximum(unclipped_BxN, clipped_BxN)
    binds_BxN = jax.lax.stop_gradient(clipped_BxN > unclipped_BxN).astype(mask_BxN.dtype)
    return masked_sum(loss_BxN), count, {"clip_fraction": (masked_sum(binds_BxN), count)}


# ----------------------------------------------------------------------------- KL coefficient


class AdaptiveKL(NamedTuple):
    """The KL coefficient as train state (a jittable pytree, checkpointed with it)."""

    coef: jax.Array


def adaptive_kl_init(initial=0.2) -> AdaptiveKL:
    """Initial KL coefficient (Ziegler et al., arXiv 1909.08593: 0.2)."""
    _check_nonneg("adaptive_kl_init", "initial", initial)
    return AdaptiveKL(coef=jnp.asarray(initial, jnp.float32))


def adaptive_kl_update(state: AdaptiveKL, kl, n_steps, *, target=6.0,
                       horizon=10000) -> AdaptiveKL:
    """coef·(1 + clip(KL/target − 1, ±0.2)·n_steps/horizon) (Ziegler et al., arXiv 1909.08593).

    kl is the batch mean of each sequence's summed KL (nats) and n_steps the number of sequences
    in the batch, as in Ziegler et al. and TRL. target=None keeps the coefficient fixed.
    """
    if target is None:
        return state
    if isinstance(target, numbers.Real) and not target > 0:
        raise ValueError(f"adaptive_kl_update: target must be > 0 (or None for a fixed "
                         f"coefficient), got {target}")
    if isinstance(horizon, numbers.Real) and not horizon > 0:
        raise ValueError(f"adaptive_kl_update: horizon must be > 0, got {horizon}")
    error = jnp.clip(jnp.asarray(kl, jnp.float32) / target - 1.0, -0.2, 0.2)
    multiplier = 1.0 + error * jnp.asarray(n_steps, jnp.float32) / horizon
    return AdaptiveKL(coef=(state.coef * multiplier).astype(state.coef.dtype))
