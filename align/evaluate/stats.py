"""Statistics the experiments report: intervals over seeds, claim verdicts that can fail, power.

Dimension letters: R runs (seeds), B bootstrap resamples, M measurements (points of a curve),
K parts of a claim.

Every claim gets one of three verdicts: "reproduced", "contradicted", "inconclusive". Each
criterion below is a test at a pre-registered level alpha (default 0.05), so that a claim whose
effect is absent passes with probability at most alpha; tests/test_stats.py checks this on null
simulations and checks that a planted effect of the paper's size passes.

Directional claims ("A beats B"). The effect is oriented so that the paper's direction is
positive; paper_effect > 0 is the size the paper reports, smallest_effect (0 <= smallest_effect
<= paper_effect) the pre-registered smallest effect of interest. [low, high] is the two-sided
1 - 2 alpha interval of our effect, so each bound is a one-sided level-alpha test:
  - contradicted  if high < smallest_effect. The interval then excludes the paper-size effect
    from below while lying below the smallest effect of interest: whatever effect there is,
    it is smaller than the claim allows (this includes an interval lying entirely below 0).
    Level: P(contradicted) <= alpha whenever the true effect is >= smallest_effect.
  - reproduced    if low > 0 and high >= smallest_effect: the effect has the paper's sign and
    effects of interest are not excluded. Level: P(reproduced) <= alpha when the effect is <= 0.
  - inconclusive  otherwise (low <= 0 and high >= smallest_effect: the seeds cannot tell).
The three cases are disjoint and exhaustive. The interval is Student's t on per-seed values,
mean +- t_{1-alpha, R-1} s / sqrt(R) (paired: on the differences of the two arms on the same
seeds, common random numbers, which removes the between-seed variance the arms share), or BCa.

Equivalence claims ("A is about B"): TOST with a pre-registered margin m > 0. The two one-sided
tests H0: effect <= -m and H0: effect >= +m, p_lo = P(T >= (mean + m) / se), p_hi =
P(T <= (mean - m) / se); equivalence is shown when max(p_lo, p_hi) < alpha, i.e. when the
1 - 2 alpha interval lies inside (-m, m):
  - reproduced    if -m < low and high < m.
  - contradicted  if low > m or high < -m (the interval lies entirely outside +-m).
  - inconclusive  otherwise. An interval that merely contains 0 proves nothing: with few seeds
    it is wide and contains 0 easily, and then it also crosses +-m.

Conjunctions ("A and B and ..."), K parts. The claim is false if one part is false, so
requiring every part to be reproduced at level alpha already bounds the false "reproduced"
rate by alpha (intersection-union test; no adjustment needed, and an adjustment would only
cost power). The claim is true only if all parts are true, so "contradicted" is declared when
Holm's step-down procedure over the parts' contradiction p-values rejects at least one; this
bounds the chance of contradicting a true claim by alpha (without it, 8 parts at the boundary
give 1 - 0.95^8 = 34%). Statements about which parts held use Holm too. Holm: sort the K
p-values, p_(1) <= ... <= p_(K); reject H_(1..j-1) where j is the first index with
p_(j) > alpha / (K - j + 1) (all K if there is none); the adjusted p-values are
p~_(j) = max_{i <= j} min(1, (K - i + 1) p_(i)), and H_(j) is rejected iff p~_(j) <= alpha.

BCa bootstrap (Efron 1987) for a statistic theta of R >= 16 seeds: B resamples of the seeds
with replacement give theta*_B; z0 = Phi^-1(share of theta* < theta_hat, ties counted half);
acceleration a = sum u^3 / (6 (sum u^2)^(3/2)) with u_i = mean(theta_(-i)) - theta_(-i) the
jackknife deviations; the bound at level q is the Phi(z0 + (z0 + z_q) / (1 - a (z0 + z_q)))
quantile of theta*. With R seeds the bootstrap distribution is too narrow (plug-in spread,
normal quantiles), which makes plain BCa liberal: at R = 16 on normal data a nominal 5%
one-sided bound errs about 1.5-2 points more often than the t bound does. So the level is
first expanded, q -> Phi(sqrt(R / (R - 1)) t^-1_{R-1}(q)) (Hesterberg's expanded percentile),
which closes that gap (expand=False gives plain BCa, as scipy.stats.bootstrap computes it).
The one-sided p-value (achieved significance level) inverts the map: for a null value v,
w = Phi^-1(G(v)) - z0 with G the share of theta* below v, p = Phi(w / (1 + a w) - z0) for
H0: theta <= v, then the expansion is undone, p -> T_{R-1}(Phi^-1(p) / sqrt(R / (R - 1))).
Paired: the seeds are resampled as pairs (both arms of seed r together).

Share of seeds (bimodal outcomes: a pattern appears on some seeds, not on others): k of R seeds
show it. The Clopper-Pearson bounds are the Beta(alpha; k, R - k + 1) and Beta(1 - alpha;
k + 1, R - k) quantiles (exact one-sided level alpha each); the binomial test against a chance
share p0 gives p = P(X >= k | R, p0). The directional rule applies to share - p0 (paper_effect =
paper_share - p0, smallest_effect = smallest_share - p0).

Over-optimisation (Gao et al., arXiv 2210.10760): with d = sqrt(KL(pi || pi_init)), the gold
reward of best-of-n follows R_bon(d) = d (alpha - beta d) and that of RL follows
R_RL(d) = d (alpha - beta log d). Both are linear in (alpha, beta), so the fit is ordinary
least squares on the columns [d, -d^2] or [d, -d log d] (no intercept: R(0) = 0, gold
reward measured relative to the initial policy). A fit passes (fit_verdict) only when
  - the centred R^2 = 1 - SSR / SST, SST = sum (r - mean r)^2, is >= min_r2 (default 0.9): the
    form explains the curve better than the null model, a flat reward at the mean (R^2 = 0).
    The uncentred 1 - SSR / sum r^2 is near 1 for any curve far from 0, noise included;
  - fitted on the smallest-d half, the form predicts the larger-d half with a smaller RMSE than
    the null model fitted on the same half (the mean of the small-d rewards);
  - alpha > 0 and beta > 0, the signs the form implies for a rise then a fall, each by a
    one-sided t test on its least-squares standard error at level sign_level (None: signs only).

Power: the minimum detectable effect of a one-sided level-alpha t test with R seeds is the
delta with P(T'_{df, ncp} > t_{1-alpha, df}) = power, T' noncentral t, ncp = delta sqrt(R) / sd
(paired or one sample, df = R - 1) or delta / (sd sqrt(2 / R)) (two independent arms of R seeds,
df = 2R - 2); roughly (t_{1-alpha} + t_{power}) sd / sqrt(R). A claim whose minimum detectable
effect exceeds the paper's effect cannot be reproduced by the experiment, only left
inconclusive.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple, Sequence

import numpy as np
from scipy import integrate, optimize, special
from scipy import stats as scipy_stats

FORMS = ("bon", "rl")
ALPHA = 0.05
MIN_BOOTSTRAP_SEEDS = 16
REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"
VERDICTS = (REPRODUCED, CONTRADICTED, INCONCLUSIVE)


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


# ----------------------------------------------------------------------------- checks

def _check_alpha(alpha: float, where: str) -> None:
    try:
        ok = 0 < float(alpha) < 0.5
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{where}: alpha must lie in (0, 0.5) (one-sided level), got {alpha!r}")


def _sample(values_R, where: str, min_n: int = 2) -> np.ndarray:
    x = np.asarray(values_R, np.float64)
    if x.ndim != 1:
        raise ValueError(f"{where}: expected one value per seed (1-D), got shape {x.shape}")
    if x.size < min_n:
        raise ValueError(f"{where}: too few seeds: need at least {min_n}, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{where}: values must be finite (got NaN or inf)")
    return x


def _spread(x: np.ndarray, where: str) -> float:
    sd = float(x.std(ddof=1))
    if np.ptp(x) == 0 or not sd > 0:
        raise ValueError(f"{where}: the values have no spread across seeds (all equal); "
                         "an interval needs seed-to-seed variation")
    return sd


def _effects(values_R, baseline_R, where: str) -> np.ndarray:
    """Per-seed effects: the values, or their paired differences from a baseline arm."""
    if baseline_R is None:
        return _sample(values_R, where)
    return paired_differences(values_R, baseline_R)


def paired_differences(a_R, b_R) -> np.ndarray:
    """a_R - b_R over the same seeds (common random numbers: seed r ran in both arms)."""
    a = _sample(a_R, "paired_differences")
    b = _sample(b_R, "paired_differences")
    if a.shape != b.shape:
        raise ValueError(f"paired_differences: {a.size} seeds in one arm but {b.size} in the "
                         "other; pairing needs the same seeds in both")
    return a - b


# ----------------------------------------------------------------------------- Student t

def t_interval(values_R, *, alpha: float = ALPHA) -> tuple[float, float, float]:
    """(mean, low, high): the two-sided 1 - 2 alpha Student-t interval (each bound one-sided)."""
    _check_alpha(alpha, "t_interval")
    x = _sample(values_R, "t_interval")
    se = _spread(x, "t_interval") / math.sqrt(x.size)
    half = float(special.stdtrit(x.size - 1, 1 - alpha)) * se
    m = float(x.mean())
    return m, m - half, m + half


def t_p_value(values_R, null: float = 0.0, *, alternative: str = "greater") -> float:
    """One-sided p of H0: mean <= null ("greater") or mean >= null ("less")."""
    x = _sample(values_R, "t_p_value")
    t = (float(x.mean()) - null) / (_spread(x, "t_p_value") / math.sqrt(x.size))
    # scipy.special's t distribution: the same values as scipy.stats.t, without its overhead.
    if alternative == "greater":
        return float(special.stdtr(x.size - 1, -t))
    if alternative == "less":
        return float(special.stdtr(x.size - 1, t))
    raise ValueError(f"t_p_value: alternative must be 'greater' or 'less', got {alternative!r}")


def paired_t(a_R, b_R, *, alpha: float = ALPHA) -> tuple[float, float, float, float]:
    """(mean of a - b, low, high, p): 1 - 2 alpha t interval and the one-sided p of H0: a <= b."""
    diff_R = paired_differences(a_R, b_R)
    return (*t_interval(diff_R, alpha=alpha), t_p_value(diff_R))


# ----------------------------------------------------------------------------- BCa bootstrap

def _generator(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(f"bootstrap: rng must be a numpy Generator or an int seed, got {rng!r}")


class _BCa(NamedTuple):
    theta: float
    boot_B: np.ndarray
    z0: float
    accel: float
    df: int  # R - 1, for the small-sample expansion; 0: none

    def _expand(self, q: float) -> float:
        if not self.df:
            return q
        return float(special.ndtr(math.sqrt((self.df + 1) / self.df) * special.stdtrit(self.df, q)))

    def _shrink(self, q: float) -> float:  # the inverse of _expand
        if not self.df:
            return q
        return float(special.stdtr(self.df, special.ndtri(q) / math.sqrt((self.df + 1) / self.df)))

    def bound(self, q: float) -> float:
        s = self.z0 + special.ndtri(self._expand(q))
        den = 1 - self.accel * s
        # Past the pole of the BCa map the level saturates at the end the map runs to.
        level = special.ndtr(self.z0 + s / den) if den > 0 else float(self.accel > 0)
        return float(np.quantile(self.boot_B, level))

    def p_value(self, null: float, alternative: str) -> float:
        b = self.boot_B.size
        share = (np.sum(self.boot_B < null) + 0.5 * np.sum(self.boot_B == null)) / b
        w = special.ndtri(min(max(share, 0.5 / b), 1 - 0.5 / b)) - self.z0
        den = 1 + self.accel * w
        if den <= 0:  # outside the range of levels the BCa map reaches
            below = self.accel > 0
            return (0.0 if below else 1.0) if alternative == "greater" else (1.0 if below else 0.0)
        z = w / den - self.z0
        return self._shrink(float(special.ndtr(z if alternative == "greater" else -z)))


def _bca(stat_fn: Callable, columns: tuple, resamples: int, rng, where: str, expand: bool) -> _BCa:
    n = columns[0].size
    if n < MIN_BOOTSTRAP_SEEDS:
        raise ValueError(f"{where}: too few seeds for a BCa interval: need at least "
                         f"{MIN_BOOTSTRAP_SEEDS}, got {n}")
    if not (isinstance(resamples, (int, np.integer)) and resamples >= 100):
        raise ValueError(f"{where}: resamples must be an int >= 100, got {resamples!r}")
    theta = np.asarray(stat_fn(*columns, axis=-1), np.float64)
    if theta.shape != () or not np.isfinite(theta):
        raise ValueError(f"{where}: statistic(x, axis=-1) must reduce the last axis to one finite "
                         f"value per sample, got shape {theta.shape} for one sample")
    theta = float(theta)
    idx_BxR = _generator(rng).integers(0, n, size=(int(resamples), n))
    boot_B = np.asarray(stat_fn(*(c[idx_BxR] for c in columns), axis=-1), np.float64)
    keep_RxR1 = ~np.eye(n, dtype=bool)
    jack_R = np.asarray(stat_fn(*(np.broadcast_to(c, (n, n))[keep_RxR1].reshape(n, n - 1)
                                  for c in columns), axis=-1), np.float64)
    if boot_B.shape != (resamples,) or jack_R.shape != (n,) or not np.all(np.isfinite(boot_B)):
        raise ValueError(f"{where}: statistic(x, axis=-1) must reduce the last axis to finite "
                         "values (it is called on resampled arrays of shape (B, R))")
    if np.ptp(boot_B) == 0:
        raise ValueError(f"{where}: the bootstrap distribution is degenerate "
                         "(no spread across seeds)")
    u_R = jack_R.mean() - jack_R
    den = 6.0 * float(np.sum(u_R * u_R)) ** 1.5
    accel = float(np.sum(u_R ** 3)) / den if den > 0 else 0.0
    share = (np.sum(boot_B < theta) + 0.5 * np.sum(boot_B == theta)) / resamples
    z0 = float(special.ndtri(min(max(share, 0.5 / resamples), 1 - 0.5 / resamples)))
    return _BCa(theta, boot_B, z0, accel, n - 1 if expand else 0)


def _mean_stat(x, axis=-1):
    return np.mean(x, axis=axis)


def _paired_stat(statistic):
    if statistic is None:
        return lambda a, b, axis=-1: np.mean(a - b, axis=axis)
    return statistic


def bca_interval(values_R, statistic: Callable = _mean_stat, *, alpha: float = ALPHA,
                 resamples: int = 9999, rng=0, expand: bool = True) -> tuple[float, float, float]:
    """(statistic, low, high): BCa 1 - 2 alpha interval; statistic(x, axis=-1) reduces the last
    axis; expand=False: the plain BCa levels (scipy's), without the small-sample expansion."""
    _check_alpha(alpha, "bca_interval")
    x = _sample(values_R, "bca_interval", MIN_BOOTSTRAP_SEEDS)
    b = _bca(statistic, (x,), resamples, rng, "bca_interval", expand)
    return b.theta, b.bound(alpha), b.bound(1 - alpha)


def paired_bca_interval(a_R, b_R, statistic: Callable | None = None, *, alpha: float = ALPHA,
                        resamples: int = 9999, rng=0,
                        expand: bool = True) -> tuple[float, float, float]:
    """BCa interval of statistic(a, b, axis=-1) (default: mean of a - b), seeds paired."""
    _check_alpha(alpha, "paired_bca_interval")
    paired_differences(a_R, b_R)
    a, b = np.asarray(a_R, np.float64), np.asarray(b_R, np.float64)
    boot = _bca(_paired_stat(statistic), (a, b), resamples, rng, "paired_bca_interval", expand)
    return boot.theta, boot.bound(alpha), boot.bound(1 - alpha)


# ----------------------------------------------------------------------------- verdicts

@dataclasses.dataclass(frozen=True)
class Judgement:
    """One test's verdict with its interval (1 - 2 alpha) and the p-values behind it."""
    verdict: str
    estimate: float
    low: float
    high: float
    p_reproduce: float  # H0 the claim is false (effect <= 0; TOST: |effect| >= margin; share <= p0)
    p_contradict: float  # H0 the claim holds (effect >= smallest; TOST: |effect| <= margin)
    n: int
    method: str


def _effect_bounds(paper_effect: float, smallest_effect: float, where: str) -> None:
    if not (math.isfinite(paper_effect) and paper_effect > 0):
        raise ValueError(f"{where}: paper_effect must be finite and > 0 (orient the effect so the "
                         f"paper's direction is positive), got {paper_effect!r}")
    if not (math.isfinite(smallest_effect) and 0 <= smallest_effect <= paper_effect):
        raise ValueError(f"{where}: smallest_effect must lie in [0, paper_effect = "
                         f"{paper_effect}], got {smallest_effect!r}")


def verdict(low: float, high: float, *, paper_effect: float, smallest_effect: float) -> str:
    """Verdict of a directional claim from the 1 - 2 alpha interval [low, high] of our effect.

    The effect is oriented so the paper's direction is positive, paper_effect > 0 and
    0 <= smallest_effect <= paper_effect (pre-registered). Contradicted iff high <
    smallest_effect (the interval excludes the paper-size effect from below and lies below the
    smallest effect of interest; an interval entirely below 0 is a special case); reproduced iff
    low > 0 and high >= smallest_effect; inconclusive otherwise.
    """
    _effect_bounds(paper_effect, smallest_effect, "verdict")
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"verdict: need finite low <= high, got [{low}, {high}]")
    if high < smallest_effect:
        return CONTRADICTED
    return REPRODUCED if low > 0 else INCONCLUSIVE


