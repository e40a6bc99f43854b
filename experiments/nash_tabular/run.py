"""Exact tabular checks of Nash-MD (Munos et al., arXiv 2312.00886) and online IPO (Calandriello et al., arXiv 2403.08635).

    python experiments/nash_tabular/run.py --quick            # 1,000 / 2,000 steps, 2 seeds
    python experiments/nash_tabular/run.py                    # full protocol
    python experiments/nash_tabular/run.py --publish          # the same, then results.md, PNGs here
    python experiments/nash_tabular/run.py --steps 2000 --online-steps 5000 --out /tmp/nash

Outputs go to ~/align-runs/experiments/nash_tabular ($ALIGN_RUNS replaces ~/align-runs) or --out.

Policies over A actions, preference matrix P[i, j] = P(i ≻ j) with P + Pᵀ = 1 and diagonal ½.
Every population quantity is exact (sums over actions, no sampling) and computed in float64 with
the library's own maths: `online_math.nash_md_step`, `regularized_nash`, `online_pair_loss`,
`nash_md_pg_loss` and `pairwise.ipo_loss` / `dpo_loss`.
Dimension letters: A actions, T iterations (T+1 iterates with π_0), B enumerated pairs (A²),
N tokens of a completion (1 here), R seeds.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402

from align.objectives import online_math  # noqa: E402
from align.objectives import pairwise  # noqa: E402

NAME = "nash_tabular"
HERE = os.path.dirname(os.path.abspath(__file__))

F64 = jnp.float64

# Claim 1: Nash-MD's last iterate against Theorem 1.
NASH_ACTIONS = (3, 5, 10, 20)
NASH_TAUS = (0.1, 0.5, 1.0)
NASH_STEPS = 10_000
SEEDS = 5
# Claim 2: rock-paper-scissors.
RPS_ACTIONS = ("rock", "paper", "scissors")
RPS_ETA = 0.1
RPS_TAU = 0.1
RPS_STEPS = 10_000
RPS_START = (0.45, 0.35, 0.20)
# Claim 3: gradient descent on the expected online loss.
ONLINE_TAU = 0.5
ONLINE_LR = 0.05
ONLINE_STEPS = 20_000
ONLINE_METHODS = ("ipo", "dpo")
# Claim 4: online IPO's expected gradient against self-play's.
GRAD_ACTIONS = (3, 5, 10)
GRAD_TAUS = (0.1, 1.0)
# Nash-MD / RPS iterations, online gradient steps and seeds per mode; the flags override them.
MODES = {"full": dict(steps=NASH_STEPS, online_steps=ONLINE_STEPS, seeds=SEEDS),
         "quick": dict(steps=1000, online_steps=2000, seeds=2),
         "tiny": dict(steps=50, online_steps=50, seeds=1)}


# ----------------------------------------------------------------------------- preferences

def check_preference(pref_AxA, *, name="preference matrix"):
    """Raises ValueError unless P is square, in [0, 1], P + Pᵀ = 1 and its diagonal is ½."""
    pref_AxA = np.asarray(pref_AxA, np.float64)
    if pref_AxA.ndim != 2 or pref_AxA.shape[0] != pref_AxA.shape[1]:
        raise ValueError(f"{name}: must be square A x A, got shape {pref_AxA.shape}")
    if not np.all((pref_AxA >= 0.0) & (pref_AxA <= 1.0)):
        i, j = np.argwhere((pref_AxA < 0.0) | (pref_AxA > 1.0) | np.isnan(pref_AxA))[0]
        raise ValueError(f"{name}: entry [{i}, {j}] = {pref_AxA[i, j]} is not a probability")
    bad = np.abs(pref_AxA + pref_AxA.T - 1.0) > 1e-12
    if np.any(bad):
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"{name}: P[{i}, {j}] + P[{j}, {i}] = {pref_AxA[i, j] + pref_AxA[j, i]}, "
                         "must be 1 (P(i ≻ j) + P(j ≻ i) = 1; the diagonal must be 0.5)")
    return pref_AxA


def random_preference(n_actions, rng):
    """P with independent uniform P(i ≻ j) above the diagonal, 1 − P(i ≻ j) below, ½ on it."""
    upper_AxA = np.triu(rng.uniform(size=(n_actions, n_actions)), k=1)
    return check_preference(upper_AxA + np.tril(1.0 - upper_AxA.T, k=-1) + 0.5 * np.eye(n_actions))


def random_reference(n_actions, rng):
    """log μ of a reference drawn as softmax of standard normal logits (not uniform on purpose)."""
    logits_A = rng.normal(size=n_actions)
    return logits_A - np.logaddexp.reduce(logits_A)


def rps_preference():
    """Rock-paper-scissors: the winner wins with probability 1, a tie is ½."""
    return np.array([[0.5, 0.0, 1.0],
                     [1.0, 0.5, 0.0],
                     [0.0, 1.0, 0.5]])


def online_problems():
    """Claim 3's games: {name: (P, log μ)} with a uniform reference."""
    cyclic_AxA = np.array([[0.5, 0.9, 0.3],
                           [0.1, 0.5, 0.8],
                           [0.7, 0.2, 0.5]])
    problems = {
        "2 actions, P(a≻b) = 0.8": np.array([[0.5, 0.8], [0.2, 0.5]]),
        "2 actions, P(a≻b) = 1": np.array([[0.5, 1.0], [0.0, 0.5]]),
        "3 actions, cyclic a≻b≻c≻a": cyclic_AxA,
    }
    return {name: (check_preference(p, name=name), np.full(len(p), -np.log(len(p))))
            for name, p in problems.items()}


