"""SEAL's reward-model analyses (Revel et al., arXiv 2408.10270): feature imprint, alignment
regimes and resistance, alignment robustness.

Dimension letters: N texts, K regressors (the intercept first), G clusters, M pairs,
R reward models.

Imprint. The rewards r_n of texts are regressed by ordinary least squares on features f_nk,

    r_n = α + Σ_k β_k f_nk + ε_n,

and β_k is the model's imprint of feature k. The two texts of a pair share a cluster, so their
errors may correlate; the standard errors are cluster-robust (CR1, the sandwich with the usual
small-sample factor):

    V = c · (XᵀX)⁻¹ (Σ_g X_gᵀ e_g e_gᵀ X_g) (XᵀX)⁻¹,   c = G/(G − 1) · (N − 1)/(N − K),

X_g and e_g the rows and residuals of cluster g, and intervals are Student t with G − 1
degrees of freedom. The same regression of the gold reward on the same features is set beside
each model's: an imprint is read against the truth (gold's coefficient of a spoiler feature is
0 where gold ignores it). `standardize=True` divides the rewards by their standard deviation
first, so that imprints of models whose rewards have different scales compare (a
Bradley–Terry reward is defined only up to a shift, and its scale grows with training).
The centred R² = 1 − SSR / Σ(r − r̄)² is reported (never the uncentred one).

Regimes. On labelled pairs (chosen ≻ rejected), a model agrees with a label when its margin
r(chosen) − r(rejected) is > 0 (a tie does not agree). Between a model before (pre) and after
(post) training on the labelled data:

    stayed    pre agrees,    post agrees        got       pre disagrees, post agrees
    resisted  pre disagrees, post disagrees     reversed  pre agrees,    post disagrees

Alignment resistance is the share of pairs the post model ranks against its label
(resisted + reversed). It is split by whether the label agrees with gold (gold(chosen) >
gold(rejected)), which the synthetic world knows exactly.

Robustness. A rewrite changes one text of a pair in a way that leaves its gold reward unchanged
(align/analysis/rewrites.py checks this exactly). A preference flips when the sign of the
margin r(a) − r(b) changes after the rewrite (a margin of 0 before or after counts as a flip
when the other is not 0); the flip rate is the share of rewritten (pair, side) cases that flip,
per kind of rewrite. Across reward models, the flip rate's relation to the spoiler imprint is
the slope of an OLS of flip rates on imprints, clustered by seed (`relation`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats as sp_stats

from align.evaluate import stats

REGIMES = ("stayed", "got", "resisted", "reversed")


# ----------------------------------------------------------------------------- regression

@dataclasses.dataclass(frozen=True)
class Regression:
    """An OLS fit with cluster-robust (CR1) standard errors; coefficients in `names` order."""

    names: tuple[str, ...]  # "intercept" first
    coef: np.ndarray  # [K]
    se: np.ndarray  # [K]
    cov: np.ndarray  # [K, K]
    df: int  # G − 1
    n: int
    clusters: int
    r2: float  # centred

    def __getitem__(self, name: str) -> float:
        return float(self.coef[self._index(name)])

    def _index(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"no coefficient {name!r}; have {list(self.names)}")
        return self.names.index(name)

    def interval(self, name: str, alpha: float = stats.ALPHA) -> tuple[float, float]:
        """Two-sided 1 − 2·alpha interval of a coefficient (each bound a one-sided level-alpha
        test), Student t with G − 1 degrees of freedom."""
        k = self._index(name)
        half = sp_stats.t.ppf(1 - alpha, self.df) * self.se[k]
        return float(self.coef[k] - half), float(self.coef[k] + half)

    def p_value(self, name: str, null: float = 0.0, *, alternative: str = "greater") -> float:
        """One-sided p-value of H0: β ≤ null ("greater") or β ≥ null ("less")."""
        k = self._index(name)
        t = (self.coef[k] - null) / self.se[k] if self.se[k] > 0 else math.copysign(
            math.inf, self.coef[k] - null)
        if alternative == "greater":
            return float(sp_stats.t.sf(t, self.df))
        if alternative == "less":
            return float(sp_stats.t.cdf(t, self.df))
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")


def _matrix(features, names: Sequence[str] | None, n: int | None = None) -> tuple[np.ndarray, tuple]:
    """[N, K'] features from a mapping name -> column or an array (with names)."""
    if isinstance(features, Mapping):
        names = tuple(features) if names is None else tuple(names)
        missing = [k for k in names if k not in features]
        if missing:
            raise KeyError(f"features lack column(s) {missing}; have {sorted(features)}")
        x = np.column_stack([np.asarray(features[k], np.float64).reshape(-1) for k in names])
    else:
        x = np.asarray(features, np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if names is None:
            names = tuple(f"x{k}" for k in range(x.shape[1]))
        names = tuple(names)
        if len(names) != x.shape[1]:
            raise ValueError(f"{len(names)} names for {x.shape[1]} feature columns")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"features have {x.shape[0]} rows, the responses {n}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features hold NaN or infinite values")
    return x, names


def ols_clustered(y_N, features, clusters_N=None, *, names: Sequence[str] | None = None,
                  standardize: bool = False) -> Regression:
    """OLS of y on an intercept and the features with CR1 cluster-robust standard errors
    (module docstring). clusters_N: a cluster id per row (None: each row its own cluster)."""
    y = np.asarray(y_N, np.float64).reshape(-1)
    if not np.all(np.isfinite(y)):
        raise ValueError("ols_clustered: the responses hold NaN or infinite values")
    f, names = _matrix(features, names, y.size)
    if standardize:
        sd = float(np.std(y, ddof=1))
        if not sd > 0:
            raise ValueError("ols_clustered: cannot standardise constant responses")
        y = y / sd
    x = np.column_stack([np.ones(y.size), f])
    n, k = x.shape
    groups = np.arange(n) if clusters_N is None else np.asarray(clusters_N).reshape(-1)
    if groups.size != n:
        raise ValueError(f"ols_clustered: {groups.size} cluster ids for {n} rows")
    _, g_index = np.unique(groups, return_inverse=True)
    g = int(g_index.max()) + 1
    if n <= k or g < 2:
        raise ValueError(f"ols_clustered: {n} rows in {g} clusters cannot fit {k} coefficients")
    constant = [name for name, col in zip(names, f.T) if np.all(col == col[0])]
    if constant:
        raise ValueError(f"ols_clustered: feature(s) {constant} take one value on every row, "
                         "so the intercept absorbs them; drop them")
    xtx = x.T @ x
    if np.linalg.matrix_rank(xtx) < k:
        raise ValueError(f"ols_clustered: the features {list(names)} are collinear (with the "
                         "intercept); drop one")
    bread = np.linalg.inv(xtx)
    coef = bread @ (x.T @ y)
    resid = y - x @ coef
    score_GxK = np.zeros((g, k))
    np.add.at(score_GxK, g_index, x * resid[:, None])
    meat = score_GxK.T @ score_GxK
    c = g / (g - 1) * (n - 1) / (n - k)
    cov = c * bread @ meat @ bread
    sst = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / sst if sst > 0 else float("nan")
    return Regression(("intercept",) + tuple(names), coef, np.sqrt(np.diag(cov)), cov, g - 1,
                      n, g, r2)


@dataclasses.dataclass(frozen=True)
class Imprint:
    """A reward model's regression and gold's, on the same texts and features."""

    model: Regression
    gold: Regression | None

    def table(self, features: Sequence[str] | None = None, digits: int = 3) -> str:
        """A Markdown table: coefficient ± half-width of the 95% interval, model beside gold."""
        names = [k for k in (features or self.model.names) if k != "intercept"]
        head = "| feature | reward model | gold |\n|---|---|---|"
        rows = []
        for k in names:
            cells = []
            for reg in (self.model, self.gold):
                if reg is None:
                    cells.append("—")
                    continue
                low, high = reg.interval(k, alpha=0.025)
                cells.append(f"{reg[k]:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]")
            rows.append(f"| {k} | {cells[0]} | {cells[1]} |")
        r2 = f"{self.gold.r2:.3f}" if self.gold is not None else "—"
        rows.append(f"| centred R² | {self.model.r2:.3f} | {r2} |")
        return "\n".join([head, *rows])


def stack_pairs(chosen_M, rejected_M) -> tuple[np.ndarray, np.ndarray]:
    """([2M] values, [2M] pair ids): the chosen then the rejected values of M pairs."""
    a, b = np.asarray(chosen_M, np.float64), np.asarray(rejected_M, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"stack_pairs: need two [M] arrays, got {a.shape} and {b.shape}")
    return np.concatenate([a, b]), np.concatenate([np.arange(a.size)] * 2)


def imprint(rewards_N, features, clusters_N=None, *, gold_N=None,
            names: Sequence[str] | None = None, standardize: bool = True) -> Imprint:
    """The feature imprint of a reward model (rewards of N texts), beside gold's when given."""
    model = ols_clustered(rewards_N, features, clusters_N, names=names, standardize=standardize)
    gold = None if gold_N is None else ols_clustered(gold_N, features, clusters_N, names=names,
                                                     standardize=standardize)
    return Imprint(model, gold)


# ----------------------------------------------------------------------------- regimes

@dataclasses.dataclass(frozen=True)
class Resistance:
    """Shares of labelled pairs by regime, and the post model's resistance by label kind."""

    n: int
    regimes: dict  # regime -> share (empty without a pre model)
    agreement_pre: float  # NaN without a pre model
    agreement_post: float
    resistance: float  # share the post model ranks against its label
    # Split by whether the label agrees with gold (NaN without gold, or with no such pairs):
    resistance_gold_agrees: float
    resistance_gold_disagrees: float
    n_gold_agrees: int
    n_gold_disagrees: int

    @property
    def ratio(self) -> float:
        """Resistance where the label contradicts gold over resistance where it agrees."""
        if not self.resistance_gold_agrees > 0:
            return float("nan")
        return self.resistance_gold_disagrees / self.resistance_gold_agrees


def _margins(x, name: str, m: int | None = None) -> np.ndarray:
    v = np.asarray(x, np.float64).reshape(-1)
    if m is not None and v.size != m:
        raise ValueError(f"{name}: {v.size} values for {m} pairs")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return v


def resistance(post_margin_M, pre_margin_M=None, *, gold_margin_M=None) -> Resistance:
    """Regimes and resistance of labelled pairs from the models' margins r(chosen) − r(rejected);
    gold_margin_M (gold(chosen) − gold(rejected)) splits resistance by the label's truth (a
    gold tie counts as the label disagreeing with gold)."""
    post = _margins(post_margin_M, "post_margin_M")
    m = post.size
    if m == 0:
        raise ValueError("resistance: no pairs")
    post_ok = post > 0
    regimes, agree_pre = {}, float("nan")
    if pre_margin_M is not None:
        pre_ok = _margins(pre_margin_M, "pre_margin_M", m) > 0
        agree_pre = float(pre_ok.mean())
        regimes = {"stayed": float(np.mean(pre_ok & post_ok)),
                   "got": float(np.mean(~pre_ok & post_ok)),
                   "resisted": float(np.mean(~pre_ok & ~post_ok)),
                   "reversed": float(np.mean(pre_ok & ~post_ok))}
    nan = float("nan")
    split = (nan, nan, 0, 0)
    if gold_margin_M is not None:
        truth = _margins(gold_margin_M, "gold_margin_M", m) > 0
        rate = lambda mask: float(np.mean(~post_ok[mask])) if mask.any() else nan
        split = (rate(truth), rate(~truth), int(truth.sum()), int((~truth).sum()))
    return Resistance(m, regimes, agree_pre, float(post_ok.mean()), float(np.mean(~post_ok)),
                      *split)


# ----------------------------------------------------------------------------- robustness

@dataclasses.dataclass(frozen=True)
class Flips:
    """Flip rates of a model's preferences under each kind of rewrite."""

    rates: dict  # kind -> share of rewritten cases whose preference flipped
    counts: dict  # kind -> number of rewritten (pair, side) cases
    flips: dict  # kind -> number that flipped

    @property
    def overall(self) -> float:
        total = sum(self.counts.values())
        return sum(self.flips.values()) / total if total else float("nan")


def flipped(margin_before, margin_after) -> np.ndarray:
    """Whether each preference flipped: sign(margin) changed (0 is its own sign)."""
    return np.sign(np.asarray(margin_before, np.float64)) != np.sign(
        np.asarray(margin_after, np.float64))


def flip_rates(score: Callable[[Sequence[str], Sequence[str]], np.ndarray], prompts: Sequence[str],
               texts_a: Sequence[str], texts_b: Sequence[str],
               rewrites: Mapping[str, Callable[[str, str], str | None]]) -> Flips:
    """Flip rates of the preferences between texts_a and texts_b (same prompts) when one text
    of a pair is rewritten. score(prompts, texts) -> rewards [N]; a rewrite(prompt, text) returns
    the rewritten text, or None where it does not apply (or would change gold). Each side of
    every pair is rewritten in turn, so a pair contributes up to two cases per kind."""
    m = len(prompts)
    if not (len(texts_a) == len(texts_b) == m):
        raise ValueError(f"flip_rates: {m} prompts, {len(texts_a)} and {len(texts_b)} texts")
    r_a = np.asarray(score(prompts, texts_a), np.float64)
    r_b = np.asarray(score(prompts, texts_b), np.float64)
    base_M = r_a - r_b
    rates, counts, flips = {}, {}, {}
    for kind, rewrite in rewrites.items():
        cases, new_prompts, new_texts = [], [], []
        for side, texts in ((0, texts_a), (1, texts_b)):
            for i in range(m):
                out = rewrite(prompts[i], texts[i])
                if out is not None:
                    cases.append((i, side))
                    new_prompts.append(prompts[i])
                    new_texts.append(out)
        counts[kind] = len(cases)
        if not cases:
            rates[kind], flips[kind] = float("nan"), 0
            continue
        r_new = np.asarray(score(new_prompts, new_texts), np.float64)
        idx = np.asarray([i for i, _ in cases])
        side = np.asarray([s for _, s in cases])
        after = np.where(side == 0, r_new - r_b[idx], r_a[idx] - r_new)
        f = flipped(base_M[idx], after)
        flips[kind] = int(f.sum())
        rates[kind] = float(f.mean())
    return Flips(rates, counts, flips)


def relation(flip_R, imprint_R, seeds_R=None, *, smallest_slope: float = 0.0,
             paper_slope: float = 1.0, alpha: float = stats.ALPHA) -> stats.Judgement:
    """Does the flip rate rise with the spoiler imprint across reward models? The slope of an
    OLS of flip rates on imprints with standard errors clustered by seed (models of one seed,
    e.g. before and after fine-tuning, share a cluster), judged by the directional rule of
    align.evaluate.stats on its 1 − 2·alpha interval."""
    fit = ols_clustered(flip_R, {"imprint": imprint_R}, seeds_R)
    low, high = fit.interval("imprint", alpha)
    v = stats.verdict(low, high, paper_effect=paper_slope, smallest_effect=smallest_slope)
    return stats.Judgement(v, fit["imprint"], low, high, fit.p_value("imprint", 0.0),
                           fit.p_value("imprint", smallest_slope, alternative="less"),
                           fit.n, f"clustered OLS slope ({fit.clusters} clusters)")