def equivalence_verdict(low: float, high: float, *, margin: float) -> str:
    """Verdict of an "≈" claim from the 1 - 2 alpha interval: reproduced iff -margin < low and
    high < margin (TOST); contradicted iff low > margin or high < -margin; else inconclusive."""
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"equivalence_verdict: margin must be finite and > 0, got {margin!r}")
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"equivalence_verdict: need finite low <= high, got [{low}, {high}]")
    if low > margin or high < -margin:
        return CONTRADICTED
    return REPRODUCED if -margin < low and high < margin else INCONCLUSIVE


def directional(values_R, baseline_R=None, *, paper_effect: float, smallest_effect: float,
                alpha: float = ALPHA, method: str = "t", statistic: Callable | None = None,
                resamples: int = 9999, rng=0, expand: bool = True) -> Judgement:
    """Directional claim on per-seed effects (or on values_R - baseline_R, paired by seed).

    method "t": Student t on the mean; "bca": BCa bootstrap of statistic (default the mean;
    paired: statistic(a, b, axis=-1), default mean of a - b), at least 16 seeds.
    """
    _check_alpha(alpha, "directional")
    _effect_bounds(paper_effect, smallest_effect, "directional")
    if method == "t":
        if statistic is not None:
            raise ValueError("directional: method 't' tests the mean; "
                             "use method 'bca' for a statistic")
        x = _effects(values_R, baseline_R, "directional")
        est, low, high = t_interval(x, alpha=alpha)
        p_rep = t_p_value(x, 0.0, alternative="greater")
        p_con = t_p_value(x, smallest_effect, alternative="less")
        name = "t" if baseline_R is None else "paired t"
    elif method == "bca":
        if baseline_R is None:
            cols = (_sample(values_R, "directional", MIN_BOOTSTRAP_SEEDS),)
            fn = statistic or _mean_stat
        else:
            paired_differences(values_R, baseline_R)
            cols = (np.asarray(values_R, np.float64), np.asarray(baseline_R, np.float64))
            fn = _paired_stat(statistic)
        b = _bca(fn, cols, resamples, rng, "directional", expand)
        est, low, high = b.theta, b.bound(alpha), b.bound(1 - alpha)
        p_rep, p_con = b.p_value(0.0, "greater"), b.p_value(smallest_effect, "less")
        x, name = cols[0], "BCa" if baseline_R is None else "paired BCa"
    else:
        raise ValueError(f"directional: method must be 't' or 'bca', got {method!r}")
    v = verdict(low, high, paper_effect=paper_effect, smallest_effect=smallest_effect)
    return Judgement(v, est, low, high, p_rep, p_con, int(x.size), name)