# ----------------------------------------------------------------------------- population maths

def kl(logp_A, logq_A):
    """KL(p ‖ q) in float64 from log-probabilities (last axis)."""
    logp_A, logq_A = np.asarray(logp_A, np.float64), np.asarray(logq_A, np.float64)
    return np.sum(np.exp(logp_A) * (logp_A - logq_A), axis=-1)


def nash_gap(logp_A, pref_AxA, ref_logp_A, *, tau):
    """Duality gap of π in the regularised game P(π≻π') − τKL(π,μ) + τKL(π',μ); 0 only at π*_τ."""
    # The game is symmetric with value ½, so the gap is twice the best-response gain over ½; the
    # best response to π maximises Σ π'(y) P(y ≻ π) − τ KL(π', μ), which is τ log E_μ e^{P(y≻π)/τ}.
    p_A = np.exp(np.asarray(logp_A, np.float64))
    win_A = np.asarray(pref_AxA, np.float64) @ p_A
    ref_logp_A = np.asarray(ref_logp_A, np.float64)
    best = tau * np.logaddexp.reduce(ref_logp_A + win_A / tau) + tau * kl(logp_A, ref_logp_A)
    return 2.0 * (best - 0.5)


def solve_nash(pref_AxA, ref_logp_A, *, tau):
    """log π*_τ from the library's `regularized_nash` (mirror-prox, independent of Nash-MD)."""
    return np.asarray(online_math.regularized_nash(np.asarray(pref_AxA, np.float64),
                                                   np.asarray(ref_logp_A, np.float64),
                                                   tau=float(tau)), np.float64)


@functools.partial(jax.jit, static_argnames=("steps", "schedule"))
def _nash_md_scan(pref_AxA, ref_logp_A, init_logp_A, tau, eta, *, steps, schedule):
    def step(logp_A, t):
        eta_t = 2.0 / (tau * (t + 2.0)) if schedule else eta
        next_A = online_math.nash_md_step(logp_A, ref_logp_A, pref_AxA, eta=eta_t, tau=tau)
        return next_A, next_A

    _, logp_TxA = jax.lax.scan(step, init_logp_A, jnp.arange(steps, dtype=F64))
    return jnp.concatenate([init_logp_A[None], logp_TxA])


