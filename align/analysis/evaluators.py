"""Evaluator error rates: how often an evaluator's approval agrees with the truth.

For outputs i with a true label t_i ∈ [0, 1] (R*: 1 where the output is right; a value strictly
between 0 and 1 is the probability that it is right), an evaluator's approval a_i ∈ [0, 1]
(R_eval: a 0/1 verdict, or the probability that the evaluator approves) and weights w_i >= 0
(uniform by default; a policy's probabilities over a prompt's candidates make every rate exact
under that policy), with the truth and the approval of one output independent given the output:

    correctness          E[R*]               = Σ w t / Σ w
    approval             E[R_eval]           = Σ w a / Σ w
    error rate           P(R_eval ≠ R*)      = Σ w (t (1 − a) + (1 − t) a) / Σ w
    false-positive rate  P(approve | wrong)  = Σ w (1 − t) a / Σ w (1 − t)
    false-negative rate  P(reject | right)   = Σ w t (1 − a) / Σ w t

Sums run over every element of the arrays, so weights [N, M] that are a policy's probabilities
(each prompt's row summing to 1) give means over prompts of the per-prompt expectations, pooled
as the paper's human evaluations pool answers. A rate whose conditioning event has no weight
(FPR with no wrong output, FNR with no right one) is NaN. Everything is float64 numpy.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

RATES = ("correctness", "approval", "error_rate", "false_positive_rate", "false_negative_rate")


class Rates(NamedTuple):
    """The five rates of one evaluator on one set of (weighted) outputs, each in [0, 1]."""
    correctness: float
    approval: float
    error_rate: float
    false_positive_rate: float
    false_negative_rate: float


def _unit_interval(x, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)) or np.any(x < 0) or np.any(x > 1):
        raise ValueError(f"evaluators: {name} must lie in [0, 1] (0/1 labels or probabilities)")
    return x


def rates(truth, approval, weights=None) -> Rates:
    """Correctness, approval, error, false-positive and false-negative rates (module docstring).

    truth, approval and weights are broadcast against each other; weights None is uniform.
    """
    t = _unit_interval(truth, "truth")
    a = _unit_interval(approval, "approval")
    try:
        t, a = np.broadcast_arrays(t, a)
        w = np.ones_like(t) if weights is None else np.broadcast_to(
            np.asarray(weights, np.float64), t.shape)
    except ValueError as e:
        raise ValueError(f"evaluators: truth {np.shape(truth)}, approval {np.shape(approval)} "
                         f"and weights {np.shape(weights)} do not broadcast") from e
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("evaluators: weights must be finite and >= 0")
    total = float(np.sum(w))
    if not total > 0:
        raise ValueError("evaluators: the weights sum to 0 (no outputs to rate)")
    wrong, right = float(np.sum(w * (1.0 - t))), float(np.sum(w * t))
    false_pos, false_neg = float(np.sum(w * (1.0 - t) * a)), float(np.sum(w * t * (1.0 - a)))
    return Rates(correctness=right / total,
                 approval=float(np.sum(w * a)) / total,
                 error_rate=(false_pos + false_neg) / total,
                 false_positive_rate=false_pos / wrong if wrong > 0 else float("nan"),
                 false_negative_rate=false_neg / right if right > 0 else float("nan"))


def change(before: Rates, after: Rates) -> Rates:
    """after − before, rate by rate (a positive false_positive_rate: the evaluator is fooled
    more often after)."""
    return Rates(*(float(b) - float(a) for a, b in zip(before, after)))


def policy_rates(truth_NxM, approval_NxM, logp_NxM) -> Rates:
    """rates() under a policy: weights exp(logp) over each prompt's M candidates, rows
    renormalised (so float32 log-probabilities summing to 1 within rounding are accepted)."""
    p = np.exp(np.asarray(logp_NxM, np.float64))
    if p.ndim != 2:
        raise ValueError(f"evaluators: logp_NxM must be [N, M], got shape {p.shape}")
    return rates(truth_NxM, approval_NxM, p / p.sum(axis=-1, keepdims=True))