def tost(values_R, *, margin: float) -> tuple[float, float]:
    """(p_lo, p_hi): one-sided t p-values of H0: mean <= -margin and of H0: mean >= +margin."""
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"tost: margin must be finite and > 0, got {margin!r}")
    return (t_p_value(values_R, -margin, alternative="greater"),
            t_p_value(values_R, margin, alternative="less"))


def equivalent(values_R, baseline_R=None, *, margin: float, alpha: float = ALPHA) -> Judgement:
    """"≈" claim by TOST on per-seed values (or paired differences values_R - baseline_R)."""
    _check_alpha(alpha, "equivalent")
    x = _effects(values_R, baseline_R, "equivalent")
    est, low, high = t_interval(x, alpha=alpha)
    p_lo, p_hi = tost(x, margin=margin)
    # Non-equivalence: H0 |mean| <= margin, rejected by the interval lying beyond either side.
    p_con = min(t_p_value(x, margin, alternative="greater"),
                t_p_value(x, -margin, alternative="less"))
    v = equivalence_verdict(low, high, margin=margin)
    return Judgement(v, est, low, high, max(p_lo, p_hi), p_con, int(x.size),
                     "TOST" if baseline_R is None else "paired TOST")


# ----------------------------------------------------------------------------- shares of seeds