def nash_md_trajectory(pref_AxA, ref_logp_A, *, tau, steps, eta=None, init_logp_A=None):
    """log π_t, t = 0..steps, of tabular Nash-MD: η_t = 2/(τ(t+2)) unless a constant eta is given."""
    if eta is None and tau <= 0:
        raise ValueError(f"nash_md_trajectory: the schedule 2/(τ(t+2)) needs tau > 0, got {tau}; "
                         "pass a constant eta for tau = 0 (multiplicative weights)")
    init_logp_A = ref_logp_A if init_logp_A is None else init_logp_A
    with jax.enable_x64(True):
        logp_TxA = _nash_md_scan(jnp.asarray(pref_AxA, F64), jnp.asarray(ref_logp_A, F64),
                                 jnp.asarray(init_logp_A, F64), jnp.asarray(tau, F64),
                                 jnp.asarray(0.0 if eta is None else eta, F64),
                                 steps=steps, schedule=eta is None)
        return np.asarray(logp_TxA, np.float64)


def theorem1_bound(tau, t):
    """Theorem 1 of arXiv 2312.00886: KL(π*_τ, π_T) ≤ 8/(τ²(T+1)) for η_t = 2/(τ(t+2))."""
    return 8.0 / (tau ** 2 * (np.asarray(t, np.float64) + 1.0))


# ----------------------------------------------------------------------------- online losses

def _pair_loss_fn(method, tau):
    if method == "ipo":
        return functools.partial(pairwise.ipo_loss, tau=tau)
    if method == "dpo":
        return functools.partial(pairwise.dpo_loss, beta=tau)
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(ONLINE_METHODS)}")


def _enumerate_pairs(theta_A, ref_logp_A):
    """log π, log-ratios and stop-gradient sampling weights π(y)π(y') of all A² ordered pairs."""
    n_actions = theta_A.shape[-1]
    logp_A = jax.nn.log_softmax(theta_A)
    first_B = jnp.repeat(jnp.arange(n_actions), n_actions)
    second_B = jnp.tile(jnp.arange(n_actions), n_actions)
    # Sampling is outside the gradient in the online algorithms: y, y' ~ sg(π).
    p_A = jax.lax.stop_gradient(jnp.exp(logp_A))
    return logp_A, logp_A - ref_logp_A, first_B, second_B, p_A[first_B] * p_A[second_B]


def expected_online_loss(theta_A, pref_AxA, ref_logp_A, *, method, tau, soft=True):
    """E_{y,y'~sg(π)} of `online_pair_loss` with IPO (τ) or DPO (β = τ), soft labels P(y ≻ y')."""
    _, logratio_A, first_B, second_B, weight_B = _enumerate_pairs(theta_A, ref_logp_A)
    loss_B = online_math.online_pair_loss(logratio_A[first_B], logratio_A[second_B],
                                          pref_AxA[first_B, second_B],
                                          loss_fn=_pair_loss_fn(method, tau), soft=soft)
    return jnp.sum(weight_B * loss_B)


def expected_self_play_loss(theta_A, pref_AxA, ref_logp_A, *, tau):
    """E_{y,y'~sg(π)} of `nash_md_pg_loss` with y' from π itself (β = 0, self-play)."""
    logp_A, _, first_B, second_B, weight_B = _enumerate_pairs(theta_A, ref_logp_A)
    loss_B = online_math.nash_md_pg_loss(logp_A[first_B][:, None], ref_logp_A[first_B][:, None],
                                         jnp.ones((first_B.shape[0], 1), logp_A.dtype),
                                         pref_AxA[first_B, second_B], tau=tau)
    return jnp.sum(weight_B * loss_B)


@functools.partial(jax.jit, static_argnames=("method", "steps"))
def _descend(pref_AxA, ref_logp_A, tau, lr, *, method, steps):
    grad_fn = jax.grad(functools.partial(expected_online_loss, method=method))

    def step(theta_A, _):
        theta_A = theta_A - lr * grad_fn(theta_A, pref_AxA, ref_logp_A, tau=tau)
        return theta_A, jax.nn.log_softmax(theta_A)

    # θ_0 = log μ, so π_0 = μ as in the online algorithms' initialisation.
    theta_A = jnp.asarray(ref_logp_A)
    _, logp_TxA = jax.lax.scan(step, theta_A, None, length=steps)
    return jnp.concatenate([jax.nn.log_softmax(theta_A)[None], logp_TxA])


