"""Pure maths of the online objectives: online DPO/IPO, Nash-MD(-PG), RLOO/GRPO, KL estimates.

Dimension letters: B sequences, S samples per prompt, N completion tokens, A actions (tabular).

Notation (docs/formulas.md): ℓ_n = log π_θ(y_n | x, y_<n) and ℓ^ref_n the reference's token
log-prob; r_n = ℓ_n − ℓ^ref_n the per-token log-ratio; P = P(y ≻ y') a preference in [0, 1]; μ
the reference policy; τ the KL strength; β the weight of μ in the geometric mixture. Tabular
preference matrices hold P[i, j] = P(i ≻ j) with P + Pᵀ = 1. Functions return per-example
(or per-token) values; reductions belong to the caller.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


# ----------------------------------------------------------------------------- input checks

def _float(x):
    """At least fp32 (float64 stays float64, so oracles can run in x64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _concrete(x):
    """x as a NumPy array, or None when it is traced inside jit/grad (checks then skip)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_shapes(fn: str, **arrays) -> None:
    shapes = {k: tuple(jnp.shape(v)) for k, v in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"{fn}: inputs must share one shape, got {shapes}")


def _check_probability(fn: str, name: str, p) -> None:
    p = _concrete(p)
    if p is None:
        return
    bad = np.argwhere(~((p >= 0.0) & (p <= 1.0)))
    if bad.size:
        idx = tuple(int(i) for i in bad[0])
        raise ValueError(f"{fn}: {name} must lie in [0, 1]; {name}{list(idx)} = {p[idx]!r} "
                         f"({len(bad)} bad entries)")


def _check_preference_matrix(fn: str, pref_AxA, a: int | None = None) -> None:
    shape = tuple(jnp.shape(pref_AxA))
    if len(shape) != 2 or shape[0] != shape[1] or (a is not None and shape[0] != a):
        want = f"({a}, {a})" if a is not None else "(A, A)"
        raise ValueError(f"{fn}: pref_AxA must have shape {want}, got {shape}")
    _check_probability(fn, "pref_AxA", pref_AxA)
    p = _concrete(pref_AxA)
    if p is None:
        return
    err = np.abs(p + p.T - 1.0)
    if err.max() > 1e-5:
        i, j = (int(k) for k in np.unravel_index(np.argmax(err), err.shape))
        raise ValueError(f"{fn}: pref_AxA must satisfy P + Pᵀ = 1 (P[i, j] = P(i ≻ j)); "
                         f"P[{i}, {j}] + P[{j}, {i}] = {p[i, j] + p[j, i]!r}")


# ----------------------------------------------------------------------------- sequence losses

def online_pair_loss(logratio_a_B, logratio_b_B, pref_B, *, loss_fn: LossFn, soft: bool):
    """Pairwise loss on two sampled responses with P(a ≻ b) = pref (online IPO: arXiv 2403.08635).

    soft=True: p·L(a, b) + (1 − p)·L(b, a), the online IPO / IPO-MD loss. soft=False: the winner
    by the preference (a when p ≥ ½, so ties go to a) takes L(winner, loser), as online DPO
    with a hard judge. `loss_fn(logratio_chosen_B, logratio_rejected_B)` is a pairwise loss with
    its settings bound, e.g. functools.partial(pairwise.ipo_loss, tau=τ).
    """
    _check_shapes("online_pair_loss", logratio_a_B=logratio_a_B, logratio_b_B=logratio_b_B,
                  pref_B=pref_B)
    _check_probability("online_pair_loss", "pref_B", pref_B)
    r_a_B, r_b_B, p_B = _float(logratio_a_B), _float(logratio_b_B), _float(pref_B)
    a_first_B = loss_fn(r_a_B, r_b_B)
    b_first_B = loss_fn(r_b_B, r_a_B)
    if soft:
        return p_B * a_first_B + (1.0 - p_B) * b_first_B
    return jnp.where(p_B >= 0.5, a_first_B, b_first_B)


def reward_to_go(x_BxN, mask_BxN):
    """y_n = Σ_{m ≥ n} x_m·mask_m at real positions, 0 at masked ones."""
    _check_shapes("reward_to_go", x_BxN=x_BxN, mask_BxN=mask_BxN)
    real_BxN = jnp.asarray(mask_BxN) > 0
    x_BxN = jnp.where(real_BxN, _float(x_BxN), 0.0)
    # A reversed cumulative sum, not total − prefix: no cancellation between large sums.
    y_BxN = jax.lax.cumsum(x_BxN, axis=x_BxN.ndim - 1, reverse=True)
    return jnp.where(real_BxN, y_BxN, 0.0)


def _token_inputs(fn: str, logp_BxN, ref_logp_BxN, mask_BxN, pref_B):
    _check_shapes(fn, logp_BxN=logp_BxN, ref_logp_BxN=ref_logp_BxN, mask_BxN=mask_BxN)
    if jnp.ndim(logp_BxN) != 2 or tuple(jnp.shape(pref_B)) != tuple(jnp.shape(logp_BxN))[:1]:
        raise ValueError(f"{fn}: logp_BxN must be [B, N] and pref_B [B], got "
                         f"{tuple(jnp.shape(logp_BxN))} and {tuple(jnp.shape(pref_B))}")
    _check_probability(fn, "pref_B", pref_B)
    real_BxN = jnp.asarray(mask_BxN) > 0
    # Padding may hold -inf log-probs; zeroing them keeps NaNs out of values and gradients.
    logp_BxN = jnp.where(real_BxN, _float(logp_BxN), 0.0)
    ref_logp_BxN = jnp.where(real_BxN, _float(ref_logp_BxN), 0.0)
    return logp_BxN, ref_logp_BxN, real_BxN.astype(logp_BxN.dtype), _float(pref_B)


def _advantages(logp_BxN, ref_logp_BxN, m_BxN, p_B, tau):
    kl_to_go_BxN = reward_to_go(logp_BxN - ref_logp_BxN, m_BxN)
    return ((p_B - 0.5)[:, None] - tau * kl_to_go_BxN) * m_BxN


def nash_md_pg_advantages(logp_BxN, ref_logp_BxN, mask_BxN, pref_B, *, tau):
    """A_n = (P − ½) − τ Σ_{m ≥ n} (ℓ_m − ℓ^ref_m), 0 at masked positions (arXiv 2312.00886)."""
    return _advantages(*_token_inputs("nash_md_pg_advantages", logp_BxN, ref_logp_BxN, mask_BxN,
                                      pref_B), tau)


def nash_md_pg_loss(logp_BxN, ref_logp_BxN, mask_BxN, pref_B, *, tau):
    """Exact Nash-MD-PG surrogate −Σ_n ℓ_n·sg[A_n] with reward-to-go KL (arXiv 2312.00886).

    y ~ π_θ, y' ~ the β-mixture (sampled outside), pref_B = P(y ≻ y'). The gradient w.r.t. the
    token log-probs is −mask_n·A_n, A_n = (P − ½) − τ Σ_{m ≥ n} (ℓ_m − ℓ^ref_m), so in
    expectation over y it is −∇_θ [E_y P(y ≻ y') − τ KL(π_θ ‖ μ)] over whole sequences: a
    log-ratio at position m < n is fixed by the prefix and E[∇ℓ_n | y_<n] = 0, so only the
    future log-ratios weight token n, and the ½ baseline leaves the expectation unchanged.
    The value itself is a surrogate, not the objective.
    """
    logp_BxN, ref_logp_BxN, m_BxN, p_B = _token_inputs(
        "nash_md_pg_loss", logp_BxN, ref_logp_BxN, mask_BxN, pref_B)
    adv_BxN = jax.lax.stop_gradient(_advantages(logp_BxN, ref_logp_BxN, m_BxN, p_B, tau))
    return -jnp.sum(logp_BxN * adv_BxN * m_BxN, axis=-1)


def nash_md_pg_trl_loss(logp_BxN, ref_logp_BxN, mask_BxN, pref_B, *, kl_coef):
    """TRL NashMDTrainer's surrogate kl_coef Σ_t sg(r_t) ℓ_t − (P − ½) Σ_t ℓ_t (arXiv 2312.00886).

    Differs from `nash_md_pg_loss` only in the KL term: token t is weighted by its own log-ratio
    r_t, not by the reward-to-go Σ_{m ≥ t} r_m, so its expected gradient lacks
    τ E[Σ_t ∇ℓ_t Σ_{m > t} r_m] and is not the gradient of the sequence KL once N > 1 (for
    N = 1 the two coincide). Both use the same ½ baseline on P. Naming: `kl_coef` is the
    paper's τ, which TRL calls `beta`; TRL's `mixture_coef` is our mixture weight β.
    Per-example values here; TRL averages them over the batch.
    """
    logp_BxN, ref_logp_BxN, m_BxN, p_B = _token_inputs(
        "nash_md_pg_trl_loss", logp_BxN, ref_logp_BxN, mask_BxN, pref_B)
    r_BxN = jax.lax.stop_gradient(logp_BxN - ref_logp_BxN)
    kl_B = jnp.sum(r_BxN * logp_BxN * m_BxN, axis=-1)
    score_B = (jax.lax.stop_gradient(p_B) - 0.5) * jnp.sum(logp_BxN * m_BxN, axis=-1)
    return kl_coef * kl_B - score_B


def k3_kl(logp_BxN, ref_logp_BxN):
    """Schulman's k3 per token: e^{ref−ℓ} − (ref−ℓ) − 1 ≥ 0, unbiased for KL(π ‖ μ) under y ~ π."""
    _check_shapes("k3_kl", logp_BxN=logp_BxN, ref_logp_BxN=ref_logp_BxN)
    d_BxN = _float(ref_logp_BxN) - _float(logp_BxN)
    # expm1 avoids the cancellation of e^d − 1 near d = 0; the max removes rounding below 0.
    return jnp.maximum(jnp.expm1(d_BxN) - d_BxN, 0.0)


# ----------------------------------------------------------------------------- advantages

def _check_groups(fn: str, rewards_BxS, min_s: int) -> None:
    shape = tuple(jnp.shape(rewards_BxS))
    if len(shape) != 2 or shape[1] < min_s:
        raise ValueError(f"{fn}: rewards_BxS must be [B, S] with S >= {min_s} samples per "
                         f"prompt, got shape {shape}")


def rloo_advantages(rewards_BxS):
    """r_i − (Σ_j r_j − r_i)/(S − 1): leave-one-out baseline (Ahmadian et al., arXiv 2402.14740)."""
    _check_groups("rloo_advantages", rewards_BxS, 2)
    r_BxS = _float(rewards_BxS)
    s = r_BxS.shape[1]
    # (S·r_i − Σ_j r_j)/(S − 1) is the same baseline and gives exact zeros on constant groups.
    return (s * r_BxS - jnp.sum(r_BxS, axis=1, keepdims=True)) / (s - 1)


def grpo_advantages(rewards_BxS, *, eps=1e-4, ddof: int = 0):
    """(r − mean_g)/(std_g + ε) per group, population std by default (Shao et al., arXiv 2402.03300).

    The paper does not say which std; ddof=0 is the population std of the S samples, ddof=1
    the sample std that TRL's GRPOTrainer (torch.std) uses.
    """
    _check_groups("grpo_advantages", rewards_BxS, 1 + ddof)
    r_BxS = _float(rewards_BxS)
    centred_BxS = r_BxS - jnp.mean(r_BxS, axis=1, keepdims=True)
    std_Bx1 = jnp.sqrt(jnp.sum(centred_BxS ** 2, axis=1, keepdims=True) / (r_BxS.shape[1] - ddof))
    return centred_BxS / (std_Bx1 + eps)


def best_of_n_kl(n) -> float:
    """log n − (n−1)/n: KL(π_BoN ‖ π) of best-of-n sampling (Stiennon et al., arXiv 2009.01325).

    Exact when no response has appreciable probability (continuous rewards, distinct
    outcomes); for a discrete π with atoms of visible mass it is an upper bound
    (Beirami et al., arXiv 2401.01879).
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"best_of_n_kl: n must be an integer >= 1, got {n!r}")
    return math.log(n) - (n - 1) / n


# ----------------------------------------------------------------------------- tabular

def geometric_mixture(logits_or_logp_A, ref_logp_A, beta):
    """log π_mix ∝ (1−β) log π + β log μ over the last axis (Nash-MD, arXiv 2312.00886)."""
    _check_shapes("geometric_mixture", logits_or_logp_A=logits_or_logp_A, ref_logp_A=ref_logp_A)
    x_A, ref_A = _float(logits_or_logp_A), _float(ref_logp_A)
    # Unnormalised logits only shift (1−β)·x by a constant, which the log-softmax removes. The
    # where-guards keep 0·(−inf) (β ∈ {0, 1} with masked actions) from turning into NaN.
    mixed_A = (jnp.where(beta == 1, 0.0, (1.0 - beta) * x_A)
               + jnp.where(beta == 0, 0.0, beta * ref_A))
    return jax.nn.log_softmax(mixed_A, axis=-1)


def _pref_against(pref_AxA, logp_A):
    """P(y ≻ π) = Σ_j P[y, j] π(j) for every action y."""
    return _float(pref_AxA) @ jnp.exp(logp_A)


def nash_md_step(logp_A, ref_logp_A, pref_AxA, *, eta, tau):
    """One Nash-MD iteration (arXiv 2312.00886): log π' ∝ (1−ητ) log π + ητ log μ + η P(·≻π^μ).

    The opponent is π^μ ∝ π^{1−ητ} μ^{ητ}; ητ must lie in [0, 1].
    """
    logp_A, ref_A = _float(logp_A), _float(ref_logp_A)
    _check_shapes("nash_md_step", logp_A=logp_A, ref_logp_A=ref_A)
    _check_preference_matrix("nash_md_step", pref_AxA, logp_A.shape[-1])
    if isinstance(eta, numbers.Real) and isinstance(tau, numbers.Real):
        if not 0.0 <= eta * tau <= 1.0:
            raise ValueError(f"nash_md_step: eta·tau must lie in [0, 1], got eta={eta}, tau={tau}")
    alpha = eta * tau
    opponent_A = geometric_mixture(logp_A, ref_A, alpha)
    return jax.nn.log_softmax(
        (1.0 - alpha) * logp_A + alpha * ref_A + eta * _pref_against(pref_AxA, opponent_A),
        axis=-1)


def _np_log_softmax(z_A):
    z_A = z_A - np.max(z_A)
    return z_A - np.log(np.sum(np.exp(z_A)))


def nash_residual(logp_A, ref_logp_A, pref_AxA, *, tau) -> float:
    """max_y |log π(y) − log BR(π)(y)|, BR(π) ∝ μ·exp(P(·≻π)/τ): 0 exactly at the regularised NE."""
    logp_A = np.asarray(logp_A, np.float64)
    pref_AxA = np.asarray(pref_AxA, np.float64)
    best_A = _np_log_softmax(np.asarray(ref_logp_A, np.float64)
                             + pref_AxA @ np.exp(logp_A) / tau)
    # Actions μ forbids are −inf on both sides; they agree rather than give inf − inf = NaN.
    both_out_A = np.isneginf(logp_A) & np.isneginf(best_A)
    diff_A = np.where(both_out_A, 0.0, logp_A) - np.where(both_out_A, 0.0, best_A)
    return float(np.max(np.abs(diff_A)))


def regularized_nash(pref_AxA, ref_logp_A, *, tau, iters: int = 100_000, tol: float = 1e-12):
    """log π*: the unique NE of P(π≻π') − τKL(π,μ) + τKL(π',μ), by mirror-prox in float64 (NumPy).

    Independent of Nash-MD: extragradient (mirror-prox) on the τ-strongly monotone game, with
    the KL term taken proximally, log π' ∝ (log π + ατ log μ + α P(·≻π_opp)) / (1 + ατ),
    where π_opp is the extrapolated half step. Its fixed point is π ∝ μ·exp(P(·≻π)/τ); it
    stops once `nash_residual` ≤ tol and raises if that takes more than `iters` steps.
    """
    if not (isinstance(tau, numbers.Real) and tau > 0):
        raise ValueError(f"regularized_nash: tau must be a number > 0, got {tau!r}")
    ref_A = np.asarray(ref_logp_A, np.float64)
    if ref_A.ndim != 1:
        raise ValueError(f"regularized_nash: ref_logp_A must be [A], got shape {ref_A.shape}")
    _check_preference_matrix("regularized_nash", pref_AxA, ref_A.shape[0])
    pref_AxA = np.asarray(pref_AxA, np.float64)
    ref_A = _np_log_softmax(ref_A)
    # The game operator is Lipschitz with constant max|P − ½| ≤ ½ (from ℓ1 to ℓ∞) on
    # differences of distributions, so α = 1 is inside mirror-prox's step limit 1/L.
    alpha = 1.0

    def step(logp_A, opponent_A):
        pull_A = alpha * tau * ref_A + alpha * pref_AxA @ np.exp(opponent_A)
        return _np_log_softmax((logp_A + pull_A) / (1.0 + alpha * tau))

    logp_A = ref_A.copy()
    residual = math.inf
    for _ in range(iters):
        residual = nash_residual(logp_A, ref_A, pref_AxA, tau=tau)
        if residual <= tol:
            return logp_A
        half_A = step(logp_A, logp_A)
        logp_A = step(logp_A, half_A)
    raise RuntimeError(f"regularized_nash: no convergence in {iters} steps (tau={tau}); "
                       f"fixed-point residual {residual:.3e} > tol {tol:.1e}")


def tabular_nash_md_pg_grad(logits_A, ref_logp_A, pref_AxA, *, tau, beta):
    """∇_θ [P(π_θ ≻ sg π^β_mix) − τ KL(π_θ, μ)] for softmax logits θ, closed form (arXiv 2312.00886).

    With f(y) = P(y ≻ π_mix) − τ(log π(y) − log μ(y)), the gradient is π ⊙ (f − E_π f): the
    softmax Jacobian applied to f, as E_π[∇ log π] = 0 removes the KL's extra term.
    """
    logits_A, ref_A = _float(logits_A), _float(ref_logp_A)
    _check_shapes("tabular_nash_md_pg_grad", logits_A=logits_A, ref_logp_A=ref_A)
    _check_preference_matrix("tabular_nash_md_pg_grad", pref_AxA, logits_A.shape[-1])
    logp_A = jax.nn.log_softmax(logits_A, axis=-1)
    mix_A = jax.lax.stop_gradient(geometric_mixture(logp_A, ref_A, beta))
    f_A = _pref_against(pref_AxA, mix_A) - tau * (logp_A - jax.nn.log_softmax(ref_A, axis=-1))
    pi_A = jnp.exp(logp_A)
    return pi_A * (f_A - jnp.sum(pi_A * f_A, axis=-1, keepdims=True))