def clopper_pearson(k: int, n: int, *, alpha: float = ALPHA) -> tuple[float, float]:
    """Exact bounds on a share from k of n: each one-sided level alpha (two-sided 1 - 2 alpha)."""
    _check_alpha(alpha, "clopper_pearson")
    integers = isinstance(n, (int, np.integer)) and isinstance(k, (int, np.integer))
    if not (integers and 0 <= k <= n and n >= 1):
        raise ValueError(f"clopper_pearson: need integers 0 <= k <= n, n >= 1, "
                         f"got k={k!r}, n={n!r}")
    low = 0.0 if k == 0 else float(special.betaincinv(k, n - k + 1, alpha))  # Beta quantiles
    high = 1.0 if k == n else float(special.betaincinv(k + 1, n - k, 1 - alpha))
    return low, high


def share(pattern_R, *, p0: float, paper_share: float, smallest_share: float,
          alpha: float = ALPHA) -> Judgement:
    """Claim that more seeds than the chance share p0 show a pattern (pattern_R: bool per seed).

    The directional rule on share - p0 with the Clopper-Pearson interval; p_reproduce is the
    exact binomial P(X >= k | p0), p_contradict P(X <= k | smallest_share). Estimate and bounds
    are shares (not minus p0).
    """
    _check_alpha(alpha, "share")
    x = np.asarray(pattern_R)
    if x.ndim != 1 or x.size < 2:
        raise ValueError(f"share: need one bool per seed and at least 2 seeds, got shape {x.shape}")
    if x.dtype != bool and not np.all((x == 0) | (x == 1)):
        raise ValueError("share: pattern_R must hold booleans (0/1), one per seed")
    if not 0 < p0 < 1:
        raise ValueError(f"share: the chance share p0 must lie in (0, 1), got {p0!r}")
    _effect_bounds(paper_share - p0, smallest_share - p0,
                   "share (paper_share - p0, smallest_share - p0)")
    k, n = int(np.sum(x)), int(x.size)
    low, high = clopper_pearson(k, n, alpha=alpha)
    v = verdict(low - p0, high - p0, paper_effect=paper_share - p0,
                smallest_effect=smallest_share - p0)
    p_rep = 1.0 if k == 0 else float(special.bdtrc(k - 1, n, p0))  # P(X >= k | p0)
    p_con = float(special.bdtr(k, n, smallest_share))  # P(X <= k | smallest_share)
    return Judgement(v, k / n, low, high, p_rep, p_con, n, "binomial")