def online_descent(pref_AxA, ref_logp_A, *, method, tau=ONLINE_TAU, lr=ONLINE_LR, steps=ONLINE_STEPS):
    """log π_t over `steps` of gradient descent on the expected online loss, from π_0 = μ."""
    _pair_loss_fn(method, tau)
    with jax.enable_x64(True):
        logp_TxA = _descend(jnp.asarray(pref_AxA, F64), jnp.asarray(ref_logp_A, F64),
                            jnp.asarray(tau, F64), jnp.asarray(lr, F64), method=method, steps=steps)
        return np.asarray(logp_TxA, np.float64)


@jax.jit
def _gradients(theta_A, pref_AxA, ref_logp_A, tau):
    ipo_A = jax.grad(functools.partial(expected_online_loss, method="ipo"))(
        theta_A, pref_AxA, ref_logp_A, tau=tau)
    pg_A = jax.grad(expected_self_play_loss)(theta_A, pref_AxA, ref_logp_A, tau=tau)
    # The closed form is an ascent direction on P(π≻π) − τKL; as a loss gradient it flips sign.
    closed_A = -online_math.tabular_nash_md_pg_grad(theta_A, ref_logp_A, pref_AxA, tau=tau, beta=0.0)
    dpo_A = jax.grad(functools.partial(expected_online_loss, method="dpo"))(
        theta_A, pref_AxA, ref_logp_A, tau=tau)
    return ipo_A, pg_A, closed_A, dpo_A


def _f64_gradients(theta_A, pref_AxA, ref_logp_A, tau):
    with jax.enable_x64(True):
        grads = _gradients(*(jnp.asarray(x, F64) for x in (theta_A, pref_AxA, ref_logp_A, tau)))
        return tuple(np.asarray(g, np.float64) for g in grads)


def expected_gradients(theta_A, pref_AxA, ref_logp_A, *, tau):
    """Exact expected loss gradients w.r.t. the logits: online IPO, self-play surrogate, closed form."""
    return _f64_gradients(theta_A, pref_AxA, ref_logp_A, tau)[:3]


def online_gradient_norm(logp_A, pref_AxA, ref_logp_A, *, method, tau=ONLINE_TAU):
    """‖∇_θ E[online loss]‖ at π = softmax(θ): 0 at a fixed point of the online dynamics."""
    _pair_loss_fn(method, tau)
    grads = _f64_gradients(logp_A, pref_AxA, ref_logp_A, tau)
    return float(np.linalg.norm(grads[0] if method == "ipo" else grads[3]))


# ----------------------------------------------------------------------------- the four claims

def report_points(steps):
    """Iterations reported in tables: powers of ten up to `steps`, and `steps` itself."""
    return sorted({10 ** k for k in range(8) if 10 ** k <= steps} | {steps})


def nash_md_runs(*, actions=NASH_ACTIONS, taus=NASH_TAUS, seeds=SEEDS, steps=NASH_STEPS):
    """Claim 1: {(A, τ): dict(kl_RxT, gap_R, residual_R)} over random games (P, μ) per seed."""
    out = {}
    for n_actions in actions:
        games = []
        for seed in range(seeds):
            rng = np.random.default_rng([n_actions, seed])
            games.append((random_preference(n_actions, rng), random_reference(n_actions, rng)))
        for tau in taus:
            kls, gaps, residuals = [], [], []
            for pref_AxA, ref_logp_A in games:
                star_A = solve_nash(pref_AxA, ref_logp_A, tau=tau)
                logp_TxA = nash_md_trajectory(pref_AxA, ref_logp_A, tau=tau, steps=steps)
                kls.append(kl(star_A, logp_TxA))
                gaps.append(nash_gap(star_A, pref_AxA, ref_logp_A, tau=tau))
                residuals.append(online_math.nash_residual(star_A, ref_logp_A, pref_AxA, tau=tau))
            out[(n_actions, tau)] = dict(kl_RxT=np.stack(kls), gap_R=np.array(gaps),
                                         residual_R=np.array(residuals))
    return out


