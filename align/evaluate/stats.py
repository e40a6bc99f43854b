"""Statistics the experiments report: intervals over seeds and Gao et al.'s over-optimisation fits.

Dimension letters: R runs (seeds), M measurements.

Over-optimisation (Gao et al., arXiv 2210.10760): with d = sqrt(KL(pi || pi_init)), the gold
reward of best-of-n follows R_bon(d) = d (alpha - beta d) and that of RL follows
R_RL(d) = d (alpha - beta log d). Both are linear in (alpha, beta), so the fit is ordinary
least squares on the columns [d, -d^2] or [d, -d log d] (no intercept: R(0) = 0, gold
reward measured relative to the initial policy).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
from scipy import stats as scipy_stats

FORMS = ("bon", "rl")


def mean_ci(values_R: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean over runs and the half-width of its Student-t interval (NaN for fewer than 2)."""
    x = np.asarray(values_R, np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("mean_ci: no values")
    if not 0 < confidence < 1:
        raise ValueError(f"mean_ci: confidence must lie in (0, 1), got {confidence}")
    if x.size < 2:
        return float(x.mean()), math.nan
    t = scipy_stats.t.ppf(0.5 + confidence / 2, df=x.size - 1)
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(x.size))


def fmt_ci(mean: float, half: float, digits: int = 3, scale: float = 1.0) -> str:
    """'0.512 ± 0.030' (the half-width left out when it is NaN)."""
    if math.isnan(half):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {half * scale:.{digits}f}"


def _design(form: str, d_M):
    d = np.asarray(d_M, np.float64)
    if form == "bon":
        return np.stack([d, -d * d], axis=1)
    if form == "rl":
        # d log d -> 0 as d -> 0; np.log(0) would give 0 * -inf = NaN.
        safe = np.where(d > 0, d, 1.0)
        return np.stack([d, -d * np.log(safe)], axis=1)
    raise ValueError(f"unknown functional form {form!r}; valid: {', '.join(FORMS)}")


def predict(form: str, d_M, alpha: float, beta: float) -> np.ndarray:
    """R(d) of the named form."""
    return _design(form, d_M) @ np.array([alpha, beta], np.float64)


class Fit(NamedTuple):
    form: str
    alpha: float
    beta: float
    r2: float  # coefficient of determination on the fitted points (about zero, as R(0) = 0)
    rmse: float  # root mean squared residual on the fitted points


def fit(form: str, d_M, reward_M) -> Fit:
    """Least-squares (alpha, beta) of R(d) = d (alpha - beta d) ("bon") or d (alpha - beta log d) ("rl")."""
    d = np.asarray(d_M, np.float64).reshape(-1)
    r = np.asarray(reward_M, np.float64).reshape(-1)
    if d.shape != r.shape:
        raise ValueError(f"fit: {d.size} distances but {r.size} rewards")
    if d.size < 2:
        raise ValueError(f"fit: need at least 2 points, got {d.size}")
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(r))):
        raise ValueError("fit: distances and rewards must be finite")
    if np.any(d < 0):
        raise ValueError("fit: distances d = sqrt(KL) must be >= 0")
    x = _design(form, d)
    (alpha, beta), *_ = np.linalg.lstsq(x, r, rcond=None)
    resid = r - x @ np.array([alpha, beta])
    total = float(np.sum(r * r))  # uncentred: the model has no intercept
    r2 = 1.0 - float(np.sum(resid * resid)) / total if total > 0 else math.nan
    return Fit(form, float(alpha), float(beta), r2, float(np.sqrt(np.mean(resid * resid))))


def extrapolation_error(form: str, d_M, reward_M, *, fraction: float = 0.5) -> tuple[Fit, float]:
    """Fit on the points with the smallest `fraction` of d, and the RMSE on the rest."""
    d = np.asarray(d_M, np.float64).reshape(-1)
    r = np.asarray(reward_M, np.float64).reshape(-1)
    order = np.argsort(d, kind="stable")
    n_fit = max(2, int(round(fraction * d.size)))
    if n_fit >= d.size:
        raise ValueError(f"extrapolation_error: {d.size} points leave none beyond the fitted {n_fit}")
    head, tail = order[:n_fit], order[n_fit:]
    f = fit(form, d[head], r[head])
    err = r[tail] - predict(form, d[tail], f.alpha, f.beta)
    return f, float(np.sqrt(np.mean(err * err)))