# ----------------------------------------------------------------------------- multiplicity

def _p_vector(p_values, where: str) -> np.ndarray:
    p = np.asarray(p_values, np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"{where}: need a non-empty 1-D list of p-values, got shape {p.shape}")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"{where}: p-values must lie in [0, 1] (no NaN)")
    return p


def holm_adjusted(p_values) -> np.ndarray:
    """Holm-adjusted p-values, in the input order: max_{i <= j} min(1, (K - i + 1) p_(i))."""
    p = _p_vector(p_values, "holm_adjusted")
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (p.size - np.arange(p.size)) * p[order])
    out = np.empty_like(p)
    out[order] = np.maximum.accumulate(scaled)
    return out


def holm(p_values, alpha: float = ALPHA) -> np.ndarray:
    """Which hypotheses Holm's step-down procedure rejects at family-wise level alpha (bool_K)."""
    if not 0 < alpha < 1:
        raise ValueError(f"holm: alpha must lie in (0, 1), got {alpha!r}")
    return holm_adjusted(p_values) <= alpha


@dataclasses.dataclass(frozen=True)
class Conjunction:
    """A claim made of K parts that must all hold."""
    verdict: str
    parts: tuple  # the parts' own verdicts
    held: tuple  # parts whose reproduction survives Holm (family-wise level alpha)
    contradicted: tuple  # parts contradicted after Holm
    p_reproduce: float  # intersection-union p: max of the parts'
    p_contradict: float  # Holm-adjusted smallest contradiction p