def rps_runs(*, steps=RPS_STEPS, eta=RPS_ETA, tau=RPS_TAU, start=RPS_START):
    """Claim 2: {label: log π_TxA} for multiplicative weights (τ = 0) and Nash-MD (τ > 0)."""
    pref_AxA, ref_logp_A = rps_preference(), np.full(3, -np.log(3.0))
    init_A = np.log(np.asarray(start, np.float64) / np.sum(start))
    return {label: nash_md_trajectory(pref_AxA, ref_logp_A, tau=t, eta=eta, steps=steps,
                                      init_logp_A=init_A)
            for label, t in (("self-play MWU (τ = 0)", 0.0), (f"Nash-MD (τ = {tau:g})", tau))}


def online_runs(*, steps=ONLINE_STEPS, tau=ONLINE_TAU, lr=ONLINE_LR, problems=None):
    """Claim 3: {(game, method): log π_TxA} of gradient descent on the expected online loss."""
    problems = online_problems() if problems is None else problems
    return {(name, method): online_descent(pref_AxA, ref_logp_A, method=method, tau=tau, lr=lr,
                                           steps=steps)
            for name, (pref_AxA, ref_logp_A) in problems.items() for method in ONLINE_METHODS}


def gradient_checks(*, actions=GRAD_ACTIONS, taus=GRAD_TAUS, seeds=SEEDS):
    """Claim 4: {(A, τ): dict(cos_R, factor_R, closed_R)} at random logits, P and μ."""
    out = {}
    for n_actions in actions:
        for tau in taus:
            cos, factor, closed = [], [], []
            for seed in range(seeds):
                rng = np.random.default_rng([1000 + n_actions, seed])
                pref_AxA, ref_logp_A = random_preference(n_actions, rng), random_reference(n_actions, rng)
                ipo_A, pg_A, closed_A = expected_gradients(rng.normal(size=n_actions), pref_AxA,
                                                           ref_logp_A, tau=tau)
                cos.append(ipo_A @ pg_A / (np.linalg.norm(ipo_A) * np.linalg.norm(pg_A)))
                factor.append(ipo_A @ pg_A / (pg_A @ pg_A))
                closed.append(np.max(np.abs(pg_A - closed_A)) / np.max(np.abs(closed_A)))
            out[(n_actions, tau)] = dict(cos_R=np.array(cos), factor_R=np.array(factor),
                                         closed_R=np.array(closed))
    return out


# ----------------------------------------------------------------------------- tables

def _e(x):
    # Float64 rounding leaves |values| of ~1e-16 (even slightly negative KLs) where the exact one is 0.
    return "< 1e-15" if abs(x) < 1e-15 else f"{x:.2e}"


def _probs(logp_A):
    return "(" + ", ".join(f"{p:.4f}" for p in np.exp(logp_A)) + ")"


def _table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def nash_md_table(runs, *, steps):
    """Markdown for claim 1: worst KL over seeds at reported T beside Theorem 1's bound."""
    n_seeds = next(iter(runs.values()))["kl_RxT"].shape[0]
    rows, cert_rows, violations, checked = [], [], 0, 0
    for (n_actions, tau), run in runs.items():
        kl_RxT = run["kl_RxT"]
        t_T = np.arange(kl_RxT.shape[1])
        bound_T = theorem1_bound(tau, t_T)
        violations += int(np.sum(kl_RxT[:, 1:] > bound_T[1:]))
        checked += kl_RxT[:, 1:].size
        for t in report_points(steps):
            worst = kl_RxT[:, t].max()
            rows.append([n_actions, f"{tau:g}", t, _e(worst), _e(bound_T[t]), _e(worst / bound_T[t])])
        cert_rows.append([n_actions, f"{tau:g}", _e(np.max(run["gap_R"])),
                          _e(np.max(run["residual_R"])),
                          _e(np.max(kl_RxT[:, 1:] / bound_T[1:]))])
    lines = [
        f"**Claim 1: Nash-MD's last iterate** (η_t = 2/(τ(t+2)), π_0 = μ). KL(π*_τ, π_T) is the "
        f"largest over {n_seeds} random games (P, μ) per A; π*_τ from `regularized_nash`.", ""]
    lines += _table(["A", "τ", "T", "KL(π*_τ, π_T)", "bound 8/(τ²(T+1))", "KL / bound"], rows)
    lines += ["", f"Iterates above the bound, over all t = 1..{steps}, seeds, A and τ: "
              f"**{violations} of {checked}**.", "",
              "Certificates of π*_τ (max over seeds): duality gap of the regularised game "
              "(0 only at the equilibrium), the library's fixed-point residual "
              "max_y |log π*(y) − log BR(π*)(y)|, and the largest KL / bound over all t ≥ 1.", ""]
    lines += _table(["A", "τ", "duality gap", "residual", "max_t KL / bound"], cert_rows)
    return "\n".join(lines) + "\n"