def conjunction(parts: Sequence[Judgement], alpha: float = ALPHA) -> Conjunction:
    """Reproduced iff every part is reproduced; contradicted iff Holm over the parts'
    contradiction p-values rejects at least one; inconclusive otherwise."""
    _check_alpha(alpha, "conjunction")
    parts = list(parts)
    if not parts or not all(isinstance(j, Judgement) for j in parts):
        raise ValueError("conjunction: need a non-empty list of Judgement parts")
    contra = holm([j.p_contradict for j in parts], alpha)
    held = holm([j.p_reproduce for j in parts], alpha)
    if contra.any():
        v = CONTRADICTED
    elif all(j.verdict == REPRODUCED for j in parts):
        v = REPRODUCED
    else:
        v = INCONCLUSIVE
    return Conjunction(v, tuple(j.verdict for j in parts), tuple(bool(h) for h in held),
                       tuple(bool(c) for c in contra), max(j.p_reproduce for j in parts),
                       float(holm_adjusted([j.p_contradict for j in parts]).min()))


# ----------------------------------------------------------------------------- power

def _power_setup(sd: float, n: int, alpha: float, power: float, paired: bool, where: str):
    _check_alpha(alpha, where)
    if not (math.isfinite(sd) and sd > 0):
        raise ValueError(f"{where}: sd must be finite and > 0, got {sd!r}")
    if not (isinstance(n, (int, np.integer)) and n >= 2):
        raise ValueError(f"{where}: too few seeds: need n >= 2, got {n!r}")
    if not alpha < power < 1:
        raise ValueError(f"{where}: power must lie in (alpha, 1), got {power!r}")
    df = n - 1 if paired else 2 * n - 2
    se = sd / math.sqrt(n) if paired else sd * math.sqrt(2.0 / n)
    return df, se


def minimum_detectable_effect(sd: float, n: int, *, alpha: float = ALPHA, power: float = 0.8,
                              paired: bool = True, one_sided: bool = True) -> float:
    """Smallest true effect a level-alpha t test detects with the given power (noncentral t).

    paired=True: one sample of n per-seed effects (or paired differences) with sd; False: two
    independent arms of n seeds each, per-arm sd. one_sided=False: a two-sided test at alpha.
    """
    df, se = _power_setup(sd, n, alpha, power, paired, "minimum_detectable_effect")
    crit = scipy_stats.t.ppf(1 - alpha if one_sided else 1 - alpha / 2, df)

    def shortfall(ncp):
        p = scipy_stats.nct.sf(crit, df, ncp)
        return (p if one_sided else p + scipy_stats.nct.cdf(-crit, df, ncp)) - power

    return float(optimize.brentq(shortfall, 0.0, 100.0 + 10 * crit, xtol=1e-12)) * se


def observed_minimum_detectable_effect(values_R, baseline_R=None, *, alpha: float = ALPHA,
                                       power: float = 0.8, paired: bool = True,
                                       one_sided: bool = True) -> float:
    """minimum_detectable_effect with the sd and seed count of the observed per-seed values
    (baseline_R given: of the paired differences; with paired=False the two arms' pooled sd)."""
    where = "observed_minimum_detectable_effect"
    if baseline_R is None or paired:
        x = _effects(values_R, baseline_R, where)
        sd = _spread(x, where)
    else:
        a, b = _sample(values_R, where), _sample(baseline_R, where)
        if a.size != b.size:
            raise ValueError(f"{where}: unpaired arms need the same number of seeds, "
                             f"got {a.size} and {b.size}")
        sd, x = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2), a
        if not sd > 0:
            raise ValueError(f"{where}: the values have no spread across seeds (all equal)")
    return minimum_detectable_effect(sd, int(x.size), alpha=alpha, power=power,
                                     paired=paired or baseline_R is None, one_sided=one_sided)


def minimum_equivalence_margin(sd: float, n: int, *, alpha: float = ALPHA,
                               power: float = 0.8) -> float:
    """Smallest margin TOST on n per-seed values (sd) shows with the given power when the true
    effect is 0: P(|mean| + t_{1-alpha} s / sqrt(n) < m) = power, integrated over s."""
    df, se = _power_setup(sd, n, alpha, power, True, "minimum_equivalence_margin")
    crit = scipy_stats.t.ppf(1 - alpha, df)

    def tost_power(m):  # in units of se; s / sigma = sqrt(chi2_df / df)
        log_norm = -0.5 * df * math.log(2.0) - special.gammaln(0.5 * df)

        def integrand(q):  # the TOST power given s, times the chi-square(df) density of q
            if q <= 0:
                return 0.0
            dens = math.exp(log_norm + (0.5 * df - 1) * math.log(q) - 0.5 * q)
            return max(0.0, 2 * special.ndtr(m - crit * math.sqrt(q / df)) - 1) * dens
        upper = (m / crit) ** 2 * df
        return integrate.quad(integrand, 0.0, upper, limit=200)[0]

    m = optimize.brentq(lambda m: tost_power(m) - power, 1e-9, 10 * crit + 50, xtol=1e-10)
    return float(m) * se


def minimum_detectable_share(n: int, p0: float, *, alpha: float = ALPHA,
                             power: float = 0.8) -> float:
    """Smallest true share of seeds the exact one-sided binomial test against p0 detects."""
    _check_alpha(alpha, "minimum_detectable_share")
    if not (isinstance(n, (int, np.integer)) and n >= 1) or not 0 < p0 < 1 or not alpha < power < 1:
        raise ValueError("minimum_detectable_share: need n >= 1, p0 in (0, 1), power in "
                         f"(alpha, 1); got n={n!r}, p0={p0!r}, power={power!r}")
    k_R = np.arange(n + 1)
    reject = scipy_stats.binom.sf(k_R - 1, n, p0) <= alpha
    if not reject.any():
        return math.nan  # no outcome of n seeds is significant: nothing is detectable
    k_crit = int(k_R[reject][0])
    return float(optimize.brentq(lambda p: scipy_stats.binom.sf(k_crit - 1, n, p) - power,
                                 p0, 1.0, xtol=1e-12))