def rps_table(runs, *, steps, eta=RPS_ETA):
    """Markdown for claim 2: distance to the uniform NE and the range of π(rock) late in the run."""
    uniform_A = np.full(3, -np.log(3.0))
    points = sorted({0} | set(report_points(steps)))
    tail = max(1, steps // 10)
    rows = []
    for label, logp_TxA in runs.items():
        dist_T = kl(uniform_A, logp_TxA)
        rock_T = np.exp(logp_TxA[-tail:, 0])
        average_A = np.exp(logp_TxA).mean(axis=0)
        rows.append([label, f"{eta:g}"] + [_e(dist_T[t]) for t in points]
                    + [f"{rock_T.min():.4f} – {rock_T.max():.4f}",
                       f"{np.max(np.abs(average_A - 1 / 3)):.4f}"])
    lines = [f"**Claim 2: rock-paper-scissors**, π_0 = {RPS_START}, μ uniform, constant η. Distance "
             "to the Nash equilibrium (uniform) as KL(u ‖ π_t); the range of π(rock) over the last "
             f"{tail} iterations; and the largest deviation of the time-average π from ⅓.", ""]
    lines += _table(["run", "η"] + [f"t = {t}" for t in points]
                    + [f"π(rock), last {tail}", "max_y abs(avg π − ⅓)"], rows)
    return "\n".join(lines) + "\n"


def online_table(runs, *, steps, tau=ONLINE_TAU, lr=ONLINE_LR, problems=None):
    """Markdown for claim 3: final π of online IPO / DPO beside the regularised NE."""
    problems = online_problems() if problems is None else problems
    rows = []
    for name, (pref_AxA, ref_logp_A) in problems.items():
        star_A = solve_nash(pref_AxA, ref_logp_A, tau=tau)
        for method in ONLINE_METHODS:
            logp_TxA = runs[(name, method)]
            final_A = logp_TxA[-1]
            drift = np.max(np.abs(np.exp(final_A) - np.exp(logp_TxA[steps // 2])))
            rows.append([name, method.upper(), _probs(final_A), _probs(star_A),
                         _e(kl(star_A, final_A)),
                         f"{np.max(np.abs(np.exp(final_A) - np.exp(star_A))):.4f}",
                         _e(online_gradient_norm(final_A, pref_AxA, ref_logp_A, method=method,
                                                 tau=tau)),
                         _e(drift), _own_fixed_point(method, pref_AxA, tau)])
    lines = [f"**Claim 3: online IPO vs online DPO**, gradient descent (lr {lr:g}, {steps} steps, "
             f"θ_0 = log μ, μ uniform) on the exact expected loss with soft labels; IPO τ = {tau:g}, "
             f"DPO β = {tau:g}. Drift = max |π_T − π_{{T/2}}|; ‖∇‖ is the expected gradient at π_T.",
             ""]
    lines += _table(["game", "method", "final π", "regularised NE π*_τ", "KL(π*, π_T)",
                     "max_y abs(π_T − π*)", "‖∇‖ at π_T", "drift", "closed-form fixed point π(a)"], rows)
    return "\n".join(lines) + "\n"


def _own_fixed_point(method, pref_AxA, tau):
    """π(a) where the 2-action expected gradient vanishes (uniform μ): IPO σ((p−½)/τ), DPO σ(logit p/β)."""
    if pref_AxA.shape[0] != 2:
        return "—"
    p = pref_AxA[0, 1]
    if method == "ipo":
        return f"{1 / (1 + np.exp(-(p - 0.5) / tau)):.4f}"
    if p >= 1.0:
        return "none (π(a) → 1)"
    return f"{1 / (1 + np.exp(-np.log(p / (1 - p)) / tau)):.4f}"


def gradient_table(checks):
    """Markdown for claim 4: cosine and factor between online IPO and self-play gradients."""
    n_seeds = next(iter(checks.values()))["cos_R"].shape[0]
    rows = [[n_actions, f"{tau:g}", _e(1.0 - c["cos_R"].min()),
             f"{c['factor_R'].min():.6f} – {c['factor_R'].max():.6f}", f"{4 / tau:g}",
             _e(c["closed_R"].max())]
            for (n_actions, tau), c in checks.items()]
    lines = [f"**Claim 4: expected online-IPO gradient ∥ self-play gradient**, exact (all A² pairs), "
             f"{n_seeds} random (θ, P, μ) per row. Factor = ⟨g_IPO, g_PG⟩ / ‖g_PG‖²; derivation "
             "gives 4/τ. Last column: max relative difference between the `nash_md_pg_loss` "
             "gradient and `tabular_nash_md_pg_grad`.", ""]
    lines += _table(["A", "τ", "1 − min cosine", "factor (min – max)", "4/τ", "surrogate vs closed form"],
                    rows)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_nash_md(runs, path):
    """KL(π*_τ, π_t) against t (worst seed), one panel per τ, with Theorem 1's bound."""
    plt = _pyplot()
    taus = sorted({tau for _, tau in runs})
    fig, axes = plt.subplots(1, len(taus), figsize=(4.5 * len(taus), 4), squeeze=False)
    for ax, tau in zip(axes[0], taus):
        for (n_actions, t), run in runs.items():
            if t == tau:
                kl_T = run["kl_RxT"].max(axis=0)
                t_T = np.arange(1, kl_T.shape[0])
                ax.loglog(t_T, np.maximum(kl_T[1:], 1e-18), label=f"A = {n_actions}")
        t_T = np.arange(1, next(iter(runs.values()))["kl_RxT"].shape[1])
        ax.loglog(t_T, theorem1_bound(tau, t_T), "k--", label="8/(τ²(T+1))")
        ax.set_title(f"Nash-MD, τ = {tau:g}")
        ax.set_xlabel("iteration T")
    axes[0, 0].set_ylabel("KL(π*_τ, π_T), worst seed")
    axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _simplex_xy(logp_TxA):
    """Barycentric coordinates of 3-action policies on an equilateral triangle."""
    p_TxA = np.exp(logp_TxA)
    return p_TxA[:, 1] + 0.5 * p_TxA[:, 2], np.sqrt(3) / 2 * p_TxA[:, 2]


def plot_rps(runs, path):
    """π(rock) over iterations, KL(u ‖ π_t), and the trajectories on the simplex."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    uniform_A = np.full(3, -np.log(3.0))
    for (label, logp_TxA), color in zip(runs.items(), ("tab:red", "tab:blue")):
        t_T = np.arange(logp_TxA.shape[0])
        axes[0].plot(t_T, np.exp(logp_TxA[:, 0]), color=color, linewidth=0.8, label=label)
        # Below ~1e-16 the KL is float64 rounding noise; the floor keeps the log axis readable.
        axes[1].semilogy(t_T, np.maximum(kl(uniform_A, logp_TxA), 1e-16), color=color, label=label)
        x_T, y_T = _simplex_xy(logp_TxA)
        axes[2].plot(x_T, y_T, color=color, linewidth=0.6, label=label)
        axes[2].plot(x_T[:1], y_T[:1], "o", color=color)
    axes[0].axhline(1 / 3, color="k", linestyle=":", linewidth=1)
    axes[0].set(xlabel="iteration t", ylabel="π_t(rock)", title="π(rock); dotted: NE = ⅓")
    axes[1].set(xlabel="iteration t", ylabel="KL(u ‖ π_t)", title="distance to the NE (floored at 1e-16)")
    corners_x, corners_y = [0, 1, 0.5, 0], [0, 0, np.sqrt(3) / 2, 0]
    axes[2].plot(corners_x, corners_y, "k-", linewidth=0.8)
    for name, x, y, offset in zip(RPS_ACTIONS, corners_x, corners_y, ((-12, -14), (12, -14), (0, 6))):
        axes[2].annotate(name, (x, y), textcoords="offset points", xytext=offset, ha="center")
    axes[2].plot([0.5], [np.sqrt(3) / 6], "k*", markersize=10)
    axes[2].set(aspect="equal", title="on the simplex (★ NE, ● start)")
    axes[2].axis("off")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_online(runs, path, *, tau=ONLINE_TAU, problems=None):
    """π over gradient steps for online IPO (solid) and DPO (dashed); dotted: regularised NE."""
    plt = _pyplot()
    problems = online_problems() if problems is None else problems
    colors = ("tab:blue", "tab:orange", "tab:green")
    fig, axes = plt.subplots(1, len(problems), figsize=(5 * len(problems), 4), squeeze=False)
    for ax, (name, (pref_AxA, ref_logp_A)) in zip(axes[0], problems.items()):
        star_A = np.exp(solve_nash(pref_AxA, ref_logp_A, tau=tau))
        for method, style in zip(ONLINE_METHODS, ("-", "--")):
            p_TxA = np.exp(runs[(name, method)])
            for k in range(p_TxA.shape[1]):
                ax.plot(np.arange(p_TxA.shape[0]), p_TxA[:, k], style, color=colors[k])
        for k, p in enumerate(star_A):
            ax.axhline(p, color=colors[k], linestyle=":", linewidth=1.5)
        ax.set_xscale("symlog", linthresh=10)
        ax.set(title=name, xlabel="gradient step (linear to 10, then log)", ylim=(-0.02, 1.02),
               xlim=(0, p_TxA.shape[0]))
    axes[0, 0].set_ylabel("π (— IPO, -- DPO, ··· NE)")
    handles = [plt.Line2D([], [], color=c, label=f"π({a})") for c, a in zip(colors, "abc")]
    axes[0, -1].legend(handles=handles, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


PLOTS = ("nash_md_kl.png", "rps.png", "online_ipo_dpo.png")


def settings(argv=None):
    """(args, mode name, {steps, online_steps, seeds}, out) from the command line."""
    p = harness.parser(__doc__)
    p.add_argument("--steps", type=int, help="Nash-MD and RPS iterations (default: the mode's)")
    p.add_argument("--online-steps", type=int,
                   help="gradient steps of online IPO / DPO (default: the mode's)")
    args = p.parse_args(argv)
    name = harness.mode(p, args)
    # --seeds (random games per (A, τ)) follows the harness: 0 is the mode's.
    sizes = dict(MODES[name], seeds=args.seeds or MODES[name]["seeds"])
    sizes.update({k: getattr(args, k) for k in ("steps", "online_steps")
                  if getattr(args, k) is not None})
    for flag, value in sizes.items():
        if value < (2 if flag != "seeds" else 1):
            p.error(f"--{flag.replace('_', '-')} is too small: {value}")
    return args, name, sizes, harness.output_dir(args.out, NAME)


def main(argv=None) -> int:
    args, _, sizes, out = settings(argv)
    steps, online_steps, seeds = sizes["steps"], sizes["online_steps"], sizes["seeds"]
    os.makedirs(out, exist_ok=True)
    nash = nash_md_runs(seeds=seeds, steps=steps)
    rps = rps_runs(steps=steps)
    online = online_runs(steps=online_steps)
    grads = gradient_checks(seeds=seeds)
    table = "\n".join([nash_md_table(nash, steps=steps), rps_table(rps, steps=steps),
                       online_table(online, steps=online_steps), gradient_table(grads)])
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    plot_nash_md(nash, os.path.join(out, PLOTS[0]))
    plot_rps(rps, os.path.join(out, PLOTS[1]))
    plot_online(online, os.path.join(out, PLOTS[2]))
    if args.publish:
        harness.publish(out, HERE, ["results.md", *PLOTS])
    print(table)
    print(f"wrote results.md and {', '.join(PLOTS)} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