# ----------------------------------------------------------------------------- Gao's forms

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
    r2: float  # centred: 1 - SSR / sum (r - mean r)^2, against a flat reward (< 0: worse)
    rmse: float  # root mean squared residual on the fitted points
    alpha_se: float = math.nan  # least-squares standard errors (NaN with 2 points)
    beta_se: float = math.nan


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
    ssr = float(np.sum(resid * resid))
    sst = float(np.sum((r - r.mean()) ** 2))
    r2 = 1.0 - ssr / sst if sst > 0 else math.nan
    se = (math.nan, math.nan)
    gram = x.T @ x
    if d.size > 2 and np.linalg.cond(gram) < 1e12:
        se = tuple(np.sqrt(np.diag(np.linalg.inv(gram)) * ssr / (d.size - 2)))
    return Fit(form, float(alpha), float(beta), r2, math.sqrt(ssr / d.size),
               float(se[0]), float(se[1]))


def _split(d_M, fraction: float, where: str):
    order = np.argsort(d_M, kind="stable")
    n_fit = max(2, int(round(fraction * d_M.size)))
    if n_fit >= d_M.size:
        raise ValueError(f"{where}: {d_M.size} points leave none beyond the fitted {n_fit}")
    return order[:n_fit], order[n_fit:]


def extrapolation_error(form: str, d_M, reward_M, *, fraction: float = 0.5) -> tuple[Fit, float]:
    """Fit on the points with the smallest `fraction` of d, and the RMSE on the rest."""
    d = np.asarray(d_M, np.float64).reshape(-1)
    r = np.asarray(reward_M, np.float64).reshape(-1)
    head, tail = _split(d, fraction, "extrapolation_error")
    f = fit(form, d[head], r[head])
    err = r[tail] - predict(form, d[tail], f.alpha, f.beta)
    return f, float(np.sqrt(np.mean(err * err)))


class FitVerdict(NamedTuple):
    form: str
    alpha: float
    beta: float
    r2: float  # centred, on all points
    oos_rmse: float  # fitted on the small-d part, RMSE on the large-d part
    null_oos_rmse: float  # the same for a flat reward at the small-d part's mean
    alpha_p: float  # one-sided p of H0 alpha <= 0 (NaN when sign_level is None)
    beta_p: float
    passes: bool
    failures: tuple  # why it does not pass (empty when it does)


def fit_verdict(form: str, d_M, reward_M, *, min_r2: float = 0.9, fraction: float = 0.5,
                sign_level: float | None = ALPHA) -> FitVerdict:
    """Gao's form fitted to a curve passes iff centred R² >= min_r2, the out-of-sample RMSE on
    the large-d part is below the flat null model's, and alpha > 0 and beta > 0 (each by a
    one-sided t test on its least-squares standard error at sign_level; None: signs only)."""
    if not 0 < min_r2 <= 1:
        raise ValueError(f"fit_verdict: min_r2 must lie in (0, 1], got {min_r2!r}")
    if sign_level is not None:
        _check_alpha(sign_level, "fit_verdict")
    d = np.asarray(d_M, np.float64).reshape(-1)
    r = np.asarray(reward_M, np.float64).reshape(-1)
    if d.size < 4:
        raise ValueError(f"fit_verdict: need at least 4 points (2 to fit, 2 to score), "
                         f"got {d.size}")
    f = fit(form, d, r)
    head, tail = _split(d, fraction, "fit_verdict")
    h = fit(form, d[head], r[head])
    oos = float(np.sqrt(np.mean((r[tail] - predict(form, d[tail], h.alpha, h.beta)) ** 2)))
    null = float(np.sqrt(np.mean((r[tail] - r[head].mean()) ** 2)))
    failures = []
    if not f.r2 >= min_r2:
        failures.append(f"centred R² {f.r2:.3f} < {min_r2}")
    if not oos < null:
        failures.append(f"out-of-sample RMSE {oos:.4g} not below the flat model's {null:.4g}")
    p_a = p_b = math.nan
    if sign_level is None:
        ok_a, ok_b = f.alpha > 0, f.beta > 0
    else:
        df = d.size - 2
        def p_positive(c, s):  # s = 0: an exact fit, the sign is certain; NaN: not testable
            if s > 0:
                return float(special.stdtr(df, -c / s))
            return float(c <= 0) if s == 0 else math.nan

        p_a, p_b = p_positive(f.alpha, f.alpha_se), p_positive(f.beta, f.beta_se)
        ok_a, ok_b = p_a < sign_level, p_b < sign_level
    if not ok_a:
        failures.append(f"alpha = {f.alpha:.4g} not shown > 0")
    if not ok_b:
        failures.append(f"beta = {f.beta:.4g} not shown > 0 (no fall after the rise)")
    return FitVerdict(form, f.alpha, f.beta, f.r2, oos, null, p_a, p_b, not failures,
                      tuple(failures))
